"""Measurements of the functional chip on the host, with their peers, for benchmarks/ and the README.

Decode is measured at a fixed context: after each timed step the KV cache is truncated back, so
every step attends the same number of keys. Peers run in the same process: a plain read of the
bytes one decode step streams from ROM (the host's bandwidth ceiling for that step) and the float32
numpy reference decoding the same model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.bench import kernels as kb


@dataclass
class DecodeSetup:
    chip: object
    tokens: np.ndarray
    context: int
    rom_bytes_per_step: int
    kernel_share: float | None = None
    adapter: tuple = ()  # names of the LoRA adapters each step applies


def context_tokens(tokenizer, n: int) -> np.ndarray:
    """The first ``n`` tokens of the Python licence text (real English for realistic activations)."""
    from hcemu.model.texts import licence_text

    ids = np.asarray(tokenizer.encode(licence_text()), np.int64)
    if len(ids) < n:
        raise ValueError(f"the licence text has only {len(ids)} tokens, {n} asked")
    return ids[:n]


def decode_setup(image_path: str, context: int = 256, threads: int = 1, profile: bool = False,
                 compiled: bool = True, lora_rank: int = 0, lora_adapters: int = 1) -> DecodeSetup:
    """A chip holding ``context - 1`` prompt tokens, ready to decode at position ``context - 1``
    (``compiled=False``: the interpreted layer loop, for comparison). ``lora_rank``: make
    ``lora_adapters`` random int8 LoRA adapters of that rank on all seven matrices of every layer
    resident (names ``lora0``, ``lora1``, ...), and have every step apply ``lora0``."""
    from hcemu.model.tokenizer import load_tokenizer
    from hcemu.chip.chip import Chip
    from hcemu.rom.image import RomImage

    image = RomImage.load(image_path, verify=False)
    chip = Chip(image, kv_capacity_tokens=context + 8, n_threads=threads, profile=profile, compiled=compiled)
    toks = context_tokens(load_tokenizer(image), context)
    names = ()
    if lora_rank:
        from hcemu.model.lora import LoraAdapter, LoraPair, lora_scale, random_lora_pairs

        s = lora_scale(2 * lora_rank, lora_rank)
        for i in range(lora_adapters):
            pairs = random_lora_pairs(image.spec, lora_rank, seed=i)
            chip.load_adapter(LoraAdapter(f"lora{i}", 2.0 * lora_rank, 1.0,
                                          {key: LoraPair(a, b, s) for key, (a, b) in pairs.items()}))
        names = ("lora0",)
    chip.prefill(toks[:-1], adapter=names)
    step = chip.decode(int(toks[-1]), adapter=names)
    chip.kv.truncate(context - 1)
    t = step.events.total()
    return DecodeSetup(chip, toks, context, (t["rom_code_bits"] + t["rom_meta_bits"]) // 8, adapter=names)


def decode_runner(setup: DecodeSetup) -> kb.Runner:
    chip, tok, keep, adapter = setup.chip, int(setup.tokens[-1]), setup.context - 1, setup.adapter

    def step():
        chip.decode(tok, adapter=adapter)
        chip.kv.truncate(keep)
    return kb.Runner("hcemu", step, setup.rom_bytes_per_step, 0, 1, "decode step")


def adapter_switch_runner(setup: DecodeSetup) -> kb.Runner:
    """Switching the side paths between two resident adapters (``lora0`` <-> ``lora1``): each call is
    one real switch (needs ``decode_setup(..., lora_adapters=2)``)."""
    chip = setup.chip
    names = sorted(chip.adapters)[:2]
    if len(names) < 2:
        raise ValueError("adapter_switch_runner needs two resident adapters (decode_setup(lora_adapters=2))")
    state = [0]

    def switch():
        state[0] ^= 1
        chip.select_adapters(names[state[0]])
    return kb.Runner("hcemu", switch, 0, 0, 1, "adapter switch")


def lora_ratios(model: str = "smollm2", plan: str = "int4", rank: int = 16, context: int = 256,
                threads: int = 1, rounds: int = 5, min_time_s: float = 0.2) -> dict:
    """Decode with a rank-``rank`` adapter on all seven matrices against decode without one, and an
    adapter switch against a decode step, interleaved in one process."""
    from hcemu.rom.cache import ensure_image

    path = ensure_image(model, plan, progress=False)
    plain = decode_setup(path, context, threads)
    lora = decode_setup(path, context, threads, lora_rank=rank, lora_adapters=2)
    secs = kb.interleaved({"decode": decode_runner(plain), "decode_lora": decode_runner(lora),
                           "switch": adapter_switch_runner(lora)}, rounds=rounds, min_time_s=min_time_s)
    return {"model": model, "plan": plan, "rank": rank, "context": context, "threads": threads,
            "adapter_sram_bytes": lora.chip.adapters["lora0"].nbytes,
            "decode_tok_s": 1.0 / secs["decode"], "decode_lora_tok_s": 1.0 / secs["decode_lora"],
            "lora_over_plain_speed": secs["decode"] / secs["decode_lora"],
            "switch_us": secs["switch"] * 1e6, "switch_over_decode_step": secs["switch"] / secs["decode_lora"]}


def reference_decode_runner(source_path: str, tokens: np.ndarray) -> kb.Runner:
    """The float32 numpy reference decoding at the same context."""
    from hcemu.model import FloatLlama, load_source

    ref = FloatLlama(load_source(source_path))
    ref.prefill(tokens[:-1])
    keep, tok = len(tokens) - 1, int(tokens[-1])

    def step():
        ref.decode(tok)
        ref.truncate(keep)
    return kb.Runner("numpy_f32_reference", step, 0, 0, 1, "float32 reference decode step")


def prefill_runner(image_path: str, tokens: np.ndarray, threads: int = 1) -> kb.Runner:
    """Prefill of ``tokens`` (batched CIM products, M <= 64) from an empty cache."""
    from hcemu.chip.chip import Chip
    from hcemu.rom.image import RomImage

    chip = Chip(RomImage.load(image_path, verify=False), kv_capacity_tokens=len(tokens) + 8, n_threads=threads)

    def run():
        chip.reset()
        chip.prefill(tokens)
    return kb.Runner("hcemu", run, 0, 0, 1, f"prefill of {len(tokens)} tokens")


def decode_profile(image_path: str, context: int = 256, threads: int = 1, steps: int = 64) -> dict:
    """Where a decode step's wall time goes (profiled chip, ``steps`` steps at a fixed context).

    ``kernel_share``: time inside compiled code (the layers' C call and the head's kernels) over
    wall time; ``kernel_call_share``: only the kernel calls themselves (the C glue between them
    excluded); ``op_ms``: milliseconds per step of each op inside the compiled layers, and of
    ``head`` (final norm and output product: their kernel calls) and ``python`` (everything else:
    embedding lookup, event and bank bookkeeping, the compiled layers' Python wrapper, the
    interpreter).
    """
    import time

    setup = decode_setup(image_path, context, threads, profile=True)
    chip, tok, keep = setup.chip, int(setup.tokens[-1]), context - 1
    for _ in range(4):
        chip.decode(tok)
        chip.kv.truncate(keep)
    chip.reset_profile()
    t0 = time.perf_counter()
    for _ in range(steps):
        chip.decode(tok)
        chip.kv.truncate(keep)
    wall = time.perf_counter() - t0
    ops = chip.op_seconds()
    layers_s = ops.pop("layers")[0]  # inside the C call
    op_s = sum(sec for sec, _ in ops.values())
    head_s = chip.kernel_seconds - chip.layers_call_seconds
    compiled_s = layers_s + head_s
    op_ms = {op: sec / steps * 1e3 for op, (sec, calls) in ops.items() if calls}
    op_ms["glue"] = (layers_s - op_s) / steps * 1e3
    op_ms["head"] = head_s / steps * 1e3
    op_ms["python"] = (wall - compiled_s) / steps * 1e3
    return {"kernel_share": compiled_s / wall, "kernel_call_share": (op_s + head_s) / wall,
            "step_ms": wall / steps * 1e3, "op_ms": op_ms}


def chip_ratios(model: str = "smollm2", plans=("int8", "int4"), context: int = 256, threads: int = 1,
                rounds: int = 5, min_time_s: float = 0.2) -> dict:
    """The functional chip's speed figures (decode and prefill against the plain read and the float
    reference), interleaved in one process; returns a JSON-ready dict."""
    from hcemu.rom.cache import ensure_image
    from hcemu.model import source_path

    src = source_path(model)
    out = {"model": model, "context": context, "threads": threads, "plans": {}}
    setups, runners = {}, {}
    for plan in plans:
        path = ensure_image(model, plan, progress=False)
        setups[plan] = decode_setup(path, context, threads)
        runners[f"decode_{plan}"] = decode_runner(setups[plan])
        runners[f"read_{plan}"] = kb.read_runner(setups[plan].rom_bytes_per_step, threads)
        runners[f"prefill_{plan}"] = prefill_runner(path, setups[plan].tokens[:context], threads)
    kb.set_blas_threads(threads)
    runners["reference"] = reference_decode_runner(src, setups[plans[0]].tokens)
    secs = kb.interleaved(runners, rounds=rounds, min_time_s=min_time_s)
    for plan in plans:
        path = ensure_image(model, plan, progress=False)
        dec, read = secs[f"decode_{plan}"], secs[f"read_{plan}"]
        prefill_per_token = secs[f"prefill_{plan}"] / context
        out["plans"][plan] = {
            "rom_bytes_per_step": setups[plan].rom_bytes_per_step,
            "decode_ms_per_token": dec * 1e3,
            "decode_tok_s": 1.0 / dec,
            "plain_read_ms": read * 1e3,
            "plain_read_gb_s": setups[plan].rom_bytes_per_step / read / 1e9,
            "decode_over_read": dec / read,
            "speedup_vs_reference": secs["reference"] / dec,
            "prefill_tok_s": 1.0 / prefill_per_token,
            "prefill_speedup_per_token": dec / prefill_per_token,
        }
        out["plans"][plan].update(decode_profile(path, context, threads))
    out["reference_decode_tok_s"] = 1.0 / secs["reference"]
    return out
