"""numpy reference of the compute-in-memory kernels: the test oracle (docs/numerics.md, bit for bit).

Integer parts are exact (int64 arithmetic, checked to fit int32); the float epilogue runs in
float32 with one rounding per numpy ufunc, blocks in ascending order, exactly as the C paths.
"""
from __future__ import annotations

import numpy as np

from hcemu.events import FIELD_INDEX, mac_field, product_counts
from hcemu.formats import TILE_ROWS
from hcemu.layout import PackedWeights, unpack_codes, unpack_meta


def quantize_activations_ref(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (m, k) and float32 scales (m, k // group) of float32 ``x`` (m, k)."""
    x = np.asarray(x, dtype=np.float32)
    m, k = x.shape
    if group < 1 or k % group:
        raise ValueError(f"activation group {group} does not divide K={k}")
    if not np.isfinite(x).all():
        raise ValueError("activations hold NaN or infinity")
    xg = x.reshape(m, k // group, group)
    amax = np.abs(xg).max(axis=2) if k else np.zeros((m, 0), np.float32)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, np.float32(1)), np.float32(0))
    inv = inv.astype(np.float32)
    with np.errstate(invalid="ignore"):
        v = xg * inv[..., None]
    v = np.clip(v, np.float32(-127.0), np.float32(127.0))
    v = np.where(np.isnan(v), np.float32(0), v)
    q = np.rint(v).astype(np.int8).reshape(m, k)
    return q, scales


def _padded_codes(pw: PackedWeights) -> np.ndarray:
    """Codes (n_row_tiles*16, k_padded) int64, padding rows/inputs zero."""
    full = np.zeros((pw.n_row_tiles * TILE_ROWS, pw.k_padded), np.int64)
    full[: pw.n, : pw.k] = unpack_codes(pw)
    return full


def block_sums_ref(q: np.ndarray, pw: PackedWeights) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer parts: ``D`` int32 (m, n_row_tiles*16, n_blocks) and ``X`` int32 (m, n_blocks).

    D[m, r, b] = sum over block b of q_w[r, i] * q[m, i] (asymmetric int4: the [0, 15] code);
    X[m, b] = sum over block b of q[m, i].
    """
    m = q.shape[0]
    tk, nb = pw.fmt.tile_k, pw.n_blocks
    x = np.zeros((m, pw.k_padded), np.int64)
    x[:, : pw.k] = q
    xb = x.reshape(m, nb, tk)
    wb = _padded_codes(pw).reshape(-1, nb, tk)
    D = np.einsum("mbi,rbi->mrb", xb, wb)
    X = xb.sum(axis=2)
    assert np.abs(D).max(initial=0) < 2**31 and np.abs(X).max(initial=0) < 2**31
    return D.astype(np.int32), X.astype(np.int32)


def block_parts_ref(q: np.ndarray, pw: PackedWeights) -> dict:
    """Exact integer parts of a block-format product (docs/numerics.md "Block formats"), int64:
    ``D`` (m, n, k // sub_k) = sum over the sub-block of v * x (v = u - bias, the code's value),
    ``X`` (m, k // sub_k) activation sums, ``S`` (m, n, n_blocks) = sum_j sc_j D_j over the sub-blocks
    of each block of 32 (NVFP4: sum_j D_j), ``M`` (m, n, n_blocks) = sum_j mn_j X_j (0 without offsets)."""
    from hcemu.layout import block_fields, block_values

    bk = pw.fmt.block
    f = block_fields(pw)
    v = block_values(f["codes"], pw.fmt).astype(np.int64)
    m, k = q.shape
    n, ns = pw.n, bk.subs_per_block
    x = np.asarray(q, np.int64).reshape(m, -1, bk.sub_k)
    D = np.einsum("mjs,njs->mnj", x, v.reshape(n, -1, bk.sub_k))
    X = x.sum(axis=2)
    sc = f["sc"].astype(np.int64) if f["sc"] is not None else np.ones((n, k // bk.sub_k), np.int64)
    if bk.offset == "dmin":
        mn = f["mn"].astype(np.int64)
    else:
        mn = np.ones((n, k // bk.sub_k), np.int64) if bk.offset == "min" else np.zeros((n, k // bk.sub_k), np.int64)
    S = (D * sc[None]).reshape(m, n, -1, ns).sum(axis=3)
    M = (X[:, None, :] * mn[None]).reshape(m, n, -1, ns).sum(axis=3)
    assert np.abs(S).max(initial=0) < 2**24 and np.abs(M).max(initial=0) < 2**24
    return {"D": D, "X": X, "S": S, "M": M, "fields": f}


def _block_matmul_ref(q: np.ndarray, act_scales: np.ndarray, pw: PackedWeights, ag: int) -> np.ndarray:
    """float32 (m, n) product for block formats, in the C kernels' order (docs/numerics.md)."""
    from hcemu.layout import block_scale_f32

    bk = pw.fmt.block
    m, k = q.shape
    n, nb, ns = pw.n, pw.n_blocks, bk.subs_per_block
    parts = block_parts_ref(q, pw)
    f = parts["fields"]
    d = block_scale_f32(f["d"], pw.fmt)  # (n, units)
    if bk.offset == "dmin":
        o = -np.repeat(f["o"].astype(np.float32), bk.blocks_per_super, axis=1)
    elif bk.offset == "min":
        o = f["o"].astype(np.float32)
    acc = np.zeros((m, n), np.float32)
    for b in range(nb):
        a = act_scales[:, (b * 32) // ag][:, None]
        if bk.scale == "ue4m3":
            t = parts["D"][:, :, b * ns].astype(np.float32) * d[None, :, b * ns]
            for j in range(1, ns):
                t = t + parts["D"][:, :, b * ns + j].astype(np.float32) * d[None, :, b * ns + j]
        else:
            db = d[:, b // bk.blocks_per_super] if bk.scale == "f16" else d[:, b]
            t = parts["S"][:, :, b].astype(np.float32) * db[None, :]
            if bk.offset != "none":
                t = t + parts["M"][:, :, b].astype(np.float32) * o[None, :, b]
        t = t * a
        acc = acc + t
    if pw.tensor_scale != 1.0:
        acc = acc * np.float32(pw.tensor_scale)
    return acc


def cim_matmul_ref(q: np.ndarray, act_scales: np.ndarray, pw: PackedWeights) -> np.ndarray:
    """float32 (m, n): the product of int8 activations (m, k) with scales (m, k // Ga) and ``pw``."""
    q = np.asarray(q)
    act_scales = np.asarray(act_scales, dtype=np.float32)
    m, k = q.shape
    if k != pw.k:
        raise ValueError(f"activations have K={k}, matrix needs K={pw.k}")
    ag = k // act_scales.shape[1]
    tk, nb, n = pw.fmt.tile_k, pw.n_blocks, pw.n
    if k % act_scales.shape[1] or (ag != k and ag % tk):
        raise ValueError(f"activation group {ag} is not a multiple of tile width {tk} nor K={k}")
    if pw.fmt.block is not None:
        return _block_matmul_ref(q, act_scales, pw, ag)
    D, X = block_sums_ref(q, pw)
    d = unpack_meta(pw, "scales").astype(np.float32)
    off = unpack_meta(pw, "offsets").astype(np.float32) if pw.fmt.asymmetric else None
    acc = np.zeros((m, n), np.float32)
    for b in range(nb):
        db = d if pw.fmt.per_channel else d[:, b]
        a = act_scales[:, (b * tk) // ag]
        t = D[:, :n, b].astype(np.float32) * db[None, :]
        if off is not None:
            t = t + X[:, b].astype(np.float32)[:, None] * off[None, :, b]
        t = t * a[:, None]
        acc = acc + t
    return acc


def cim_linear_ref(x: np.ndarray, act_group: int, pw: PackedWeights) -> np.ndarray:
    """Fused reference: quantize ``x`` per ``act_group`` inputs, then :func:`cim_matmul_ref`."""
    q, s = quantize_activations_ref(x, act_group)
    return cim_matmul_ref(q, s, pw)


def event_counts_ref(pw: PackedWeights, m: int) -> dict[str, int]:
    """Per-product event increments for ``m`` token passes: :func:`hcemu.events.product_counts` (the one
    counting rule) times ``m``, as a dict of the fields a product touches."""
    c = product_counts(pw.fmt, pw.n, pw.k) * m
    return {name: int(c[FIELD_INDEX[name]]) for name in
            (mac_field(pw.fmt), "rom_code_bits", "rom_meta_bits", "rom_tiles")}
