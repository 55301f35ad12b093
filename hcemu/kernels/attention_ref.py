"""numpy oracle of the KV cache and the streaming attention unit (:mod:`hcemu.kernels.attention`).

The same integer and float32 operations in the same order as csrc/hc_attn.c, so outputs agree bit
for bit (docs/numerics.md "KV cache", "Attention"); plus a float64 textbook attention to measure
the quantization error against.
"""
from __future__ import annotations

import numpy as np

from hcemu.kernels.vector_ref import exp_ref, lane_sum, softcap_ref

F32 = np.float32
BLOCK = 64  # = hcemu.kernels.attention.ATTN_BLOCK (checked by the tests)


def quantize_act_ref(x):
    """Activation rule over the last axis: codes int8 in [-127, 127] and float32 scale amax/127."""
    x = np.asarray(x, F32)
    amax = np.max(np.abs(x), axis=-1)
    scale = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, F32(127) / amax, F32(0)).astype(F32)
    q = np.clip(np.rint(x * inv[..., None]), -127, 127).astype(np.int8)
    return q, scale.astype(F32)


def quantize_kv_ref(x):
    """KV int8 rule over the last axis: fp16 scale s = fp16(amax/127), codes against the stored s.

    Returns (codes int8, scales float16). Raises ValueError on non-finite input or scale overflow.
    """
    x = np.asarray(x, F32)
    if not np.isfinite(x).all():
        raise ValueError("K/V hold NaN or infinity")
    amax = np.max(np.abs(x), axis=-1)
    with np.errstate(over="ignore"):
        s16 = (amax / F32(127)).astype(np.float16)
    if np.isinf(s16).any():
        raise ValueError("K/V scale amax/127 overflows fp16")
    s = s16.astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(s > 0, F32(1) / s, F32(0)).astype(F32)
    q = np.clip(np.rint(x * inv[..., None]), -127, 127).astype(np.int8)
    return q, s16


def qk_ref(q_codes, k_codes) -> np.ndarray:
    """Exact int32 dot products: q (..., hd) int8 with k (n, hd) int8 -> (..., n)."""
    return np.asarray(q_codes, np.int64) @ np.asarray(k_codes, np.int64).T


def attention_ref(q, k, v, start, *, k_scales=None, v_scales=None, block=BLOCK, scale=0.0, softcap=0.0,
                  window=0) -> np.ndarray:
    """Bit-exact oracle of the attention unit over one layer.

    q: float32 (t, H, hd). int8 cache: k, v int8 codes (Hkv, n, hd) and k_scales, v_scales float16
    (Hkv, n). fp16 cache: k, v float16 (Hkv, n, hd), no scales. scale: score scale (0: 1/sqrt(hd));
    softcap > 0: scores capped; window > 0: the query at p sees keys [p - window + 1, p], its blocks
    starting at the first. Returns float32 (t, H*hd).
    """
    q = np.asarray(q, F32)
    t, H, hd = q.shape
    hkv = k.shape[0]
    G = H // hkv
    gidx = np.arange(H) // G
    is_i8 = k_scales is not None
    c = F32(scale) if scale else F32(1.0 / np.sqrt(np.float64(hd)))
    out = np.empty((t, H * hd), F32)
    for i in range(t):
        nk = start + i + 1
        lo = max(0, nk - window) if window else 0
        if not np.isfinite(q[i]).all():
            raise ValueError("q holds NaN or infinity")
        if is_i8:
            qq, qs = quantize_act_ref(q[i])
            qsc = qs * c
            D = np.einsum("hd,hnd->hn", qq.astype(np.int64), k[gidx, lo:nk].astype(np.int64))
            assert np.abs(D).max(initial=0) < 2**31
            ks = k_scales[gidx, lo:nk].astype(F32)
            scores = (D.astype(np.int32).astype(F32) * ks) * qsc[:, None]
            vs = v_scales[gidx, lo:nk].astype(F32)
            vf = v[gidx, lo:nk].astype(F32)
        else:
            kf = k[gidx, lo:nk].astype(F32)
            scores = lane_sum(q[i][:, None, :] * kf) * c
            vf = v[gidx, lo:nk].astype(F32)
        if softcap:
            scores = softcap_ref(scores, softcap)
        nk = nk - lo
        m = np.full(H, -np.inf, F32)
        l = np.zeros(H, F32)
        acc = np.zeros((H, hd), F32)
        for j0 in range(0, nk, block):
            s = scores[:, j0:j0 + block]
            mb = s.max(axis=1)
            if not np.isfinite(mb).all():
                raise ValueError("attention scores overflow float32")
            mnew = np.where(m > mb, m, mb)
            with np.errstate(invalid="ignore"):
                alpha = exp_ref(m - mnew)
            p = exp_ref(s - mnew[:, None])
            lsum = l * alpha
            for j in range(p.shape[1]):
                lsum = lsum + p[:, j]
            l, m = lsum, mnew
            acc = acc * alpha[:, None]
            w = p * vs[:, j0:j0 + block] if is_i8 else p
            for j in range(p.shape[1]):
                acc = acc + w[:, j, None] * vf[:, j0 + j]
        out[i] = (acc / l[:, None]).reshape(-1)
    return out


def attention_float64(q, k, v, start) -> np.ndarray:
    """Textbook causal GQA softmax attention in float64: q (t, H, hd), k, v (n, Hkv, hd) float."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    t, H, hd = q.shape
    G = H // k.shape[1]
    out = np.empty((t, H, hd))
    for i in range(t):
        nk = start + i + 1
        for h in range(H):
            s = k[:nk, h // G] @ q[i, h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[:nk, h // G]
    return out.reshape(t, H * hd)
