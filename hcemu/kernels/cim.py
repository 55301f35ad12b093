"""Compute-in-memory products: the public Python API over the C kernels (``csrc/hc_cim.c``).

The functional chip calls exactly these. Shapes: activations ``(m, k)`` (m tokens), weights a
:class:`hcemu.layout.PackedWeights` of ``n x k``, outputs float32 ``(m, n)``. Numerics (bit-exact on
every ISA path, equal to :mod:`hcemu.kernels.cim_ref`): ``docs/numerics.md``. Event counts: ``docs/events.md``.

Each PackedWeights is prepared once (pointers and event increments; cached until it is garbage
collected), so a call costs one small validation and one C call with the GIL released.
"""
from __future__ import annotations

import numpy as np

from hcemu import _core

CimWeights = _core.CimWeights
OPENMP: bool = _core.OPENMP


def prepare(pw) -> "CimWeights":
    """The prepared (cached) form of a PackedWeights; may be passed wherever ``pw`` is accepted."""
    return _core.prepared(pw)


def quantize_activations(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize float32 ``x`` (m, k) to int8 codes (m, k) and float32 scales (m, k // group).

    ``group`` inputs share one scale (``group = k``: one scale per token). NaN or infinity in ``x``
    raises ValueError.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy float32 array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (m, k), got shape {x.shape}")
    m, k = x.shape
    group = int(group)
    if group < 1 or k % group:
        raise ValueError(f"activation group {group} does not divide K={k}")
    q = np.empty((m, k), np.int8)
    scales = np.empty((m, k // group), np.float32)
    _core.quantize_act(x, group, q, scales)
    return q, scales


cim_matmul = _core.cim_matmul
"""``cim_matmul(q, act_scales, pw, *, out=None, n_threads=1, events=None, region=None) -> float32 (m, n)``

Product of int8 activations ``q`` (m, k) and float32 ``act_scales`` (m, k // Ga) with the ROM matrix
``pw`` (n x k). Ga = k // act_scales.shape[1] must be a multiple of the weights' tile width or k.
``out`` (m, n) float32 C-contiguous is written if given. ``n_threads`` (1..256) splits row tiles over
threads (identical results; at most one thread per 4 MiB of weights, csrc/hcemu.h). With ``events`` and ``region``, adds the per-product counts of
docs/events.md times m. (A compiled function: the Python layer costs one call.)
"""

cim_linear = _core.cim_linear
"""``cim_linear(x, act_group, pw, *, out=None, n_threads=1, events=None, region=None) -> float32 (m, n)``

Fused :func:`quantize_activations` + :func:`cim_matmul` of float32 ``x`` (m, k) in one C call.
"""
