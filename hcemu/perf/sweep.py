"""Design-space sweeps: vectorized over numpy arrays in one process, or chunked over any Executor.

``sweep_grid`` evaluates every combination of the given ChipSpec fields and workloads with
:func:`hcemu.perf.silicon.decode_sweep` (numpy broadcasting: no Python loop per point).
``sweep_executor`` splits a grid into chunks and maps them on a ``concurrent.futures.Executor``
(threads, processes, or a Dask ``client.get_executor()``) — the same numbers, more machines.
"""
from __future__ import annotations

import numpy as np

from hcemu.model.spec import ModelSpec
from hcemu.perf.silicon import chip_arrays, decode_sweep
from hcemu.perf.specs import get_chip


def _grid(axes: dict) -> dict[str, np.ndarray]:
    names = list(axes)
    mesh = np.meshgrid(*[np.asarray(axes[n]) for n in names], indexing="ij")
    return {n: m.reshape(-1) for n, m in zip(names, mesh)}


def sweep_grid(spec: ModelSpec, plan, base="hc1", *, n_prompt=1024, n_generated=1024, **axes) -> dict[str, np.ndarray]:
    """Evaluate the full grid of ``axes`` (ChipSpec field -> values; also ``n_prompt``/``n_generated``).

    Returns flat arrays: one entry per axis plus the outputs of :func:`decode_sweep`.
    """
    axes = dict(axes)
    axes.setdefault("n_prompt", np.atleast_1d(n_prompt))
    axes.setdefault("n_generated", np.atleast_1d(n_generated))
    flat = _grid(axes)
    work = {k: flat.pop(k) for k in ("n_prompt", "n_generated")}
    chip = chip_arrays(get_chip(base), **flat)
    out = decode_sweep(spec, plan, chip, work["n_prompt"], work["n_generated"])
    n = len(work["n_prompt"])
    return {**flat, **work, **{k: np.broadcast_to(v, (n,)).copy() for k, v in out.items()}}


def _chunk_eval(args):
    spec, plan, base, chunk = args
    chip = chip_arrays(get_chip(base), **{k: v for k, v in chunk.items() if k not in ("n_prompt", "n_generated")})
    out = decode_sweep(spec, plan, chip, chunk["n_prompt"], chunk["n_generated"])
    n = len(chunk["n_prompt"])
    return {k: np.broadcast_to(v, (n,)).copy() for k, v in out.items()}


def sweep_executor(executor, spec: ModelSpec, plan, base="hc1", *, chunk_size: int = 4096, n_prompt=1024,
                   n_generated=1024, **axes) -> dict[str, np.ndarray]:
    """Like :func:`sweep_grid`, with chunks of ``chunk_size`` points mapped on ``executor``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    axes = dict(axes)
    axes.setdefault("n_prompt", np.atleast_1d(n_prompt))
    axes.setdefault("n_generated", np.atleast_1d(n_generated))
    flat = _grid(axes)
    n = len(flat["n_prompt"])
    chunks = [(spec, plan, base, {k: v[i:i + chunk_size] for k, v in flat.items()}) for i in range(0, n, chunk_size)]
    parts = list(executor.map(_chunk_eval, chunks))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return {**flat, **out}


def context_curve(spec: ModelSpec, plan, base="hc1", contexts=(256, 512, 1024, 2048, 4096, 8192)):
    """Per-user tok/s of the chip at prompt = output = each context (the 1k/1k setting generalised)."""
    c = np.asarray(list(contexts), dtype=np.float64)
    return decode_sweep(spec, plan, get_chip(base), c, c)


__all__ = ["sweep_grid", "sweep_executor", "context_curve"]
