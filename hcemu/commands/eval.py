"""``hcemu eval MODEL --plan P --text FILE``: the chip's accuracy against the float32 reference."""
from __future__ import annotations

import json
import sys

from hcemu.formats import KV_FORMATS


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity, KL divergence and top-1 agreement of chip vs float reference")
    p.add_argument("model", help="GGUF file or 'smollm2' (the float reference needs the source weights)")
    p.add_argument("--plan", default="int4",
                   help="plan, or several separated by commas (e.g. int4,int4-pt,int8,int8-pt)")
    p.add_argument("--text", default=None,
                   help="UTF-8 text file (default: the Python licence text shipped with CPython)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per evaluation window")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--workers", type=int, default=1, help="processes (windows run on a ProcessPoolExecutor)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads per worker")
    p.add_argument("--kv", choices=KV_FORMATS, default=None,
                   help="KV-cache format of the chip (default: the plan's)")
    from hcemu.commands.run import add_lora_args

    add_lora_args(p)
    p.add_argument("--compensate-ranks", default=None, metavar="R,R,...",
                   help="measure low-rank compensation of the ROM quantization error instead: for each plan and "
                        "rank (0 = none) the chip with that adapter in SRAM against the float reference")
    p.add_argument("--compensate-weighted", action="store_true",
                   help="weight the compensation SVD by input RMS on a calibration text (licence tokens 2048..2559)")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="with --compensate-ranks: KLD vs SRAM bytes")
    p.add_argument("--system", default=None, metavar="DIR",
                   help="evaluate the multi-chip system compiled into DIR (hcemu compile --chips) instead of "
                        "one chip; its plan is the manifest's (--plan is ignored)")
    p.add_argument("--link", default=None,
                   help="with --system: link format(s) of every hop (fp32, bf16, int8), several separated by "
                        "commas (default fp32)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from hcemu.model.tokenizer import load_tokenizer
    from hcemu.rom.cache import ensure_image
    from hcemu.chip.evaluate import evaluate
    from hcemu.commands.run import lora_specs
    from hcemu.model import source_path
    from hcemu.model.texts import licence_text
    from hcemu.rom.image import RomImage

    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    else:
        text = licence_text()
    src = source_path(args.model)
    if args.compensate_ranks is not None:
        return _compensation(args, text)
    if args.link is not None and args.system is None:
        raise ValueError("--link needs --system DIR")
    rows = []
    executor = None
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(args.workers)
    try:
        if args.system is not None:
            from hcemu.formats import get_link_format
            from hcemu.rom.manifest import load_manifest

            manifest = load_manifest(args.system)
            runs = [(args.system, manifest.load_images(verify=False)[0], get_link_format(f.strip()).name)
                    for f in (args.link or "fp32").split(",") if f.strip()]
        else:
            runs = []
            for plan in [p.strip() for p in args.plan.split(",") if p.strip()]:
                path = ensure_image(args.model, plan, progress=not args.no_progress)
                runs.append((path, RomImage.load(path), None))
        for path, image, link in runs:
            tok = load_tokenizer(image)
            if tok is None:
                raise ValueError(f"{args.model} has no tokenizer to read the text with")
            ids = tok.encode(text)
            if args.max_tokens:
                ids = ids[: args.max_tokens]
            res = evaluate(path, src, ids, ctx=args.ctx, n_threads=args.threads, kv_format=args.kv,
                           executor=executor, links=link, adapters=lora_specs(args), adapter_format=args.lora_format,
                           progress=not args.no_progress and not args.json)
            row = {"model": args.model, "plan": image.plan.name, "kv": args.kv or image.plan.kv,
                   "lora": list(args.lora)}
            if link is not None:
                row.update(dies=image.die.n_dies, link=link)
            rows.append({**row, **res})
    finally:
        if executor is not None:
            executor.shutdown()
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    else:
        cols = (("plan", "dies", "link") if args.system else ("plan",)) + ("kv", "tokens", "ppl_reference", "ppl_chip", "kld_mean", "kld_p99", "same_top1")
        print("  ".join(f"{c:>13}" for c in cols), file=sys.stdout)
        for r in rows:
            print("  ".join(f"{r[c]:>13.4f}" if isinstance(r[c], float) else f"{r[c]:>13}" for c in cols))
    return 0


def _compensation(args, text) -> int:
    from hcemu.chip.evaluate import compensation_study
    from hcemu.model import load_source, source_path
    from hcemu.model.tokenizer import Tokenizer

    ranks = [int(r) for r in args.compensate_ranks.split(",") if r.strip()]
    tok = Tokenizer.from_gguf(load_source(source_path(args.model)))
    ids = tok.encode(text)
    calib = ids[2048:2560] if args.compensate_weighted else None
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    plans = [p.strip() for p in args.plan.split(",") if p.strip()]
    rows = compensation_study(args.model, plans, ranks, ids, calibration_tokens=calib, ctx=args.ctx,
                              n_threads=args.threads, progress=not args.no_progress and not args.json)
    if args.plot:
        from hcemu.perf.plots import plot_compensation

        print("wrote " + plot_compensation(rows, args.plot), file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ("plan", "method", "rank", "sram_bytes", "tokens", "ppl_chip", "kld_mean", "kld_p99", "same_top1")
    print("  ".join(f"{c:>11}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>11.4f}" if isinstance(r[c], float) else f"{r[c]:>11}" for c in cols))
    return 0
