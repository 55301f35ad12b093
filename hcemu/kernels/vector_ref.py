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


def rope_ref(x, cos, sin, style: str = "normal") -> np.ndarray:
    """x (t, heads, hd); cos, sin (t, hd // 2): consecutive pairs (``"normal"``) or halves
    (``"neox"``) rotated."""
    x = np.asarray(x, F32)
    c = np.asarray(cos, F32)[:, None, :]
    s = np.asarray(sin, F32)[:, None, :]
    half = x.shape[-1] // 2
    i0, i1 = (np.s_[..., 0::2], np.s_[..., 1::2]) if style == "normal" else (np.s_[..., :half], np.s_[..., half:])
    x0, x1 = x[i0], x[i1]
    y = np.empty_like(x)
    y[i0] = x0 * c - x1 * s
    y[i1] = x0 * s + x1 * c
    return y


def silu_mul_ref(gate, up) -> np.ndarray:
    g = np.asarray(gate, F32)
    with np.errstate(over="ignore"):
        return (g / (F32(1) + exp_ref(-g))) * np.asarray(up, F32)


def add_ref(x, y) -> np.ndarray:
    return np.asarray(x, F32) + np.asarray(y, F32)


def tanh_ref(z) -> np.ndarray:
    """The unit's tanh: ``sign(z) * (1 - e) / (1 + e)`` with ``e = exp(-2|z|)`` (the unit's exp)."""
    z = np.asarray(z, F32)
    a = np.abs(z)
    with np.errstate(over="ignore", invalid="ignore"):
        e = exp_ref(F32(-2) * a)
        t = (F32(1) - e) / (F32(1) + e)
    return np.copysign(t, z).astype(F32)


GELU_A = F32(float.fromhex("0x1.6e4e26p-5"))   # 0.044715 in float32
GELU_K = F32(float.fromhex("0x1.988454p-1"))   # sqrt(2 / pi) in float32


def gelu_ref(g) -> np.ndarray:
    """The unit's GELU (tanh form): ``u = ((g*g)*g)*A + g``; ``(0.5*g) * (1 + tanh(u*K))``."""
    g = np.asarray(g, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        u = ((g * g) * g) * GELU_A + g
        return (F32(0.5) * g) * (F32(1) + tanh_ref(u * GELU_K))


def gelu_mul_ref(gate, up) -> np.ndarray:
    return gelu_ref(gate) * np.asarray(up, F32)


def softcap_ref(x, cap) -> np.ndarray:
    """``tanh(x * (1/cap)) * cap`` with ``1/cap`` rounded to float32 once."""
    cap = F32(cap)
    return tanh_ref(np.asarray(x, F32) * (F32(1) / cap)) * cap


def moe_route_ref(logits, k: int, norm: bool = False, scale: float = 1.0):
    """Routing oracle (csrc/hc_vec.c ``hc_moe_route_f32``): experts int32 (t, k), weights float32 (t, k)."""
    logits = np.asarray(logits, F32)
    sel = np.argsort(-logits, axis=-1, kind="stable")[:, :k].astype(np.int32)
    m = logits.max(axis=-1, keepdims=True)
    e = exp_ref(logits - m)
    s = lane_sum(e)
    w = np.take_along_axis(e, sel, axis=-1) / s[:, None]
    if norm:
        ws = w[:, 0]
        for i in range(1, k):
            ws = ws + w[:, i]
        w = w / ws[:, None]
    if scale != 1.0:
        w = w * F32(scale)
    return sel, w.astype(F32)
