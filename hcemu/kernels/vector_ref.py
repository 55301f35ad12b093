"""numpy oracle of the vector unit (:mod:`hcemu.kernels.vector`): the same float32 operations in the same
order as csrc/hc_vec.c, so results agree bit for bit (docs/numerics.md "Vector unit")."""
from __future__ import annotations

import numpy as np

F32 = np.float32
LANES = 16
"""Interleaved partial sums of the vector unit's reductions (lane l takes elements j = l mod 16)."""

# exp constants: hex literals exactly representable in float32, identical to csrc/hc_vecmath.h
_LOG2E = F32(float.fromhex("0x1.715476p+0"))
_MAGIC = F32(12582912.0)  # 1.5 * 2**23: (v + M) - M rounds v to an integer, ties to even
_C1 = F32(float.fromhex("0x1.63p-1"))
_C2 = F32(float.fromhex("-0x1.bd0106p-13"))
_P = tuple(F32(float.fromhex(h)) for h in
           ("0x1.a0d2cep-13", "0x1.6e879cp-10", "0x1.111210p-7", "0x1.555382p-5", "0x1.555554p-3"))
EXP_LO = F32(-87.0)
EXP_HI = F32(88.0)


def exp_ref(x) -> np.ndarray:
    """The vector unit's float32 exp (Cephes-style): 0 below -87, +inf above 88, NaN stays NaN."""
    x = np.asarray(x, F32)
    with np.errstate(all="ignore"):
        xc = np.where(x > EXP_HI, EXP_HI, x)
        xc = np.where(xc < EXP_LO, EXP_LO, xc)
        xc = np.where(x == x, xc, F32(0))
        n = (xc * _LOG2E + _MAGIC) - _MAGIC
        r = xc - n * _C1
        r = r - n * _C2
        z = r * r
        p = _P[0]
        for c in _P[1:]:
            p = p * r + c
        p = p * r + F32(0.5)
        p = p * z + r
        p = p + F32(1)
        two_n = ((n.astype(np.int32) + 127) << 23).view(F32)
        y = p * two_n
        y = np.where(x < EXP_LO, F32(0), y)
        y = np.where(x > EXP_HI, F32(np.inf), y)
        y = np.where(x == x, y, x)
    return y.astype(F32, copy=False)


def lane_sum(prod: np.ndarray) -> np.ndarray:
    """Sum over the last axis in the vector unit's order: 16 interleaved lanes, folded 8, 4, 2, 1."""
    prod = np.asarray(prod, F32)
    n = prod.shape[-1]
    pad = (-n) % LANES
    if pad:
        prod = np.concatenate([prod, np.zeros(prod.shape[:-1] + (pad,), F32)], axis=-1)
    chunks = prod.reshape(prod.shape[:-1] + (-1, LANES))
    acc = np.zeros(prod.shape[:-1] + (LANES,), F32)
    for c in range(chunks.shape[-2]):
        acc = acc + chunks[..., c, :]
    w = LANES // 2
    while w >= 1:
        acc = acc[..., :w] + acc[..., w:2 * w]
        w //= 2
    return acc[..., 0]


def rmsnorm_ref(x, w, eps) -> np.ndarray:
    x = np.asarray(x, F32)
    w = np.asarray(w, F32)
    ss = lane_sum(x * x)
    r = F32(1) / np.sqrt(ss / F32(x.shape[-1]) + F32(eps))
    return (x * r[..., None]) * w


def rope_ref(x, cos, sin) -> np.ndarray:
    """x (t, heads, hd); cos, sin (t, hd // 2): consecutive pairs rotated."""
    x = np.asarray(x, F32)
    c = np.asarray(cos, F32)[:, None, :]
    s = np.asarray(sin, F32)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y = np.empty_like(x)
    y[..., 0::2] = x0 * c - x1 * s
    y[..., 1::2] = x0 * s + x1 * c
    return y


def silu_mul_ref(gate, up) -> np.ndarray:
    g = np.asarray(gate, F32)
    with np.errstate(over="ignore"):
        return (g / (F32(1) + exp_ref(-g))) * np.asarray(up, F32)


def add_ref(x, y) -> np.ndarray:
    return np.asarray(x, F32) + np.asarray(y, F32)
