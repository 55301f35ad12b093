"""Weight quantization for the compiler: float -> chip formats, and lossless import of GGUF blocks.

The rules are written down in ``docs/numerics.md`` ("Weight quantization (compiler)"). Every function
works on a chunk of whole rows so that large matrices are processed in pieces; the chunks of one
matrix, packed with :func:`hcemu.layout.pack` and concatenated along the row-tile axis, are the
packing of the whole matrix (chunks hold a multiple of 16 rows).
"""
from __future__ import annotations

import math

import numpy as np

from hcemu.formats import WeightFormat
from hcemu.layout import PackedWeights, pack

GGUF_BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}
GGUF_BLOCK = 32
FP16_MAX = 65504.0


def _qmax(fmt: WeightFormat) -> int:
    return 127 if fmt.bits == 8 else 7


def _check_float(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (n, k) matrix, got shape {w.shape}")
    if w.dtype != np.float32:
        if not np.issubdtype(w.dtype, np.floating):
            raise TypeError(f"{what}: expected floats, got {w.dtype}")
        w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise ValueError(f"{what}: holds NaN or infinity")
    return w


def _to_fp16(x: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError(f"{what}: a scale or offset exceeds the fp16 range (|x| > {FP16_MAX}): "
                         f"max {float(np.abs(x).max()):.6g}")
    return h


def quantize_codes(w: np.ndarray, fmt: WeightFormat, what: str = "tensor"):
    """Quantize float32 rows ``w`` (n, k) to ``fmt``.

    Returns ``(q, d, m)``: integer codes (n, k) as int16, fp16 scales (n, k // group) or (n,) per channel,
    and fp16 offsets for asymmetric formats (else None). Rule (docs/numerics.md):
    symmetric ``d = fp16(amax / qmax)``, ``q = clamp(rint(w / d), -qmax, qmax)``; asymmetric int4
    ``d = fp16((max - min) / 15)``, ``m = fp16(min)``, ``q = clamp(rint((w - m) / d), 0, 15)``; all in
    float32, ``rint`` rounds half to even, a zero scale gives code 0.
    """
    w = _check_float(w, what)
    n, k = w.shape
    g = k if fmt.per_channel else fmt.group
    if k % g:
        raise ValueError(f"{what}: group size {g} does not divide K={k}")
    x = w.reshape(n, k // g, g)
    if fmt.asymmetric:
        lo = x.min(axis=2)
        hi = x.max(axis=2)
        d = _to_fp16((hi - lo) / np.float32(15.0), what)
        m = _to_fp16(lo, what)
        d32 = d.astype(np.float32)[..., None]
        safe = np.where(d32 == 0, np.float32(1.0), d32)
        q = np.rint((x - m.astype(np.float32)[..., None]) / safe)
        q = np.where(d32 == 0, np.float32(0.0), q)
        q = np.clip(q, 0, 15).astype(np.int16).reshape(n, k)
        return q, d, m
    qmax = _qmax(fmt)
    amax = np.abs(x).max(axis=2)
    d = _to_fp16(amax / np.float32(qmax), what)
    d32 = d.astype(np.float32)[..., None]
    safe = np.where(d32 == 0, np.float32(1.0), d32)
    q = np.where(d32 == 0, np.float32(0.0), np.rint(x / safe))
    q = np.clip(q, -qmax, qmax).astype(np.int16).reshape(n, k)
    if fmt.per_channel:
        d = d.reshape(n)
    return q, d, None


def represented(q: np.ndarray, d: np.ndarray, m: np.ndarray | None, fmt: WeightFormat) -> np.ndarray:
    """Float32 weights the codes represent, evaluated as :func:`hcemu.layout.dequantize` does."""
    n, k = q.shape
    if fmt.per_channel:
        return q.astype(np.float32) * d.astype(np.float32)[:, None]
    g = fmt.group
    w = (q.reshape(n, k // g, g).astype(np.float32) * d.astype(np.float32)[..., None])
    if m is not None:
        w = w + m.astype(np.float32)[..., None]
    return w.reshape(n, k)


def quantize_matrix(w: np.ndarray, fmt: WeightFormat, what: str = "tensor",
                    tensor_scale: float | None = None) -> PackedWeights:
    """Quantize float rows and lay them into ROM tiles (block formats: :func:`hcemu.rom.blocks.quantize`;
    ``tensor_scale`` fixes NVFP4's tensor scale, which must be the whole matrix's when rows come in chunks)."""
    if fmt.block is not None:
        from hcemu.rom import blocks

        return blocks.to_packed(blocks.quantize(w, fmt.block.ggml_type, what, tensor_scale), fmt)
    q, d, m = quantize_codes(w, fmt, what)
    return pack(q, d, fmt, m)


# ---- lossless import of GGUF blocks


def lossless_import(ggml_type: str, fmt: WeightFormat) -> bool:
    """True when a GGUF block tensor of ``ggml_type`` maps onto ``fmt`` exactly (bit for bit).

    Q8_0 -> int8/G32. Q4_0 -> symmetric int4/G32 (q = nibble - 8), asymmetric int4/G32 (code = nibble,
    m = -8 d, exact in fp16 and in the float32 evaluation; the only difference from gguf's ``d * (n - 8)``
    is the sign of a zero weight when d < 0: +0.0 here, -0.0 there) and int8/G32 (q = nibble - 8).
    Q4_1 -> asymmetric int4/G32. A block format (k-quants, Q5_0/Q5_1, MXFP4, NVFP4) imports its own
    type only (:mod:`hcemu.rom.blocks`).
    """
    if fmt.block is not None or ggml_type not in GGUF_BLOCK_BYTES:
        return fmt.block is not None and fmt.block.ggml_type == ggml_type
    if fmt.group != GGUF_BLOCK:
        return False
    if ggml_type == "Q8_0":
        return fmt.bits == 8
    if ggml_type == "Q4_0":
        return True
    if ggml_type == "Q4_1":
        return fmt.bits == 4 and fmt.asymmetric
    return False


def _blocks(data: np.ndarray, ggml_type: str, k: int, what: str) -> np.ndarray:
    if ggml_type not in GGUF_BLOCK_BYTES:
        raise ValueError(f"{what}: unknown block type {ggml_type!r}; known: {', '.join(GGUF_BLOCK_BYTES)}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise TypeError(f"{what}: {ggml_type} blocks must be uint8 (n, bytes_per_row), got {data.dtype} {data.shape}")
    if k % GGUF_BLOCK:
        raise ValueError(f"{what}: K={k} is not a multiple of the {GGUF_BLOCK}-element GGUF block")
    bpb = GGUF_BLOCK_BYTES[ggml_type]
    nb = k // GGUF_BLOCK
    if data.shape[1] != nb * bpb:
        raise ValueError(f"{what}: {ggml_type} row of {k} elements needs {nb * bpb} bytes, got {data.shape[1]}")
    return np.ascontiguousarray(data).reshape(data.shape[0], nb, bpb)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, nb, 16) bytes -> (n, nb, 32) codes: element j = low nibble of byte j, j + 16 = high nibble."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=2)


def import_blocks(data: np.ndarray, ggml_type: str, k: int, fmt: WeightFormat, what: str = "tensor") -> PackedWeights:
    """Pack GGUF blocks (uint8 (n, bytes_per_row)) into ``fmt`` without loss (see :func:`lossless_import`)."""
    if not lossless_import(ggml_type, fmt):
        raise ValueError(f"{what}: {ggml_type} cannot be imported into {fmt.name} without loss")
    if fmt.block is not None:
        from hcemu.rom import blocks

        return blocks.to_packed(blocks.decode(data, ggml_type, k, what), fmt)
    b = _blocks(data, ggml_type, k, what)
    n, nb, _ = b.shape
    d = b[..., 0:2].copy().view(np.float16).reshape(n, nb)
    if ggml_type == "Q8_0":
        q = b[..., 2:].copy().view(np.int8).reshape(n, k)
        return pack(q, d, fmt)
    if ggml_type == "Q4_1":
        m = b[..., 2:4].copy().view(np.float16).reshape(n, nb)
        return pack(_nibbles(b[..., 4:]).reshape(n, k), d, fmt, m)
    u = _nibbles(b[..., 2:]).reshape(n, k)  # Q4_0
    if fmt.asymmetric:
        with np.errstate(over="ignore"):
            m = d * np.float16(-8.0)
        if not np.isfinite(m).all():
            raise ValueError(f"{what}: Q4_0 offset -8*d overflows fp16")
        return pack(u, d, fmt, m)
    return pack(u.astype(np.int16) - 8, d, fmt)


def q4_0_offset_fits(data: np.ndarray, k: int) -> bool:
    """Whether every Q4_0 block's -8*d is finite in fp16 (needed to import Q4_0 as asymmetric int4)."""
    b = _blocks(data, "Q4_0", k, "Q4_0 tensor")
    d = b[..., 0:2].copy().view(np.float16)
    with np.errstate(over="ignore"):
        return bool(np.isfinite(d * np.float16(-8.0)).all())


# ---- error statistics


class ErrorStats:
    """Accumulates the quantization error of a tensor (or of all tensors) against its source floats."""

    def __init__(self):
        self.count = 0
        self.sum_sq_err = 0.0
        self.sum_sq_ref = 0.0
        self.max_abs = 0.0
        self.exact = True

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        e = (got.astype(np.float64, copy=False) - ref.astype(np.float64, copy=False))
        self.count += ref.size
        self.sum_sq_err += float(np.dot(e.ravel(), e.ravel()))
        self.sum_sq_ref += float(np.dot(ref.ravel().astype(np.float64), ref.ravel().astype(np.float64)))
        if e.size:
            self.max_abs = max(self.max_abs, float(np.abs(e).max()))
        if self.sum_sq_err:
            self.exact = False

    def add_exact(self, count: int, sum_sq_ref: float) -> None:
        """Record ``count`` weights imported without loss (error exactly zero)."""
        self.count += count
        self.sum_sq_ref += sum_sq_ref

    def merge(self, other: "ErrorStats") -> None:
        self.count += other.count
        self.sum_sq_err += other.sum_sq_err
        self.sum_sq_ref += other.sum_sq_ref
        self.max_abs = max(self.max_abs, other.max_abs)
        self.exact = self.exact and other.exact

    def to_dict(self) -> dict:
        """``rmse``, ``max_abs``, ``sqnr_db`` (None when exact: infinite), ``exact``, ``count``."""
        rmse = math.sqrt(self.sum_sq_err / self.count) if self.count else 0.0
        if self.sum_sq_err == 0 or self.sum_sq_ref == 0:
            sqnr = None  # infinite (exact) or undefined (all-zero source)
        else:
            sqnr = 10.0 * math.log10(self.sum_sq_ref / self.sum_sq_err)
        return {"count": self.count, "rmse": rmse, "max_abs": self.max_abs, "sqnr_db": sqnr,
                "exact": bool(self.exact and self.sum_sq_err == 0), "sum_sq_err": self.sum_sq_err,
                "sum_sq_ref": self.sum_sq_ref}

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorStats":
        s = cls()
        s.count, s.sum_sq_err, s.sum_sq_ref = d["count"], d["sum_sq_err"], d["sum_sq_ref"]
        s.max_abs, s.exact = d["max_abs"], d["exact"]
        return s
