"""``hcemu compare``: the hard-coded chip (and, for a model larger than one die, the multi-chip system),
B200/H200/H100 (tensor-parallel where several GPUs serve it more cheaply or one does not hold it) and this
host side by side for one model."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("compare", help="modeled chip vs GPU baselines vs measured host, for one model")
    p.add_argument("--model", default="llama-3.1-8b",
                   help="model preset (default: llama-3.1-8b), or a .gguf file (its shapes)")
    p.add_argument("--context", type=int, default=1024,
                   help="prompt tokens, and as many generated (default 1024: the 1k/1k setting)")
    p.add_argument("--generated", type=int, default=None, help="generated tokens (default: = --context)")
    p.add_argument("--chip", default="hc1", help="chip technology preset (default: hc1)")
    p.add_argument("--plan", default=None,
                   help="quantization plan (default: hc1-int4 where the model's widths allow, else int4)")
    p.add_argument("--cost", default="default", help="cost-assumption preset")
    p.add_argument("--lora-rank", type=int, default=None,
                   help="add a row for the chip with LoRA adapters of this rank in SRAM, one applied per request")
    p.add_argument("--lora-matrices", default="all",
                   help="matrices the adapters cover: 'all' or a comma list of attn_q,attn_k,attn_v,attn_output,"
                        "ffn_gate,ffn_up,ffn_down (default all)")
    p.add_argument("--lora-resident", type=int, default=1, help="adapters resident in SRAM (default 1)")
    p.add_argument("--lora-format", choices=("int8", "fp16"), default="int8", help="adapters' SRAM format")
    p.add_argument("--gpu-precision", default="bf16",
                   help="GPU weight precision: bf16 (default), fp8 (H100/H200/B200), nvfp4 or fp4 (B200)")
    p.add_argument("--gpu-kv-precision", default=None,
                   help="GPU KV-cache precision (default: the weight precision's; fp8 for nvfp4)")
    p.add_argument("--chips", default="auto", metavar="N|auto|none",
                   help="the multi-chip system row: N dies, 'auto' (default: the fewest dies within the reference "
                        "die's ROM; no row when one die is enough) or 'none'")
    p.add_argument("--link", default=None, help="link between dies (hcemu.perf.links presets; default pcie5-x16)")
    p.add_argument("--link-format", default="fp32", help="activations on the links: fp32, bf16 or int8")
    p.add_argument("--expert-parallel", type=int, default=1, metavar="EP",
                   help="mixture of experts: spread each pipeline die's experts over EP dies (analytical; "
                        "docs/system.md, default 1: every expert with its layer)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the rows as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the rows as CSV")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write plots: FILE.png (speed vs context), FILE-cost.png, FILE-roofline.png")
    p.add_argument("--no-host", action="store_true", help="skip the host measurement")
    p.add_argument("--host-layers", type=int, default=1, help="layers timed for the host row (default 1)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads for the host row")
    p.set_defaults(func=run)


def run(args) -> int:
    from hcemu.formats import get_plan
    from hcemu.model.spec import get_preset
    from hcemu.report import compare_rows, rows_to_csv, rows_to_text
    from hcemu.perf.specs import default_plan

    if args.context < 1:
        raise ValueError(f"--context must be >= 1, got {args.context}")
    if args.model.lower().endswith(".gguf"):
        from hcemu.model.gguf_source import GGUFSource

        with GGUFSource(args.model) as src:
            spec = src.spec
    else:
        spec = get_preset(args.model)
    plan = default_plan(spec) if args.plan is None else get_plan(args.plan)
    n_gen = args.context if args.generated is None else args.generated
    adapters = ()
    if args.lora_rank is not None:
        from hcemu.model.spec import LAYER_MATRICES
        from hcemu.perf.analytic import LoraShape

        kinds = LAYER_MATRICES if args.lora_matrices == "all" else tuple(
            k.strip() for k in args.lora_matrices.split(",") if k.strip())
        adapters = (LoraShape(args.lora_rank, kinds, args.lora_format),)
    chips = None if args.chips == "none" else args.chips
    if chips not in (None, "auto"):
        try:
            chips = int(chips)
        except ValueError:
            raise ValueError(f"--chips must be a positive integer, 'auto' or 'none', got {args.chips!r}") from None
    rows = compare_rows(spec, args.context, n_gen, chip=args.chip, plan=plan, cost=args.cost,
                        host=not args.no_host, host_layers=args.host_layers, host_threads=args.threads,
                        gpu_precision=args.gpu_precision, gpu_kv_precision=args.gpu_kv_precision,
                        chips=chips, link=args.link, link_format=args.link_format, expert_parallel=args.expert_parallel,
                        adapters=adapters, resident_adapters=args.lora_resident)
    if args.json:
        print(json.dumps({"model": spec.name, "n_prompt": args.context, "n_generated": n_gen, "rows": rows},
                         indent=2))
    elif args.csv:
        print(rows_to_csv(rows), end="")
    else:
        print(f"{spec.name}: {args.context} prompt / {n_gen} generated tokens, chip plan {plan.name}")
        print(rows_to_text(rows))
    if args.plot:
        from hcemu.perf.plots import plot_all

        written = plot_all(args.plot, spec, args.context, n_gen, chip=args.chip, plan=plan, cost=args.cost)
        print("wrote " + ", ".join(written), file=__import__("sys").stderr)
    return 0
