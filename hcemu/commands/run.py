"""``hcemu run [MODEL|IMAGE] --prompt TEXT``: generate text on the emulated chip and report host speed,
counted events and the modeled silicon figures of the chip compiled for that model."""
from __future__ import annotations

import json
import sys

from hcemu.events import MAC_FIELDS
from hcemu.formats import KV_FORMATS


def add_generation_args(p) -> None:
    p.add_argument("--plan", default="int4", help="quantization plan when compiling (default int4)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and synthetic-weight seed)")
    p.add_argument("--raw", action="store_true", help="do not apply the model's chat template")
    p.add_argument("--threads", type=int, default=1, help="host threads for the CIM kernels")
    p.add_argument("--kv-tokens", type=int, default=None, help="SRAM KV-cache capacity in tokens")
    p.add_argument("--kv", choices=KV_FORMATS, default=None,
                   help="KV-cache format: int8 (one scale per token and KV head) or fp16 (default: the plan's)")
    p.add_argument("--context", type=int, default=None,
                   help="context length for the modeled silicon figures (default: prompt + generated)")
    add_lora_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")


def add_lora_args(p) -> None:
    from hcemu.formats import ADAPTER_FORMATS

    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="LoRA adapter GGUF (llama.cpp format) held in the chip's SRAM, with an optional user "
                        "scale (alpha/rank x SCALE); repeatable: the adapters' updates add up")
    p.add_argument("--lora-format", choices=ADAPTER_FORMATS, default="int8",
                   help="how the adapters sit in SRAM: int8 with fp16 block scales (default) or fp16")


def lora_specs(args) -> list:
    """``[(path, scale), ...]`` of the ``--lora`` arguments."""
    from hcemu.model.lora import parse_lora_arg

    return [parse_lora_arg(a) for a in args.lora]


def register(sub) -> None:
    p = sub.add_parser("run", help="generate text on the emulated chip")
    p.add_argument("model", nargs="?", default="smollm2",
                   help="ROM image (.hcrom), GGUF file, 'smollm2' or a preset name")
    p.add_argument("--prompt", required=True, help="prompt text")
    add_generation_args(p)
    p.set_defaults(func=run)


def generate(args, prompt: str) -> dict:
    """Compile (cached), load, generate; returns the JSON-ready report."""
    from hcemu.model.tokenizer import load_tokenizer
    from hcemu.rom.cache import ensure_image
    from hcemu.chip.chip import Chip
    from hcemu.sampling import Sampler
    from hcemu.report import chip_figures_for_image
    from hcemu.rom.image import RomImage

    if not prompt:
        raise ValueError("the prompt is empty")
    path = ensure_image(args.model, args.plan, seed=args.seed, progress=not args.no_progress)
    image = RomImage.load(path)
    tok = load_tokenizer(image)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer (synthetic weights): run a GGUF model or image")
    chat = not args.raw and tok.chat_template is not None
    text_in = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
    ids = tok.encode(text_in)
    chip = Chip(image, n_threads=args.threads, kv_capacity_tokens=args.kv_tokens, kv_format=args.kv)
    names = []
    for i, (lpath, scale) in enumerate(lora_specs(args)):
        names.append(chip.load_adapter(lpath, scale=scale, fmt=args.lora_format, name=f"{i}:{lpath}").name)
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.seed)
    gen = chip.generate(ids, args.max_new_tokens, sampler, stop_ids={tok.eos_id}, adapter=names)
    out_ids = [i for i in gen.ids if i != tok.eos_id]
    events = gen.prefill_events + gen.decode_events
    report = {
        "model": args.model,
        "image": path,
        "plan": image.plan.name,
        "kv": chip.plan.kv,
        "isa": _isa(),
        "threads": args.threads,
        "prompt": prompt,
        "chat_template": chat,
        "text": tok.decode(out_ids),
        "prompt_tokens": len(ids),
        "prompt_ids": [int(i) for i in ids],
        "ids": [int(i) for i in gen.ids],  # generated, the end-of-sequence id included when it came
        "generated_tokens": len(gen.ids),
        "host_prefill_tok_s": _finite(gen.host_prefill_tok_s),
        "host_decode_tok_s": _finite(gen.host_decode_tok_s),  # None: no decode step was timed
        "events": {"prefill": gen.prefill_events.to_dict()["total"],
                   "decode": gen.decode_events.to_dict()["total"],
                   "total": events.to_dict()["total"]},
    }
    report["adapters"] = [{"file": sa.source.path, "scale": sa.source.user_scale, "format": sa.fmt,
                           "ranks": sorted(sa.source.ranks), "matrices": len(sa.slots), "sram_bytes": sa.nbytes}
                          for sa in (chip.adapters[n] for n in names)]
    report["adapter_sram_bytes"] = chip.adapter_sram_bytes
    report["rom_banks"] = int(len(gen.bank_rows))
    report["rom_banks_read"] = int((gen.bank_rows > 0).sum())
    report["rom_bank_rows_read"] = int(gen.bank_rows.sum())
    # modeled silicon (hc1 technology) for this model and plan, pricing the events counted above
    report["silicon"] = chip_figures_for_image(chip, len(ids), len(gen.ids), args.context,
                                               events=(gen.prefill_events, gen.decode_events),
                                               adapter_sram_bytes=chip.adapter_sram_bytes)
    report["gpus"] = gpu_figures(image.spec, len(ids), max(len(gen.ids), 2))
    return report


def gpu_figures(spec, n_prompt: int, n_generated: int) -> dict:
    """Modeled batch-1 decode speed of the GPU presets on the same model and workload (roofline)."""
    from hcemu.perf.gpu import GpuModel
    from hcemu.perf.specs import GPU_PRESETS, get_gpu

    out = {}
    for name in GPU_PRESETS:
        model = GpuModel(get_gpu(name))
        if model.max_batch(spec, n_prompt + n_generated - 1) >= 1:
            out[name] = {"per_user_tok_s": model.evaluate(spec, n_prompt, n_generated).per_user_tok_s}
    return out


def _finite(x: float):
    return None if x != x else x


def _rate(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _isa() -> str:
    import hcemu

    return hcemu.capabilities()["active"]


def print_report(rep: dict, out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"model {rep['model']}  plan {rep['plan']}  kernels {rep['isa']} x{rep['threads']} thread(s)")
    for a in rep.get("adapters", ()):
        p(f"LoRA {a['file']} x{a['scale']:g}: rank {'/'.join(map(str, a['ranks']))} on {a['matrices']} matrices, "
          f"{a['sram_bytes'] / 2**20:.2f} MiB of SRAM ({a['format']})")
    p(f"prompt: {rep['prompt']!r}  ({rep['prompt_tokens']} tokens{', chat template' if rep['chat_template'] else ''})")
    p("")
    p(rep["text"])
    p("")
    p(f"host (measured): prefill {_rate(rep['host_prefill_tok_s'])} tok/s, decode {_rate(rep['host_decode_tok_s'])} tok/s "
      f"over {rep['generated_tokens']} generated tokens")
    ev = rep["events"]["total"]
    p(f"events: {sum(ev[f] for f in MAC_FIELDS):,} CIM MACs, {ev['rom_code_bits'] / 8e6:,.1f} MB ROM codes read, "
      f"{ev['sram_kv_bytes_read'] / 1e6:,.2f} MB KV read, {ev['sram_kv_bytes_written'] / 1e3:,.1f} kB KV written")
    si = rep.get("silicon")
    if si:
        energy = si["energy_mj_per_token"]
        sized = "" if si["sized_for_model"] != si["model"] else " sized for this model"
        p(f"silicon (modeled, {si['chip'].split('/')[0]} technology{sized}, {si['events']} events): "
          f"{si['per_user_tok_s']:,.0f} tok/s/user, {si['latency_us_per_token']:.2f} us/token, "
          f"{'n/a' if energy is None else f'{energy:.3f}'} mJ/token, {si['power_w']:.1f} W, "
          f"{si['area_mm2']:.0f} mm2 die, {si['concurrent_users']} users in KV SRAM")
    if rep.get("gpus"):
        gpus = ", ".join(f"{name} {g['per_user_tok_s']:,.0f}" for name, g in rep["gpus"].items())
        p(f"GPUs (modeled roofline, batch 1, same model): {gpus} tok/s/user")


def run(args) -> int:
    rep = generate(args, args.prompt)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    return 0
