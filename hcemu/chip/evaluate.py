"""Accuracy of the chip against the float32 reference of the same model.

The text is cut into windows of ``ctx`` tokens; in each window both the chip (all-position logits from
one prefill) and :class:`hcemu.model.reference.FloatLlama` predict every next token. Reported, over all
scored positions: perplexity of both, the KL divergence of the chip's next-token distribution from the
reference's (mean and 99th percentile, in nats), and the share of positions whose top-1 token agrees —
the statistics llama.cpp's perplexity tool reports for quantized models.

Windows are independent, so they run on any ``concurrent.futures.Executor`` (a process pool here, a
Dask ``client.get_executor()`` past one machine); each worker loads the image and the reference once.
"""
from __future__ import annotations

import functools
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from hcemu.model.reference import log_softmax


@dataclass(frozen=True)
class WindowStats:
    """Per-position statistics of one window (arrays of length ctx - 1)."""

    nll_reference: np.ndarray
    nll_chip: np.ndarray
    kld: np.ndarray
    same_top1: np.ndarray


def compare_logits(ref_logits: np.ndarray, chip_logits: np.ndarray, targets: np.ndarray) -> WindowStats:
    """Statistics of next-token predictions: logits (t, vocab) for positions whose targets are given."""
    if ref_logits.shape != chip_logits.shape or ref_logits.shape[0] != len(targets):
        raise ValueError(f"logit shapes {ref_logits.shape} / {chip_logits.shape} do not match "
                         f"{len(targets)} targets")
    lr, lc = log_softmax(ref_logits), log_softmax(chip_logits)
    rows = np.arange(len(targets))
    kld = (np.exp(lr) * (lr - lc)).sum(axis=-1)
    return WindowStats(-lr[rows, targets], -lc[rows, targets], np.maximum(kld, 0.0),
                       ref_logits.argmax(-1) == chip_logits.argmax(-1))


@functools.lru_cache(maxsize=2)
def _worker_state(image_path: str, source_path: str, n_threads: int, kv_format: str | None, links=None,
                  adapters: tuple = (), adapter_format: str = "int8"):
    from hcemu.chip.chip import Chip
    from hcemu.model.lora import load_lora
    from hcemu.model.reference import FloatLlama
    from hcemu.model import load_source
    from hcemu.rom.image import RomImage
    from hcemu.rom.manifest import is_system

    if is_system(image_path):
        from hcemu.chip.system import System

        if adapters:
            raise ValueError("LoRA adapters run on one chip's image, not on a system folder")
        runner = System.load(image_path, links or "fp32", verify=False, n_threads=n_threads, kv_format=kv_format)
    else:
        if links is not None:
            raise ValueError(f"{image_path} is one chip's image: link formats apply to a system folder")
        runner = Chip(RomImage.load(image_path, verify=False), n_threads=n_threads, kv_format=kv_format)
    loras = [load_lora(path, runner.spec, scale, name=f"{i}:{path}") for i, (path, scale) in enumerate(adapters)]
    names = tuple(runner.load_adapter(lo, fmt=adapter_format).name for lo in loras)
    return runner, FloatLlama(load_source(source_path), adapters=loras), names


def evaluate_window(image_path: str, source_path: str, tokens, n_threads: int = 1,
                    kv_format: str | None = None, links=None, adapters: tuple = (),
                    adapter_format: str = "int8") -> WindowStats:
    """Chip vs reference on one window of token ids (predicting tokens[1:]); ``kv_format``: the
    chip's KV cache (default: the plan's). ``image_path`` may be a system folder
    (:mod:`hcemu.rom.manifest`), run by a :class:`hcemu.chip.system.System` with link format(s) ``links``
    (default ``fp32``). adapters: ``((path, scale), ...)`` LoRA adapter GGUFs applied on both sides (the
    chip holds them as ``adapter_format``)."""
    chip, reference, names = _worker_state(image_path, source_path, n_threads, kv_format, links,
                                           tuple((str(p), float(s)) for p, s in adapters), adapter_format)
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError("an evaluation window needs at least 2 tokens")
    if len(tokens) > chip.capacity_tokens:
        raise ValueError(f"window of {len(tokens)} tokens exceeds the chip's KV capacity of "
                         f"{chip.capacity_tokens} tokens")
    chip.reset()
    chip_logits = chip.prefill(tokens, all_logits=True, **({"adapter": names} if names else {})).logits[:-1]
    ref_logits = reference.logits(tokens)[:-1]
    return compare_logits(ref_logits, chip_logits, tokens[1:])


def windows(tokens, ctx: int) -> list[np.ndarray]:
    """Non-overlapping windows of ``ctx`` tokens (a last shorter window is kept if it has >= 2)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if ctx < 2:
        raise ValueError(f"ctx must be >= 2, got {ctx}")
    out = [tokens[i:i + ctx] for i in range(0, len(tokens), ctx)]
    return [w for w in out if len(w) >= 2]


def evaluate(image_path: str, source_path: str, tokens, *, ctx: int = 512, n_threads: int = 1,
             kv_format: str | None = None, executor: Executor | None = None, progress: bool = False,
             links=None, adapters=(), adapter_format: str = "int8") -> dict:
    """Evaluate a compiled image (or a system folder, with link format ``links``) against the float
    reference of its source on ``tokens``.

    adapters: ``((path, scale), ...)`` LoRA adapter GGUFs that both the chip (in SRAM, as
    ``adapter_format``) and the reference apply.

    adapters: ``((path, scale), ...)`` LoRA adapter GGUFs that both the chip (in SRAM, as
    ``adapter_format``) and the reference apply.

    Returns a dict with ``tokens`` (scored positions), ``windows``, ``ctx``, ``ppl_reference``,
    ``ppl_chip``, ``kld_mean``, ``kld_p99``, ``same_top1``.
    """
    parts = windows(tokens, ctx)
    if not parts:
        raise ValueError("the text is too short to evaluate (fewer than 2 tokens)")
    job = functools.partial(evaluate_window, str(image_path), str(source_path), n_threads=n_threads,
                            kv_format=kv_format, links=links, adapters=tuple(adapters),
                            adapter_format=adapter_format)
    if executor is None:
        results = map(job, parts)
    else:
        results = executor.map(job, parts)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(parts), desc="evaluating", unit="window")
    stats = list(results)
    nll_r = np.concatenate([s.nll_reference for s in stats])
    nll_c = np.concatenate([s.nll_chip for s in stats])
    kld = np.concatenate([s.kld for s in stats])
    top1 = np.concatenate([s.same_top1 for s in stats])
    return {
        "tokens": int(len(kld)),
        "windows": len(parts),
        "ctx": int(ctx),
        "ppl_reference": float(np.exp(nll_r.mean())),
        "ppl_chip": float(np.exp(nll_c.mean())),
        "kld_mean": float(kld.mean()),
        "kld_p99": float(np.percentile(kld, 99)),
        "same_top1": float(top1.mean()),
    }


def compensation_study(model: str, plans, ranks, tokens, *, calibration_tokens=None, ctx: int = 512,
                       n_threads: int = 1, progress: bool = False) -> list[dict]:
    """KLD and top-1 against the float reference of the chip with a rank-r compensation adapter of its
    ROM quantization error (:mod:`hcemu.rom.compensate`) in SRAM, for each plan and rank (0 = none).

    model: a GGUF path or fetchable name (the float reference needs its weights). With
    ``calibration_tokens`` the SVD is weighted by the input RMS measured on them ("weighted"), else
    plain ("svd"). The reference is never given the adapter: it corrects the chip towards it.
    Returns one row per (plan, rank): ``plan, method, rank, sram_bytes, tokens, ppl_reference, ppl_chip,
    kld_mean, kld_p99, same_top1``.
    """
    from hcemu.chip.chip import Chip
    from hcemu.model import load_source, source_path
    from hcemu.model.reference import FloatLlama
    from hcemu.rom.cache import ensure_image
    from hcemu.rom.compensate import ErrorFactors
    from hcemu.rom.image import RomImage

    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 0:
        raise ValueError(f"ranks must be >= 0, got {ranks}")
    parts = windows(tokens, ctx)
    if not parts:
        raise ValueError("the text is too short to evaluate (fewer than 2 tokens)")
    src = load_source(source_path(model))
    ref = FloatLlama(src)
    ref_logits = [ref.logits(w)[:-1] for w in parts]
    rms = ref.input_rms(calibration_tokens) if calibration_tokens is not None else None
    del ref
    rows = []
    for plan in plans:
        image = RomImage.load(ensure_image(model, plan, progress=progress), verify=False)
        top = max(ranks)
        factors = ErrorFactors(src, image, top, rms, progress=progress) if top else None
        for r in ranks:
            adapter = factors.adapter(r) if r and factors.factors else None
            chip = Chip(image, n_threads=n_threads, kv_capacity_tokens=max(len(w) for w in parts),
                        sram_bytes=2**40)
            names = (chip.load_adapter(adapter).name,) if adapter is not None else ()
            stats = []
            for w, rl in zip(parts, ref_logits):
                chip.reset()
                cl = chip.prefill(w, all_logits=True, adapter=names).logits[:-1]
                stats.append(compare_logits(rl, cl, w[1:]))
            kld = np.concatenate([s.kld for s in stats])
            rows.append({
                "plan": plan, "method": "weighted" if rms is not None else "svd", "rank": r,
                "sram_bytes": chip.adapter_sram_bytes, "matrices": len(adapter.pairs) if adapter else 0,
                "tokens": int(len(kld)),
                "ppl_reference": float(np.exp(np.concatenate([s.nll_reference for s in stats]).mean())),
                "ppl_chip": float(np.exp(np.concatenate([s.nll_chip for s in stats]).mean())),
                "kld_mean": float(kld.mean()), "kld_p99": float(np.percentile(kld, 99)),
                "same_top1": float(np.concatenate([s.same_top1 for s in stats]).mean())})
    return rows
