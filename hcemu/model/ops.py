"""Float32 vector-unit math: RMSNorm, RoPE, SiLU, GELU, soft-capping, softmax.

These functions are the float reference's (:mod:`hcemu.model.reference`), the model the chip is
measured against; the chip's vector unit has its own oracle (:mod:`hcemu.kernels.vector_ref`: lane-order
sums and the unit's polynomial exp, bit for bit with csrc/hc_vec.c). They pin down one precise
float32 recipe:

* inputs and outputs are float32 (inputs of other dtypes are converted; NaN passes through);
* reductions (sums of squares, softmax denominators) accumulate in float64 and round to float32
  once, so the float32 result does not depend on the summation order (up to a double rounding
  that happens with probability ~2^-29 per value);
* transcendental functions (``exp``, ``cos``, ``sin``) are evaluated in float64 and rounded to float32
  once, i.e. correctly rounded in all but vanishingly rare cases and independent of numpy's
  SIMD float32 kernels;
* everything else is plain float32 arithmetic, one rounding per operation, in the order written.

Shapes: activations are ``(..., d)`` rows; RoPE works on ``(t, heads, head_dim)``.
"""
from __future__ import annotations

import numpy as np

from hcemu.model.spec import ModelSpec, RopeScaling

F32 = np.float32


def _f32(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != F32:
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"{what} must be a real array, got dtype {a.dtype}")
        a = a.astype(F32)
    return a


def rmsnorm(x, w, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: ``x * (1 / sqrt(mean(x^2) + eps)) * w``.

    x: ``(..., d)``; w: ``(d,)``. The mean of squares is accumulated in float64 and rounded to float32;
    ``r = 1 / sqrt(ms + eps)`` is computed in float32 (``ms + eps`` rounded, ``sqrt`` correctly rounded,
    division correctly rounded); then ``(x * r) * w`` in float32.
    """
    x = _f32(x, "rmsnorm x")
    w = _f32(w, "rmsnorm w")
    if w.shape != x.shape[-1:]:
        raise ValueError(f"rmsnorm: weight shape {w.shape} does not match the last axis of x {x.shape}")
    x64 = x.astype(np.float64)
    ms = (np.einsum("...i,...i->...", x64, x64) / x.shape[-1]).astype(F32)
    r = F32(1.0) / np.sqrt(ms + F32(eps))
    return (x * r[..., None]) * w


def llama3_frequency_divisors(inv_freq, scaling: RopeScaling) -> np.ndarray:
    """Llama 3 scaling: the divisor applied to each RoPE frequency (1 ... ``factor``), float64.

    Wavelengths shorter than ``original_context / high_freq_factor`` keep their frequency; those longer
    than ``original_context / low_freq_factor`` are divided by ``factor``; between, the frequency is a
    linear blend ``(1 - s) * f / factor + s * f`` with ``s = (original_context / wavelength - low) /
    (high - low)`` (as in Meta's reference code and llama.cpp's ``rope_freqs``).
    """
    inv_freq = np.asarray(inv_freq, dtype=np.float64)
    wavelen = 2.0 * np.pi / inv_freq
    lo, hi, orig = scaling.low_freq_factor, scaling.high_freq_factor, float(scaling.original_context)
    s = (orig / wavelen - lo) / (hi - lo)
    blended = 1.0 / ((1.0 - s) / scaling.factor + s)
    return np.where(wavelen < orig / hi, 1.0, np.where(wavelen > orig / lo, scaling.factor, blended))


def rope_frequencies(spec: ModelSpec, local: bool = False) -> np.ndarray:
    """The ``head_dim / 2`` RoPE angular frequencies (radians per position), float64, after scaling.

    local: the table of sliding-window layers when the spec gives them their own base
    (``rope_theta_swa``, unscaled; :meth:`ModelSpec.block`)."""
    hd = spec.head_dim
    if local and spec.rope_theta_swa:
        return spec.rope_theta_swa ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    inv_freq = spec.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    sc = spec.rope_scaling
    if sc is not None:
        if sc.type == "linear":
            inv_freq = inv_freq / sc.factor
        else:
            inv_freq = inv_freq / llama3_frequency_divisors(inv_freq, sc)
    return inv_freq


def rope_tables(spec: ModelSpec, positions, local: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` tables, each float32 ``(len(positions), head_dim / 2)``.

    The angle ``position * frequency`` and its cosine and sine are computed in float64 and rounded to
    float32 once (the chip holds these as precomputed constants). Positions must be non-negative
    integers. local: the sliding-window layers' table (:func:`rope_frequencies`).
    """
    pos = np.asarray(positions)
    if pos.ndim != 1 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be a 1-D integer array, got shape {pos.shape} dtype {pos.dtype}")
    if pos.size and pos.min() < 0:
        raise ValueError(f"positions must be non-negative, got min {pos.min()}")
    ang = pos.astype(np.float64)[:, None] * rope_frequencies(spec, local)[None, :]
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def apply_rope(x, cos, sin, style: str = "normal") -> np.ndarray:
    """Rotate pairs of each head by the angle of pair ``i``.

    style ``"normal"``: consecutive pairs ``(x[..., 2i], x[..., 2i+1])``, llama.cpp's "normal" RoPE,
    the one GGUF llama files need (the converter permutes the Q and K rows so that HF's rotate-half
    pairs become consecutive); ``"neox"``: the halves ``(x[..., i], x[..., i + head_dim/2])`` (qwen,
    phi3, gemma, olmoe GGUFs). x: ``(t, heads, head_dim)``; cos, sin: ``(t, head_dim/2)``. Float32:
    ``y0 = x0*c - x1*s``, ``y1 = x0*s + x1*c``, each product rounded, then the sum rounded (no fused
    multiply-add).
    """
    x = _f32(x, "apply_rope x")
    cos = _f32(cos, "cos")
    sin = _f32(sin, "sin")
    if x.ndim != 3 or x.shape[-1] % 2:
        raise ValueError(f"apply_rope: x must be (t, heads, even head_dim), got {x.shape}")
    t, _, hd = x.shape
    if cos.shape != (t, hd // 2) or sin.shape != (t, hd // 2):
        raise ValueError(f"apply_rope: cos/sin must be ({t}, {hd // 2}), got {cos.shape} and {sin.shape}")
    if style == "normal":
        i0, i1 = np.s_[..., 0::2], np.s_[..., 1::2]
    elif style == "neox":
        i0, i1 = np.s_[..., : hd // 2], np.s_[..., hd // 2:]
    else:
        raise ValueError(f"apply_rope: style must be 'normal' or 'neox', got {style!r}")
    x0 = x[i0]
    x1 = x[i1]
    c = cos[:, None, :]
    s = sin[:, None, :]
    out = np.empty_like(x)
    out[i0] = x0 * c - x1 * s
    out[i1] = x0 * s + x1 * c
    return out


GELU_COEF_A = 0.044715
SQRT_2_OVER_PI = 0.7978845608028654


def gelu(x) -> np.ndarray:
    """GELU, tanh approximation (as GeGLU models and llama.cpp use it):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, in float64, rounded to float32 once."""
    x = _f32(x, "gelu x").astype(np.float64)
    return (0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + GELU_COEF_A * x * x * x)))).astype(F32)


def softcap(x, cap: float) -> np.ndarray:
    """Soft-capping ``cap * tanh(x / cap)`` in float64, rounded to float32 once (``cap`` > 0)."""
    x = _f32(x, "softcap x").astype(np.float64)
    return (cap * np.tanh(x / cap)).astype(F32)


def sigmoid(x) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64, rounded to float32 once."""
    x = _f32(x, "sigmoid x").astype(np.float64)
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x))).astype(F32)


def silu(x) -> np.ndarray:
    """``x * sigmoid(x) = x / (1 + exp(-x))``: ``exp`` in float64 rounded to float32, then float32 ops."""
    x = _f32(x, "silu x")
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(-x.astype(np.float64)).astype(F32)  # inf for x < -88.7: result -0.0
        return x / (F32(1.0) + e)


def softmax(x, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``: ``e = exp(x - max)`` (subtraction in float32, exp in float64 rounded to
    float32), denominator summed in float64 and rounded to float32, then ``e / sum`` in float32.

    ``-inf`` entries (masked positions) get probability 0; a slice that is all ``-inf`` is an error.
    """
    x = _f32(x, "softmax x")
    m = np.max(x, axis=axis, keepdims=True)
    if not np.all(np.isfinite(m)):
        raise ValueError("softmax: a slice has no finite entry (fully masked or NaN/inf)")
    with np.errstate(under="ignore"):  # tiny probabilities flush to (sub)normal or zero, by design
        e = np.exp((x - m).astype(np.float64)).astype(F32)
        s = np.sum(e, axis=axis, keepdims=True, dtype=np.float64).astype(F32)
        return e / s
