"""The emulator's own decode speed on this machine, measured on a timed subset of layers and scaled.

Times the CIM products of ``n_layers_timed`` layers (a layer's own matrices and, for a mixture of
experts, the ``n_experts_used`` experts one token fires; synthetic weight codes in the plan's format,
packed with :func:`hcemu.layout.pack`) through :func:`hcemu.kernels.cim.cim_linear`, plus the output head, and
scales the layers up to the model's count. Attention, norms and the other vector work are not timed
(on the host they are a small share at short context): the figure is an upper bound on the
emulator's decode tok/s, labelled as such.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from hcemu.formats import Plan, WeightFormat
from hcemu.layout import pack
from hcemu.model.spec import ModelSpec
from hcemu.perf.analytic import head_format


class HostUnavailable(RuntimeError):
    """The compiled CIM kernels (hcemu.kernels.cim) are not importable in this build."""


@dataclass(frozen=True)
class HostResult:
    decode_tok_s: float
    seconds_per_token: float
    layers_timed: int
    n_layers: int
    n_threads: int
    repeats: int
    label: str

    def to_dict(self) -> dict:
        return asdict(self)


def _cim():
    try:
        from hcemu.kernels import cim
    except ImportError as exc:  # the kernels land in another branch
        raise HostUnavailable(f"host decode not measured: hcemu.kernels.cim is not importable here ({exc})") from exc
    return cim


def synthetic_weights(fmt: WeightFormat, n: int, k: int, rng: np.random.Generator):
    """Random codes and scales of an ``n x k`` matrix in ``fmt``, packed for the ROM."""
    lo, hi = (0, 16) if fmt.asymmetric else ((-8, 8) if fmt.bits == 4 else (-127, 128))
    q = rng.integers(lo, hi, size=(n, k), dtype=np.int16)
    meta_shape = (n,) if fmt.per_channel else (n, k // fmt.group)
    scales = rng.uniform(1e-3, 2e-2, size=meta_shape).astype(np.float16)
    offsets = (-8 * scales).astype(np.float16) if fmt.asymmetric else None
    return pack(q, scales, fmt, offsets)


HEAD_ROWS_TIMED = 8192
"""The output head is timed on at most this many vocabulary rows and scaled by ``vocab / rows`` (a
full 128k-row synthetic head would cost gigabytes of temporary memory to build)."""


def measure_host_decode(spec: ModelSpec, plan: Plan, *, n_layers_timed: int = 1, n_threads: int = 1,
                        repeats: int = 3, seed: int = 0) -> HostResult:
    """Decode tok/s of the emulator for ``spec`` on this host (best of ``repeats``), from timed layers scaled up.

    Raises :class:`HostUnavailable` when the compiled kernels are missing.
    """
    cim = _cim()
    if not 1 <= n_layers_timed <= spec.n_layers:
        raise ValueError(f"n_layers_timed must be in 1..{spec.n_layers}, got {n_layers_timed}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    shapes = [shape for _n, _k, shape in spec.layer_matrices(0)]
    for e in range(spec.n_experts_used):
        shapes += [shape for _n, _k, shape in spec.expert_matrices(0, e)]
    layer = [synthetic_weights(plan.matrices, *shape, rng) for shape in shapes]
    vocab, d = spec.matrix_shape("output")
    head_rows = min(vocab, HEAD_ROWS_TIMED)
    head = synthetic_weights(head_format(spec, plan), head_rows, d, rng)
    xs = {k: rng.standard_normal((1, k)).astype(np.float32)
          for k in {pw.k for pw in layer} | {head.k}}
    outs = {id(pw): np.empty((1, pw.n), np.float32) for pw in layer + [head]}

    def product(pw):
        g = plan.activations.group_for(pw.k)
        cim.cim_linear(xs[pw.k], g, pw, out=outs[id(pw)], n_threads=n_threads)

    best_layer, best_head = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n_layers_timed):
            for pw in layer:
                product(pw)
        t1 = time.perf_counter()
        product(head)
        t2 = time.perf_counter()
        best_layer = min(best_layer, (t1 - t0) / n_layers_timed)
        best_head = min(best_head, t2 - t1)
    sec = best_layer * spec.n_layers + best_head * vocab / head_rows
    head_note = "head" if head_rows == vocab else f"{head_rows} of {vocab} head rows"
    return HostResult(1.0 / sec, sec, n_layers_timed, spec.n_layers, n_threads, repeats,
                      f"host emulator, synthetic weights (timed {n_layers_timed} of {spec.n_layers} layers "
                      f"and {head_note}, scaled; CIM products only)")
