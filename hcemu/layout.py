"""The ROM tile layout of a weight matrix (numpy reference; the C kernels read exactly this).

A matrix ``W`` of ``n`` output rows by ``k`` inputs is cut into tiles of ``TILE_ROWS`` (16) rows by
``fmt.tile_k`` inputs. Tiles are stored row-tile major: tile ``(t, b)`` holds rows ``16t..16t+15`` and
inputs ``b*tile_k .. (b+1)*tile_k - 1``. Rows past ``n`` (and, for per-channel int8, inputs past ``k``)
are padding with code 0 and scale 0.

Inside a tile the bytes are ordered so that one 64-byte line feeds one CIM pass of 16 rows:

* int8: ``for kq in range(tile_k // 4): for r in range(16): for j in range(4): q[r, 4*kq + j]``
  (two's complement bytes).
* int4: ``for kq in range(tile_k // 8): for r in range(16): for j in range(4):``
  ``byte = u[r, 8*kq + j] | (u[r, 8*kq + 4 + j] << 4)`` — the low nibble holds input ``8kq+j``, the high
  nibble input ``8kq+4+j``. Symmetric int4 nibbles are two's complement (q in [-8, 7], sign bit = bit 3;
  sign-extend with ``((u ^ 8) - 8)``); asymmetric nibbles are unsigned codes in [0, 15].

Scales (and asymmetric offsets) are IEEE fp16, shaped ``(n_row_tiles, n_blocks, 16)`` for block formats
and ``(n_row_tiles, 16)`` for per-channel int8, so one tile's 16 scales are contiguous.

Block formats (k-quants, Q5_0/Q5_1, MXFP4, NVFP4: :data:`hcemu.formats.BLOCK_KINDS`) use tiles of 16
rows x 32 inputs; their codes (the GGUF codes, unsigned) sit in 4-bit (nibble) or 8-bit (byte) slots
as above. A block-format matrix is one stream of *records*, ``codes`` uint8 ``(n_row_tiles,
k // super_k, record_bytes)``: record ``(t, s)`` holds everything the kernels read for row tile ``t``
and super-block ``s``, in the order they read it (:func:`block_record`): its levels of scales, each
as ``(units per super-block, 16)`` values of its dtype (one tile row's 16 values contiguous, units
counted along the inputs), then the codes of the super-block's ``super_k // 32`` tiles of 16 x 32
(``tile_bytes`` each, the tile byte order above). The levels, in record order:

* ``scales``: fp16 ``d`` per super-block (1 unit); MXFP4: e8m0 bytes per block of 32; NVFP4: ue4m3
  bytes per sub-block of 16.
* ``offsets``: fp16 ``dmin`` per super-block (Q2_K, Q4_K, Q5_K) or fp16 ``m`` per block (Q5_1).
* ``subscales``: int8 integer sub-scales per sub-block (k-quants); ``submins``: uint8 sub-mins.

Records follow each other with no padding (a row tile's records are one contiguous run, so a one-token
product reads one stream per row tile rather than one per array). :func:`block_arrays` gives the levels
back as separate ``(n_row_tiles, units, 16)`` arrays. ``tensor_scale``: one float32 per matrix (NVFP4's
tensor scale; 1.0 for every other format).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import FP4_VALUES, TILE_ROWS, WeightFormat


@dataclass(frozen=True)
class PackedWeights:
    """A weight matrix in ROM layout. Arrays may be read-only views into a memory-mapped image."""

    fmt: WeightFormat
    n: int
    k: int
    codes: np.ndarray              # uint8 (n_row_tiles, n_blocks, tile_bytes); block kinds: the records
    scales: np.ndarray | None = None   # float16 (n_row_tiles, n_blocks, 16) or (n_row_tiles, 16); None for block kinds
    offsets: np.ndarray | None = None  # float16, like scales; asymmetric int4 only
    tensor_scale: float = 1.0            # NVFP4 only

    @property
    def n_row_tiles(self) -> int:
        return self.codes.shape[0]

    @property
    def n_blocks(self) -> int:
        """Tiles along the inputs (block kinds: blocks of 32, ``k // 32``)."""
        return self.k // 32 if self.fmt.block is not None else self.codes.shape[1]

    @property
    def k_padded(self) -> int:
        return self.n_blocks * self.fmt.tile_k

    @property
    def nbytes(self) -> int:
        """Bytes the kernels stream per pass: codes, scales and offsets (padding included)."""
        return sum(a.nbytes for a in (self.codes, self.scales, self.offsets)
                   if a is not None)


def tile_bytes(fmt: WeightFormat) -> int:
    return TILE_ROWS * fmt.tile_k * fmt.bits // 8


def layout_shape(fmt: WeightFormat, n: int, k: int) -> tuple[int, int]:
    """``(n_row_tiles, n_blocks)`` of an ``n x k`` matrix; raises ValueError for a k the format cannot hold."""
    if n < 1 or k < 1:
        raise ValueError(f"matrix must be at least 1x1, got {n}x{k}")
    if fmt.per_channel:
        n_blocks = -(-k // fmt.tile_k)
    else:
        if k % fmt.group:
            raise ValueError(f"group size {fmt.group} does not divide K={k}")
        n_blocks = k // fmt.group
    return -(-n // TILE_ROWS), n_blocks


def block_record(fmt: WeightFormat) -> list[tuple[str, np.dtype, int]]:
    """The parts of one record of a block format (module docstring), in record order:
    ``(name, dtype, count)``: the scale levels with ``count`` units of 16 values per super-block,
    then ``("codes", uint8, bytes)`` (the super-block's ``super_k // 32`` tiles)."""
    bk = fmt.block
    nsub = bk.super_k // bk.sub_k
    bps = bk.blocks_per_super
    out = [("scales", np.dtype(np.float16 if bk.scale == "f16" else np.uint8),
            {"f16": 1, "e8m0": bps, "ue4m3": nsub}[bk.scale])]
    if bk.offset != "none":
        out.append(("offsets", np.dtype(np.float16), 1 if bk.offset == "dmin" else bps))
    if bk.has_subscales:
        out.append(("subscales", np.dtype(np.int8), nsub))
    if bk.has_submins:
        out.append(("submins", np.dtype(np.uint8), nsub))
    out.append(("codes", np.dtype(np.uint8), bps * tile_bytes(fmt)))
    return out


def record_bytes(fmt: WeightFormat) -> int:
    """Bytes of one record (one row tile x one super-block) of a block format."""
    return sum(cnt if name == "codes" else cnt * TILE_ROWS * dt.itemsize for name, dt, cnt in block_record(fmt))


def packed_arrays(fmt: WeightFormat, n: int, k: int) -> dict:
    """``{name: (dtype, shape)}`` of the arrays of an ``n x k`` matrix in ``fmt``'s ROM layout (the
    module docstring): ``codes`` uint8 (n_row_tiles, n_blocks, tile_bytes); integer formats: ``scales``
    float16 (n_row_tiles, n_blocks, 16), or (n_row_tiles, 16) per channel, ``offsets`` like scales when
    asymmetric; block kinds: ``codes`` only, the records uint8 (n_row_tiles, k // super_k,
    :func:`record_bytes`). ValueError for a ``k`` the format cannot hold."""
    nt, nb = layout_shape(fmt, n, k)
    bk = fmt.block
    if bk is None:
        out = {"codes": (np.dtype(np.uint8), (nt, nb, tile_bytes(fmt)))}
        meta = (nt, TILE_ROWS) if fmt.per_channel else (nt, nb, TILE_ROWS)
        out["scales"] = (np.dtype(np.float16), meta)
        if fmt.asymmetric:
            out["offsets"] = (np.dtype(np.float16), meta)
        return out
    if k % bk.super_k:
        raise ValueError(f"{fmt.name}: K={k} is not a multiple of its {bk.super_k}-weight super-block")
    return {"codes": (np.dtype(np.uint8), (nt, k // bk.super_k, record_bytes(fmt)))}


def block_arrays(pw: PackedWeights) -> dict:
    """The parts of a block-format matrix's records as separate arrays (copies): ``codes`` uint8
    (n_row_tiles, k // 32, tile_bytes) and each scale level ``(n_row_tiles, units, 16)`` of its dtype
    (:func:`block_record`); levels the kind lacks are absent."""
    nt, nsup = pw.codes.shape[:2]
    out, pos = {}, 0
    for name, dt, cnt in block_record(pw.fmt):
        nbytes = cnt if name == "codes" else cnt * TILE_ROWS * dt.itemsize
        part = np.ascontiguousarray(pw.codes[:, :, pos:pos + nbytes])
        pos += nbytes
        if name == "codes":
            out[name] = part.reshape(nt, nsup * pw.fmt.block.blocks_per_super, tile_bytes(pw.fmt))
        else:
            out[name] = part.view(dt).reshape(nt, nsup * cnt, TILE_ROWS)
    return out


def lay_records(fmt: WeightFormat, parts: dict) -> np.ndarray:
    """The records (n_row_tiles, n_super, record_bytes) of a block format from its parts in the shapes
    :func:`block_arrays` returns (``codes`` (n_row_tiles, k // 32, tile_bytes), each level
    (n_row_tiles, units, 16) of its dtype); the inverse of :func:`block_arrays`."""
    codes = parts["codes"]
    nt, nsup = codes.shape[0], codes.shape[1] // fmt.block.blocks_per_super
    out = []
    for name, dt, _cnt in block_record(fmt):
        a = np.ascontiguousarray(parts[name])
        if a.dtype != dt:
            raise TypeError(f"{fmt.name}: {name} must be {dt.name}, got {a.dtype}")
        out.append(a.view(np.uint8).reshape(nt, nsup, -1))
    return np.ascontiguousarray(np.concatenate(out, axis=2))


def code_tiles(pw: PackedWeights) -> np.ndarray:
    """The codes of any format as uint8 (n_row_tiles, n_blocks, tile_bytes) (block kinds: out of the records)."""
    return block_arrays(pw)["codes"] if pw.fmt.block is not None else pw.codes


def _check_codes(q: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weight codes must be 2-D (n, k), got shape {q.shape}")
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"weight codes must be integers, got {q.dtype}")
    bk = fmt.block
    if bk is not None:
        lo, hi = bk.code_range
    else:
        lo, hi = (0, 15) if fmt.asymmetric else ((-8, 7) if fmt.bits == 4 else (-128, 127))
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"weight codes out of range [{lo}, {hi}] for {fmt.name}: "
                         f"min {q.min()}, max {q.max()}")
    return q.astype(np.int16)


def pack(q: np.ndarray, scales: np.ndarray, fmt: WeightFormat, offsets: np.ndarray | None = None) -> PackedWeights:
    """Lay integer codes ``q`` (n, k) and per-block ``scales`` into ROM tiles.

    scales: (n, k // group) for block formats, (n,) per channel; converted to fp16 (pass fp16 to keep
    them exact). offsets: like scales, required for asymmetric formats, forbidden otherwise.
    """
    q = _check_codes(q, fmt)
    n, k = q.shape
    nt, nb = layout_shape(fmt, n, k)
    tk = fmt.tile_k
    want = (n,) if fmt.per_channel else (n, k // fmt.group)
    if fmt.asymmetric != (offsets is not None):
        raise ValueError(f"offsets are {'required' if fmt.asymmetric else 'not allowed'} for {fmt.name}")

    def lay_meta(a, what):
        a = np.asarray(a)
        if a.shape != want:
            raise ValueError(f"{what} shape {a.shape} does not match {want} for a {n}x{k} {fmt.name} matrix")
        full = np.zeros((nt * TILE_ROWS,) + want[1:], np.float16)
        full[:n] = a.astype(np.float16)
        if fmt.per_channel:
            return np.ascontiguousarray(full.reshape(nt, TILE_ROWS))
        return np.ascontiguousarray(full.reshape(nt, TILE_ROWS, nb).transpose(0, 2, 1))

    full = np.zeros((nt * TILE_ROWS, nb * tk), np.int16)
    full[:n, :k] = q
    # (t, r, b, c) -> (t, b, r, c)
    tiles = full.reshape(nt, TILE_ROWS, nb, tk).transpose(0, 2, 1, 3)
    codes = _lay_codes(tiles, fmt, nt, nb)
    return PackedWeights(fmt, n, k, codes, lay_meta(scales, "scales"),
                         None if offsets is None else lay_meta(offsets, "offsets"))


def _lay_codes(tiles: np.ndarray, fmt: WeightFormat, nt: int, nb: int) -> np.ndarray:
    """(t, b, r, c) integer codes -> uint8 (nt, nb, tile_bytes) in the tile byte order."""
    tk = fmt.tile_k
    if fmt.bits == 8:
        # (t, b, r, kq, j) -> (t, b, kq, r, j)
        lay = tiles.reshape(nt, nb, TILE_ROWS, tk // 4, 4).transpose(0, 1, 3, 2, 4)
        codes = (lay & 0xFF).astype(np.uint8)
    else:
        u = tiles & 0xF  # two's complement nibble for symmetric, raw code for asymmetric
        u = u.reshape(nt, nb, TILE_ROWS, tk // 8, 2, 4)  # (.., r, kq, half, j)
        byte = u[..., 0, :] | (u[..., 1, :] << 4)         # (t, b, r, kq, j)
        codes = byte.transpose(0, 1, 3, 2, 4).astype(np.uint8)
    return np.ascontiguousarray(codes.reshape(nt, nb, tile_bytes(fmt)))


def lay_units(a: np.ndarray, n: int, dtype) -> np.ndarray:
    """Per-row metadata ``a`` (n, units) -> ``(n_row_tiles, units, 16)`` of ``dtype``, padding rows 0."""
    a = np.asarray(a)
    nt = -(-n // TILE_ROWS)
    full = np.zeros((nt * TILE_ROWS, a.shape[1]), dtype)
    full[:n] = a
    return np.ascontiguousarray(full.reshape(nt, TILE_ROWS, a.shape[1]).transpose(0, 2, 1))


def unlay_units(a: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`lay_units`: (n, units)."""
    return a.transpose(0, 2, 1).reshape(-1, a.shape[1])[:n].copy()


# ---- block formats (k-quants, Q5_0/Q5_1, MXFP4, NVFP4)


def e8m0_to_f32(e: np.ndarray) -> np.ndarray:
    """MXFP4 scale bytes -> float32 ``2**(e - 128)`` (GGUF's half scale; e = 0, 1 subnormal), exact."""
    e = np.asarray(e, np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23)).astype(np.uint32)
    return bits.view(np.float32)


def ue4m3_to_f32(x: np.ndarray) -> np.ndarray:
    """NVFP4 scale bytes (unsigned e4m3, bias 7) -> float32 half their value (GGUF's convention), exact.

    ``0x00`` and ``0x7F`` give 0 (as GGUF); bytes with bit 7 set are not scales (the compiler rejects them).
    """
    x = np.asarray(x, np.uint8)
    e = ((x >> 3) & 0xF).astype(np.int32)
    m = (x & 7).astype(np.int32)
    # normal (1 + m/8) 2^(e-7) / 2 = (8 + m) 2^(e-11); subnormal m 2^-9 / 2 = m 2^-10
    sig = np.where(e == 0, m, 8 + m).astype(np.float32)
    ex = np.where(e == 0, -10, e - 11)
    v = np.ldexp(sig, ex).astype(np.float32)
    return np.where((x & 0x7F) == 0x7F, np.float32(0), v).astype(np.float32)


def block_values(raw: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """Integer values ``v`` (int16) of the stored codes of a block format (docs/numerics.md)."""
    bk = fmt.block
    raw = np.asarray(raw)
    if bk.float_codes:
        return np.asarray(FP4_VALUES, np.int16)[raw.astype(np.intp)]
    return raw.astype(np.int16) - np.int16(bk.bias)


def block_scale_f32(pw_or_scales, fmt: WeightFormat) -> np.ndarray:
    """The float32 values of a block format's ``scales`` units (fp16, e8m0 or ue4m3), exact."""
    a = block_arrays(pw_or_scales)["scales"] if isinstance(pw_or_scales, PackedWeights) else pw_or_scales
    sk = fmt.block.scale
    if sk == "f16":
        return np.asarray(a).astype(np.float32)
    return e8m0_to_f32(a) if sk == "e8m0" else ue4m3_to_f32(a)


def pack_block(codes: np.ndarray, fmt: WeightFormat, d: np.ndarray, sc=None, mn=None, o=None,
               tensor_scale: float = 1.0) -> PackedWeights:
    """Lay a block-format matrix into ROM tiles.

    codes: stored codes (n, k) in ``BlockKind.code_range``. d: (n, units) of the ``scales`` array
    (fp16, or uint8 scale bytes for the FP4 kinds). sc / mn: integer sub-scales / sub-mins
    (n, k // sub_k) where the kind has them. o: fp16 dmin (n, k // super_k) or m (n, k // 32).
    """
    bk = fmt.block
    q = _check_codes(codes, fmt)
    n, k = q.shape
    if k % bk.super_k:
        raise ValueError(f"{fmt.name}: K={k} is not a multiple of its {bk.super_k}-weight super-block")
    nt, nb = layout_shape(fmt, n, k)
    nsub = k // bk.sub_k
    units = {"f16": k // bk.super_k, "e8m0": k // 32, "ue4m3": k // bk.sub_k}[bk.scale]
    sdt = np.float16 if bk.scale == "f16" else np.uint8

    def want(a, shape, what, dtype):
        if a is None:
            raise ValueError(f"{fmt.name}: {what} is required")
        a = np.asarray(a)
        if a.shape != shape:
            raise ValueError(f"{fmt.name}: {what} shape {a.shape} does not match {shape} for a {n}x{k} matrix")
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"{fmt.name}: {what} out of the {np.dtype(dtype).name} range")
        return lay_units(a.astype(dtype), n, dtype)

    full = np.zeros((nt * TILE_ROWS, nb * 32), np.int16)
    full[:n, :k] = q
    codes_l = _lay_codes(full.reshape(nt, TILE_ROWS, nb, 32).transpose(0, 2, 1, 3), fmt, nt, nb)
    parts = {"scales": want(d, (n, units), "scales", sdt),
             "subscales": want(sc, (n, nsub), "sub-scales", np.int8) if bk.has_subscales else None,
             "submins": want(mn, (n, nsub), "sub-mins", np.uint8) if bk.has_submins else None,
             "offsets": None}
    if bk.offset != "none":
        parts["offsets"] = want(o, (n, k // (bk.super_k if bk.offset == "dmin" else 32)), "offsets", np.float16)
    for what, a, part in (("sub-scales", sc, "subscales"), ("sub-mins", mn, "submins"), ("offsets", o, "offsets")):
        if a is not None and parts[part] is None:
            raise ValueError(f"{fmt.name} has no {what}")
    ts = float(np.float32(tensor_scale))
    if ts != 1.0 and bk.name != "nvfp4":
        raise ValueError(f"{fmt.name}: only NVFP4 has a tensor scale")
    if not np.isfinite(ts) or ts <= 0:
        raise ValueError(f"{fmt.name}: tensor scale must be finite and positive, got {tensor_scale}")
    parts["codes"] = codes_l
    return PackedWeights(fmt, n, k, lay_records(fmt, parts), tensor_scale=ts)


def block_fields(pw: PackedWeights) -> dict:
    """The matrix-order fields of a block-format matrix: ``codes`` (n, k) raw, ``d`` (scales units),
    ``sc``, ``mn``, ``o`` (None where the kind has none) and ``tensor_scale``."""
    a = block_arrays(pw)
    un = lambda name: unlay_units(a[name], pw.n) if name in a else None  # noqa: E731
    return {"codes": unpack_codes(pw), "d": un("scales"), "sc": un("subscales"), "mn": un("submins"),
            "o": un("offsets"), "tensor_scale": pw.tensor_scale}


def dequantize_block_fields(f: dict, fmt: WeightFormat) -> np.ndarray:
    """Float32 weights (n, k) of block-format fields, evaluated as GGUF's ``dequantize`` does (equal
    to it element for element for imported tensors): ``fl(fl(d * sc) * v)``, then ``- fl(dmin * mn)``
    or ``+ m``; FP4 ``fl(s * v)`` (times the tensor scale, when it is not 1)."""
    bk = fmt.block
    v = block_values(f["codes"], fmt).astype(np.float32)
    n, k = v.shape
    d = block_scale_f32(f["d"], fmt)
    per_scale = k // d.shape[1]
    if bk.has_subscales:
        dl = np.repeat(d, per_scale // bk.sub_k, axis=1) * f["sc"].astype(np.float32)
        w = (dl[:, :, None] * v.reshape(n, -1, bk.sub_k)).reshape(n, k)
    else:
        w = (d[:, :, None] * v.reshape(n, -1, per_scale)).reshape(n, k)
    if bk.offset == "dmin":
        ml = np.repeat(f["o"].astype(np.float32), bk.super_k // bk.sub_k, axis=1) * f["mn"].astype(np.float32)
        w = (w.reshape(n, -1, bk.sub_k) - ml[:, :, None]).reshape(n, k)
    elif bk.offset == "min":
        w = (w.reshape(n, -1, 32) + f["o"].astype(np.float32)[:, :, None]).reshape(n, k)
    if f["tensor_scale"] != 1.0:
        w = w * np.float32(f["tensor_scale"])
    return w


def unpack_codes(pw: PackedWeights) -> np.ndarray:
    """Integer codes (n, k) as int16: signed values for symmetric formats, [0, 15] for asymmetric,
    the stored (unsigned) codes for block formats."""
    fmt, nt, nb, tk = pw.fmt, pw.n_row_tiles, pw.n_blocks, pw.fmt.tile_k
    codes = code_tiles(pw)
    if fmt.bits == 8:
        lay = codes.view(np.uint8 if fmt.block is not None else np.int8).reshape(nt, nb, tk // 4, TILE_ROWS, 4).astype(np.int16)
        tiles = lay.transpose(0, 1, 3, 2, 4).reshape(nt, nb, TILE_ROWS, tk)
    else:
        b = codes.reshape(nt, nb, tk // 8, TILE_ROWS, 4).astype(np.int16)
        u = np.stack([b & 0xF, b >> 4], axis=3)          # (t, b, kq, half, r, j)
        u = u.transpose(0, 1, 4, 2, 3, 5).reshape(nt, nb, TILE_ROWS, tk)
        tiles = u if (fmt.asymmetric or fmt.block is not None) else ((u ^ 8) - 8)
    full = tiles.transpose(0, 2, 1, 3).reshape(nt * TILE_ROWS, nb * tk)
    return np.ascontiguousarray(full[:pw.n, :pw.k])


def unpack_meta(pw: PackedWeights, which: str = "scales") -> np.ndarray:
    """Scales or offsets back in matrix order: (n, n_blocks) or (n,) per channel, float16."""
    a = pw.scales if which == "scales" else pw.offsets
    if a is None:
        raise ValueError(f"{pw.fmt.name} has no {which}")
    if pw.fmt.per_channel:
        return a.reshape(-1)[:pw.n].copy()
    return a.transpose(0, 2, 1).reshape(-1, pw.n_blocks)[:pw.n].copy()


def dequantize(pw: PackedWeights) -> np.ndarray:
    """Float32 weights (n, k) the silicon represents: ``q*d`` or ``q*d + m`` evaluated in float32
    (block formats: :func:`dequantize_block_fields`)."""
    if pw.fmt.block is not None:
        return dequantize_block_fields(block_fields(pw), pw.fmt)
    q = unpack_codes(pw).astype(np.float32)
    d = unpack_meta(pw, "scales").astype(np.float32)
    if pw.fmt.per_channel:
        return q * d[:, None]
    d = np.repeat(d, pw.fmt.group, axis=1)
    w = q * d
    if pw.fmt.asymmetric:
        w = w + np.repeat(unpack_meta(pw, "offsets").astype(np.float32), pw.fmt.group, axis=1)
    return w


def dequantize_rows(pw: PackedWeights, rows) -> np.ndarray:
    """Float32 weights of selected rows (len(rows), k), reading only their tiles (embedding lookup)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= pw.n):
        raise IndexError(f"row index out of range 0..{pw.n - 1}: {rows.min()}..{rows.max()}")
    if pw.fmt.block is not None:
        return _block_rows(pw, rows)
    fmt, nb, tk = pw.fmt, pw.n_blocks, pw.fmt.tile_k
    out = np.empty((rows.size, pw.k), np.float32)
    for i, row in enumerate(rows):
        t, r = divmod(int(row), TILE_ROWS)
        tiles = pw.codes[t]  # (nb, tile_bytes)
        if fmt.bits == 8:
            q = tiles.view(np.int8).reshape(nb, tk // 4, TILE_ROWS, 4)[:, :, r, :].reshape(-1)
        else:
            b = tiles.reshape(nb, tk // 8, TILE_ROWS, 4)[:, :, r, :].astype(np.int16)
            u = np.stack([b & 0xF, b >> 4], axis=2).reshape(-1)  # (nb, kq, half, j)
            q = u if fmt.asymmetric else ((u ^ 8) - 8)
        q = q.astype(np.float32)[: pw.k]
        if fmt.per_channel:
            out[i] = q * np.float32(pw.scales[t, r])
        else:
            d = np.repeat(pw.scales[t, :, r].astype(np.float32), fmt.group)
            w = q * d
            if fmt.asymmetric:
                w = w + np.repeat(pw.offsets[t, :, r].astype(np.float32), fmt.group)
            out[i] = w
    return out


def _block_rows(pw: PackedWeights, rows: np.ndarray) -> np.ndarray:
    """dequantize_rows for block formats: each row's 16-row tile, dequantized."""
    out = np.empty((rows.size, pw.k), np.float32)
    for i, row in enumerate(rows):
        t, r = divmod(int(row), TILE_ROWS)
        sl = slice(t, t + 1)
        one = PackedWeights(pw.fmt, min(TILE_ROWS, pw.n - t * TILE_ROWS), pw.k, pw.codes[sl],
                            tensor_scale=pw.tensor_scale)
        out[i] = dequantize(one)[r]
    return out


def stack_rows(parts: list[PackedWeights]) -> PackedWeights | None:
    """One PackedWeights whose rows are ``parts`` one after another (e.g. Wq, Wk, Wv), or None when
    they cannot share tiles: different formats or input widths, or a part whose rows do not fill
    whole 16-row tiles. The result is a copy in host memory; products over it equal, row for row and
    bit for bit, the products over the parts, and count the same events (they are additive over tiles).
    """
    first = parts[0]
    if any(p.fmt != first.fmt or p.k != first.k or p.n % TILE_ROWS or p.tensor_scale != first.tensor_scale
           for p in parts):
        return None

    def cat(attr):
        return None if getattr(first, attr) is None else np.concatenate([getattr(p, attr) for p in parts])

    return PackedWeights(first.fmt, sum(p.n for p in parts), first.k, cat("codes"), cat("scales"), cat("offsets"),
                         first.tensor_scale)
