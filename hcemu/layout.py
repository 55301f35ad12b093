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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import TILE_ROWS, WeightFormat


@dataclass(frozen=True)
class PackedWeights:
    """A weight matrix in ROM layout. Arrays may be read-only views into a memory-mapped image."""

    fmt: WeightFormat
    n: int
    k: int
    codes: np.ndarray              # uint8 (n_row_tiles, n_blocks, tile_bytes)
    scales: np.ndarray             # float16 (n_row_tiles, n_blocks, 16) or (n_row_tiles, 16)
    offsets: np.ndarray | None = None  # float16, like scales; asymmetric int4 only

    @property
    def n_row_tiles(self) -> int:
        return self.codes.shape[0]

    @property
    def n_blocks(self) -> int:
        return self.codes.shape[1]

    @property
    def k_padded(self) -> int:
        return self.n_blocks * self.fmt.tile_k

    @property
    def nbytes(self) -> int:
        """Bytes the kernels stream per pass: codes, scales and offsets (padding included)."""
        return self.codes.nbytes + self.scales.nbytes + (0 if self.offsets is None else self.offsets.nbytes)


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


def _check_codes(q: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weight codes must be 2-D (n, k), got shape {q.shape}")
    if not np.issubdtype(q.dtype, np.integer):
        raise TypeError(f"weight codes must be integers, got {q.dtype}")
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
    if fmt.bits == 8:
        # (t, b, r, kq, j) -> (t, b, kq, r, j)
        lay = tiles.reshape(nt, nb, TILE_ROWS, tk // 4, 4).transpose(0, 1, 3, 2, 4)
        codes = (lay & 0xFF).astype(np.uint8)
    else:
        u = tiles & 0xF  # two's complement nibble for symmetric, raw code for asymmetric
        u = u.reshape(nt, nb, TILE_ROWS, tk // 8, 2, 4)  # (.., r, kq, half, j)
        byte = u[..., 0, :] | (u[..., 1, :] << 4)         # (t, b, r, kq, j)
        codes = byte.transpose(0, 1, 3, 2, 4).astype(np.uint8)
    codes = np.ascontiguousarray(codes.reshape(nt, nb, tile_bytes(fmt)))
    return PackedWeights(fmt, n, k, codes, lay_meta(scales, "scales"),
                         None if offsets is None else lay_meta(offsets, "offsets"))


def unpack_codes(pw: PackedWeights) -> np.ndarray:
    """Integer codes (n, k) as int16: signed values for symmetric formats, [0, 15] for asymmetric."""
    fmt, nt, nb, tk = pw.fmt, pw.n_row_tiles, pw.n_blocks, pw.fmt.tile_k
    if fmt.bits == 8:
        lay = pw.codes.view(np.int8).reshape(nt, nb, tk // 4, TILE_ROWS, 4).astype(np.int16)
        tiles = lay.transpose(0, 1, 3, 2, 4).reshape(nt, nb, TILE_ROWS, tk)
    else:
        b = pw.codes.reshape(nt, nb, tk // 8, TILE_ROWS, 4).astype(np.int16)
        u = np.stack([b & 0xF, b >> 4], axis=3)          # (t, b, kq, half, r, j)
        u = u.transpose(0, 1, 4, 2, 3, 5).reshape(nt, nb, TILE_ROWS, tk)
        tiles = u if fmt.asymmetric else ((u ^ 8) - 8)
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
    """Float32 weights (n, k) the silicon represents: ``q*d`` or ``q*d + m`` evaluated in float32."""
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


def stack_rows(parts: list[PackedWeights]) -> PackedWeights | None:
    """One PackedWeights whose rows are ``parts`` one after another (e.g. Wq, Wk, Wv), or None when
    they cannot share tiles: different formats or input widths, or a part whose rows do not fill
    whole 16-row tiles. The result is a copy in host memory; products over it equal, row for row and
    bit for bit, the products over the parts, and count the same events (they are additive over tiles).
    """
    first = parts[0]
    if any(p.fmt != first.fmt or p.k != first.k or p.n % TILE_ROWS for p in parts):
        return None
    offsets = None if first.offsets is None else np.concatenate([p.offsets for p in parts])
    return PackedWeights(first.fmt, sum(p.n for p in parts), first.k,
                         np.concatenate([p.codes for p in parts]),
                         np.concatenate([p.scales for p in parts]), offsets)
