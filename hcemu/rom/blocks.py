"""GGUF block formats <-> ROM fields: k-quants (Q2_K..Q6_K), Q5_0/Q5_1, MXFP4, NVFP4.

:func:`decode` splits GGUF blocks (uint8 ``(n, bytes_per_row)``) into the fields the ROM holds
(:func:`hcemu.layout.pack_block`): stored codes, scales, integer sub-scales and sub-mins, offsets.
:func:`encode` is its inverse (bit for bit), :func:`quantize` turns float32 rows into fields (the
rules are in ``docs/numerics.md`` "Block formats"). The bit layouts follow GGUF (``gguf.quants``);
``tests/test_blocks.py`` holds decode/encode to ``gguf.quants.dequantize`` and back on random blocks.

A field set is a dict: ``codes`` uint8 (n, k); ``d`` (n, units) fp16 super-scales, or uint8 e8m0 /
ue4m3 scale bytes for MXFP4 / NVFP4; ``sc`` int16 (n, k // sub_k) sub-scales; ``mn`` int16 sub-mins;
``o`` fp16 dmin (per super-block) or m (Q5_1, per block); ``tensor_scale`` float (NVFP4).
"""
from __future__ import annotations

import numpy as np

from hcemu.formats import FP4_VALUES, KIND_BY_GGML, BlockKind, WeightFormat
from hcemu.layout import PackedWeights, dequantize_block_fields, pack_block

BLOCK_BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210, "Q5_0": 22, "Q5_1": 24,
               "MXFP4": 17, "NVFP4": 36}
"""Bytes per GGUF block (``BlockKind.super_k`` weights) of each type."""


class CorruptBlockError(ValueError):
    """A GGUF block holds a value no writer produces: a NaN/inf scale, an undefined scale byte."""


def kind_of(ggml_type: str) -> BlockKind:
    try:
        return KIND_BY_GGML[ggml_type]
    except KeyError:
        raise ValueError(f"{ggml_type!r} is not a block format; known: {', '.join(KIND_BY_GGML)}") from None


def _f16(b: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 -> (...) float16."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0]


def _f16_bytes(h: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(h, np.float16)[..., None]).view(np.uint8)


def _bits(b: np.ndarray, shifts, mask) -> np.ndarray:
    """(..., L) bytes -> (..., len(shifts), L): (b >> s) & mask."""
    return (b[..., None, :] >> np.asarray(shifts, np.uint8)[:, None]) & np.uint8(mask)


def _join(parts: np.ndarray, shifts) -> np.ndarray:
    """Inverse of :func:`_bits`: (..., len(shifts), L) -> (..., L) bytes."""
    out = np.zeros(parts.shape[:-2] + parts.shape[-1:], np.uint8)
    for i, s in enumerate(shifts):
        out |= (parts[..., i, :].astype(np.uint8) << np.uint8(s)).astype(np.uint8)
    return out


def _scale_min_k4(s: np.ndarray):
    """Q4_K/Q5_K 12 packed bytes -> 8 6-bit scales and 8 6-bit mins (gguf ``get_scale_min``)."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([d & 63, (md & 15) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 63, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _pack_scale_min_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    d = (sc[..., 0:4] & 63) | ((sc[..., 4:8] & 0x30) << 2)
    m = (mn[..., 0:4] & 63) | ((mn[..., 4:8] & 0x30) << 2)
    md = (sc[..., 4:8] & 15) | ((mn[..., 4:8] & 15) << 4)
    return np.concatenate([d, m, md], axis=-1).astype(np.uint8)


def _ql2(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K 64 bytes of 2-bit codes -> 256: element 128h + 32s + j = (qs[32h + j] >> 2s) & 3."""
    return _bits(qs.reshape(qs.shape[:-1] + (2, 32)), (0, 2, 4, 6), 3).reshape(qs.shape[:-1] + (256,))


def _pack_ql2(q: np.ndarray) -> np.ndarray:
    return _join((q & 3).reshape(q.shape[:-1] + (2, 4, 32)), (0, 2, 4, 6)).reshape(q.shape[:-1] + (64,))


def _nib32(qs: np.ndarray, chunks: int) -> np.ndarray:
    """``chunks`` x 32 bytes -> 64 * chunks nibbles: element 64c + 32s + j = (qs[32c + j] >> 4s) & 15."""
    return _bits(qs.reshape(qs.shape[:-1] + (chunks, 32)), (0, 4), 15).reshape(qs.shape[:-1] + (64 * chunks,))


def _pack_nib32(q: np.ndarray, chunks: int) -> np.ndarray:
    return _join((q & 15).reshape(q.shape[:-1] + (chunks, 2, 32)), (0, 4)).reshape(q.shape[:-1] + (32 * chunks,))


def _hbits(qh: np.ndarray, nbits: int = 8) -> np.ndarray:
    """32 bytes of high bits -> 256: element 32i + j = (qh[j] >> i) & 1."""
    return _bits(qh, range(nbits), 1).reshape(qh.shape[:-1] + (32 * nbits,))


def _pack_hbits(h: np.ndarray) -> np.ndarray:
    return _join((h & 1).reshape(h.shape[:-1] + (8, 32)), range(8))


def _legacy_codes(qh4: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: uint32 LE high bits + 16 bytes of nibbles -> 32 5-bit codes."""
    ql = np.concatenate([qs & 15, qs >> 4], axis=-1)
    h = np.ascontiguousarray(qh4).view(np.uint32)
    hb = ((h >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    return ql | (hb << 4)


def _pack_legacy(q: np.ndarray):
    q = q.astype(np.uint8)
    qs = (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)
    h = ((q >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
    return np.ascontiguousarray(h[..., None]).view(np.uint8), qs


def _nib16(qs: np.ndarray) -> np.ndarray:
    """MXFP4: 16 bytes -> 32 nibbles, j < 16 low nibble of byte j, j >= 16 high nibble of byte j - 16."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def decode(data: np.ndarray, ggml_type: str, k: int, what: str = "tensor") -> dict:
    """GGUF blocks uint8 ``(n, bytes_per_row)`` of rows of ``k`` weights -> ROM fields (module doc).

    Raises ValueError for a wrong byte count and :class:`CorruptBlockError` for a NaN/inf scale or an
    undefined scale byte (MXFP4 e8m0 0xFF; NVFP4 ue4m3 with bit 7 set or 0x7F), naming row and block.
    """
    bk = kind_of(ggml_type)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2:
        raise TypeError(f"{what}: {ggml_type} blocks must be uint8 (n, bytes_per_row), got {data.dtype} {data.shape}")
    if k % bk.super_k:
        raise ValueError(f"{what}: K={k} is not a multiple of the {bk.super_k}-weight {ggml_type} block")
    nsb, bpb = k // bk.super_k, BLOCK_BYTES[ggml_type]
    if data.shape[1] != nsb * bpb:
        raise ValueError(f"{what}: a {ggml_type} row of {k} weights needs {nsb * bpb} bytes, got {data.shape[1]} "
                         "(truncated or corrupt)")
    n = data.shape[0]
    b = np.ascontiguousarray(data).reshape(n, nsb, bpb)
    f = {"sc": None, "mn": None, "o": None, "tensor_scale": 1.0}
    t = ggml_type
    if t == "Q2_K":
        s = b[..., 0:16]
        f["codes"] = _ql2(b[..., 16:80])
        f["d"], f["o"] = _f16(b[..., 80:82]), _f16(b[..., 82:84])
        f["sc"], f["mn"] = s & 15, s >> 4
    elif t == "Q3_K":
        hm, qs, s = b[..., 0:32], b[..., 32:96], b[..., 96:108]
        f["codes"] = _ql2(qs) | (_hbits(hm) << 2)
        lo = _bits(s[..., 0:8], (0, 4), 15).reshape(n, nsb, 16)
        hi = _bits(s[..., 8:12], (0, 2, 4, 6), 3).reshape(n, nsb, 16)
        f["sc"] = (lo | (hi << 4)).astype(np.int16) - 32
        f["d"] = _f16(b[..., 108:110])
    elif t in ("Q4_K", "Q5_K"):
        f["d"], f["o"] = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        f["sc"], f["mn"] = _scale_min_k4(b[..., 4:16])
        if t == "Q4_K":
            f["codes"] = _nib32(b[..., 16:144], 4)
        else:
            f["codes"] = _nib32(b[..., 48:176], 4) | (_hbits(b[..., 16:48]) << 4)
    elif t == "Q6_K":
        ql = _bits(b[..., 0:128].reshape(n, nsb, 2, 64), (0, 4), 15).reshape(n, nsb, 256)
        qh = _bits(b[..., 128:192].reshape(n, nsb, 2, 32), (0, 2, 4, 6), 3).reshape(n, nsb, 256)
        f["codes"] = ql | (qh << 4)
        f["sc"] = b[..., 192:208].view(np.int8).astype(np.int16)
        f["d"] = _f16(b[..., 208:210])
    elif t == "Q5_0":
        f["d"] = _f16(b[..., 0:2])
        f["codes"] = _legacy_codes(b[..., 2:6], b[..., 6:22])
    elif t == "Q5_1":
        f["d"], f["o"] = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        f["codes"] = _legacy_codes(b[..., 4:8], b[..., 8:24])
    elif t == "MXFP4":
        f["d"] = b[..., 0].copy()
        f["codes"] = _nib16(b[..., 1:17])
    elif t == "NVFP4":
        f["d"] = b[..., 0:4].copy()
        qs = b[..., 4:36].reshape(n, nsb, 4, 8)
        f["codes"] = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(n, nsb, 64)
    f["codes"] = np.ascontiguousarray(f["codes"]).reshape(n, k).astype(np.uint8)
    f["d"] = np.ascontiguousarray(f["d"]).reshape(n, -1)
    for key in ("sc", "mn"):
        if f[key] is not None:
            f[key] = np.ascontiguousarray(f[key]).reshape(n, -1).astype(np.int16)
    if f["o"] is not None:
        f["o"] = np.ascontiguousarray(f["o"]).reshape(n, -1)
    check_fields(f, bk, what)
    return f


def check_fields(f: dict, bk: BlockKind, what: str = "tensor") -> None:
    """Raise :class:`CorruptBlockError` for scales no writer produces (NaN/inf; undefined bytes)."""
    per = {"f16": bk.super_k, "e8m0": 32, "ue4m3": bk.sub_k}[bk.scale]

    def fail(arr_bad, label):
        r, u = np.argwhere(arr_bad)[0]
        raise CorruptBlockError(f"{what}: corrupt {bk.ggml_type} block at row {r}, weights {u * per}..{u * per + per - 1}: "
                                f"{label}")

    d = f["d"]
    if bk.scale == "f16":
        bad = ~np.isfinite(d)
        if bad.any():
            fail(bad, f"scale d is {d[tuple(np.argwhere(bad)[0])]}")
    elif bk.scale == "e8m0":
        bad = d == 0xFF
        if bad.any():
            fail(bad, "e8m0 scale byte 0xFF (NaN)")
        vmax = np.abs(np.asarray(FP4_VALUES, np.float64)[f["codes"].reshape(d.shape + (32,))]).max(axis=-1)
        bad = vmax * np.exp2(d.astype(np.float64) - 128.0) > float(np.finfo(np.float32).max)
        if bad.any():
            fail(bad, f"e8m0 scale 2^{int(d[tuple(np.argwhere(bad)[0])]) - 128} overflows float32 weights")
    else:
        bad = (d & 0x80) != 0
        if bad.any():
            fail(bad, f"ue4m3 scale byte 0x{int(d[tuple(np.argwhere(bad)[0])]):02X} has bit 7 set")
        bad = d == 0x7F
        if bad.any():
            fail(bad, "ue4m3 scale byte 0x7F (NaN)")
    if f["o"] is not None:
        o = f["o"]
        bad = ~np.isfinite(o)
        if bad.any():
            per = bk.super_k if bk.offset == "dmin" else 32
            fail(bad, f"{'dmin' if bk.offset == 'dmin' else 'min'} is {o[tuple(np.argwhere(bad)[0])]}")
    lo, hi = bk.code_range
    c = f["codes"]
    if c.size and (c.min() < lo or c.max() > hi):
        raise CorruptBlockError(f"{what}: {bk.ggml_type} code out of range [{lo}, {hi}]")


def encode(f: dict, ggml_type: str) -> np.ndarray:
    """ROM fields -> GGUF blocks uint8 (n, bytes_per_row): the inverse of :func:`decode`."""
    bk = kind_of(ggml_type)
    c = np.asarray(f["codes"]).astype(np.uint8)
    n, k = c.shape
    nsb = k // bk.super_k
    c = c.reshape(n, nsb, bk.super_k)
    t = ggml_type

    def per_sb(a, width):
        return np.asarray(a).reshape(n, nsb, width)

    if t == "Q2_K":
        sc, mn = per_sb(f["sc"], 16).astype(np.uint8), per_sb(f["mn"], 16).astype(np.uint8)
        parts = [(sc & 15) | (mn << 4), _pack_ql2(c), _f16_bytes(per_sb(f["d"], 1)[..., 0]),
                 _f16_bytes(per_sb(f["o"], 1)[..., 0])]
    elif t == "Q3_K":
        sc = (per_sb(f["sc"], 16).astype(np.int16) + 32).astype(np.uint8)
        lo = _join((sc & 15).reshape(n, nsb, 2, 8), (0, 4))
        hi = _join((sc >> 4).reshape(n, nsb, 4, 4), (0, 2, 4, 6))
        parts = [_pack_hbits(c >> 2), _pack_ql2(c), lo, hi, _f16_bytes(per_sb(f["d"], 1)[..., 0])]
    elif t in ("Q4_K", "Q5_K"):
        head = [_f16_bytes(per_sb(f["d"], 1)[..., 0]), _f16_bytes(per_sb(f["o"], 1)[..., 0]),
                _pack_scale_min_k4(per_sb(f["sc"], 8), per_sb(f["mn"], 8))]
        if t == "Q4_K":
            parts = head + [_pack_nib32(c, 4)]
        else:
            parts = head + [_pack_hbits(c >> 4), _pack_nib32(c, 4)]
    elif t == "Q6_K":
        ql = _join((c & 15).reshape(n, nsb, 2, 2, 64), (0, 4)).reshape(n, nsb, 128)
        qh = _join((c >> 4).reshape(n, nsb, 2, 4, 32), (0, 2, 4, 6)).reshape(n, nsb, 64)
        sc = per_sb(f["sc"], 16).astype(np.int8).view(np.uint8)
        parts = [ql, qh, sc, _f16_bytes(per_sb(f["d"], 1)[..., 0])]
    elif t in ("Q5_0", "Q5_1"):
        qh, qs = _pack_legacy(c)
        head = [_f16_bytes(per_sb(f["d"], 1)[..., 0])]
        if t == "Q5_1":
            head.append(_f16_bytes(per_sb(f["o"], 1)[..., 0]))
        parts = head + [qh, qs]
    elif t == "MXFP4":
        parts = [per_sb(f["d"], 1).astype(np.uint8), (c[..., :16] & 15) | (c[..., 16:] << 4)]
    elif t == "NVFP4":
        q = c.reshape(n, nsb, 4, 16)
        parts = [per_sb(f["d"], 4).astype(np.uint8), ((q[..., :8] & 15) | (q[..., 8:] << 4)).reshape(n, nsb, 32)]
    else:  # pragma: no cover - kind_of rejected it
        raise ValueError(ggml_type)
    out = np.concatenate([np.asarray(p, np.uint8) for p in parts], axis=-1)
    assert out.shape[-1] == BLOCK_BYTES[t], (t, out.shape)
    return np.ascontiguousarray(out.reshape(n, nsb * BLOCK_BYTES[t]))


def to_packed(f: dict, fmt: WeightFormat) -> PackedWeights:
    """Fields -> ROM tiles of ``fmt`` (``fmt.block`` the fields' kind)."""
    return pack_block(f["codes"], fmt, f["d"], f["sc"], f["mn"], f["o"], f.get("tensor_scale", 1.0))


def dequantize_fields(f: dict, ggml_type: str) -> np.ndarray:
    """Float32 weights of fields (equal to ``gguf.quants.dequantize`` of :func:`encode` of them)."""
    return dequantize_block_fields(f, WeightFormat.of_kind(kind_of(ggml_type).name))


# ---- float32 -> fields (the compiler's quantize-to rules; docs/numerics.md)


def _f16_checked(x: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = np.asarray(x, np.float32).astype(np.float16)
    if not np.isfinite(h).all():
        raise ValueError(f"{what}: a scale exceeds the fp16 range")
    return h


def _safe_div(x, d):
    d = np.asarray(d, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, np.float32(0), x / np.where(d == 0, np.float32(1), d)).astype(np.float32)


def _kquant_minmax(x: np.ndarray, bk: BlockKind, nmax: int, what: str) -> dict:
    """Q2_K / Q4_K / Q5_K: per sub-block ``lo = min(min x, 0)``, scale ``(max x - lo) / nmax``;
    d = fp16(max scale / smax), dmin = fp16(max(-lo) / smax), integer sub-scale and sub-min round to
    nearest; codes ``rint((x + dmin*mn) / (d*sc))`` clamped to [0, nmax]."""
    n, k = x.shape
    nsb, per = k // bk.super_k, bk.super_k // bk.sub_k
    xs = x.reshape(n, nsb, per, bk.sub_k)
    lo = np.minimum(xs.min(axis=3), 0)
    s = (xs.max(axis=3) - lo) / np.float32(nmax)
    smax = (1 << bk.sub_scale_bits) - 1
    d = _f16_checked(s.max(axis=2) / np.float32(smax), what)
    dmin = _f16_checked((-lo).max(axis=2) / np.float32(smax), what)
    sc = np.clip(np.rint(_safe_div(s, d.astype(np.float32)[..., None])), 0, smax)
    mn = np.clip(np.rint(_safe_div(-lo, dmin.astype(np.float32)[..., None])), 0, smax)
    dl = (d.astype(np.float32)[..., None] * sc.astype(np.float32))[..., None]
    ml = (dmin.astype(np.float32)[..., None] * mn.astype(np.float32))[..., None]
    q = np.clip(np.rint(_safe_div(xs + ml, dl)), 0, nmax)
    return {"codes": q.astype(np.uint8).reshape(n, k), "d": d, "o": dmin, "sc": sc.astype(np.int16).reshape(n, -1),
            "mn": mn.astype(np.int16).reshape(n, -1), "tensor_scale": 1.0}


def _kquant_sym(x: np.ndarray, bk: BlockKind, what: str) -> dict:
    """Q3_K / Q6_K: per sub-block the element of largest magnitude maps to the most negative value
    ``-2^(b-1)`` (scale ``-x_max / 2^(b-1)``, signed); d = fp16(max |scale| / smax), signed integer
    sub-scale rounds to nearest; codes ``rint(x / (d*sc))`` clamped, stored with the kind's bias."""
    n, k = x.shape
    nsb, per = k // bk.super_k, bk.super_k // bk.sub_k
    xs = x.reshape(n, nsb, per, bk.sub_k)
    half = 1 << (bk.code_bits - 1)
    i = np.abs(xs).argmax(axis=3)[..., None]
    s = -np.take_along_axis(xs, i, axis=3)[..., 0] / np.float32(half)
    smax = (1 << (bk.sub_scale_bits - 1)) - 1
    d = _f16_checked(np.abs(s).max(axis=2) / np.float32(smax), what)
    sc = np.clip(np.rint(_safe_div(s, d.astype(np.float32)[..., None])), -smax, smax)
    dl = (d.astype(np.float32)[..., None] * sc.astype(np.float32))[..., None]
    q = np.clip(np.rint(_safe_div(xs, dl)), -half, half - 1)
    return {"codes": (q + bk.bias).astype(np.uint8).reshape(n, k), "d": d, "o": None,
            "sc": sc.astype(np.int16).reshape(n, -1), "mn": None, "tensor_scale": 1.0}


def _nearest_fp4(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Index 0..15 of the e2m1 value (times ``s``) nearest to ``x`` (ties: the lower index)."""
    kv = np.asarray(FP4_VALUES, np.float32)
    err = np.abs(s[..., None] * kv - x[..., None])
    return err.argmin(axis=-1).astype(np.uint8)


def f32_to_ue4m3(x: np.ndarray) -> np.ndarray:
    """Non-negative float32 (the full e4m3 value) -> ue4m3 byte, round to nearest (half away from
    zero on the mantissa, as ggml_fp32_to_ue4m3), saturating at 448 (0x7E)."""
    import gguf.quants as gq

    return gq.NVFP4.fp32_to_ue4m3(np.asarray(x, np.float32)).astype(np.uint8)


def nvfp4_tensor_scale(amax: float) -> float:
    """NVFP4's tensor scale for a matrix whose largest magnitude is ``amax``: the power of two
    ``2^ceil(log2(amax / (448 * 6)))`` (1.0 for an all-zero matrix), so block scales use e4m3's range."""
    if not amax > 0:
        return 1.0
    return float(np.float32(2.0 ** np.ceil(np.log2(amax / (448.0 * 6.0)))))


def quantize(w: np.ndarray, ggml_type: str, what: str = "tensor", tensor_scale: float | None = None) -> dict:
    """Quantize float32 rows ``w`` (n, k) to the fields of ``ggml_type`` (docs/numerics.md).

    Q5_0, Q5_1 and MXFP4 use ``gguf.quants.quantize`` (llama.cpp's reference rules); the k-quants
    use :func:`_kquant_minmax` / :func:`_kquant_sym`; NVFP4 takes a power-of-two tensor scale
    :func:`nvfp4_tensor_scale` (or ``tensor_scale``) so the largest block scale lands near e4m3's
    top, block scale ``ue4m3(amax / 6 / g)`` per 16 and the nearest e2m1 code.
    """
    bk = kind_of(ggml_type)
    x = np.asarray(w, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (n, k) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: holds NaN or infinity")
    n, k = x.shape
    if k % bk.super_k:
        raise ValueError(f"{what}: K={k} is not a multiple of the {bk.super_k}-weight {ggml_type} block")
    if ggml_type in ("Q5_0", "Q5_1", "MXFP4"):
        import gguf

        blocks = gguf.quants.quantize(x, gguf.GGMLQuantizationType[ggml_type])
        return decode(np.ascontiguousarray(blocks).reshape(n, -1), ggml_type, k, what)
    if ggml_type == "Q2_K":
        return _kquant_minmax(x, bk, 3, what)
    if ggml_type in ("Q4_K", "Q5_K"):
        return _kquant_minmax(x, bk, (1 << bk.code_bits) - 1, what)
    if ggml_type in ("Q3_K", "Q6_K"):
        return _kquant_sym(x, bk, what)
    # NVFP4
    g = nvfp4_tensor_scale(float(np.abs(x).max()) if x.size else 0.0) if tensor_scale is None else float(tensor_scale)
    xs = x.reshape(n, k // 16, 16)
    amax = np.abs(xs).max(axis=2)
    sb = f32_to_ue4m3(amax / np.float32(6.0) / np.float32(g))
    from hcemu.layout import ue4m3_to_f32

    s = ue4m3_to_f32(sb) * np.float32(g)  # the value of one doubled e2m1 unit
    codes = _nearest_fp4(xs, s[..., None].repeat(16, axis=2))
    return {"codes": codes.reshape(n, k), "d": sb, "sc": None, "mn": None, "o": None, "tensor_scale": g}
