# SRAM KV cache stores and the streaming attention unit (csrc/hc_attn.c).
# Rules: docs/numerics.md "KV cache" and "Attention". The Python objects are in hcemu.attention.
from hcemu._hcemu cimport (hc_kv_store_i8, hc_kv_store_f16, hc_attn_i8, hc_attn_f16, hc_attn_qk_i8,
                           HC_ATTN_BLOCK)

ATTN_BLOCK = HC_ATTN_BLOCK
"""Keys per block the attention unit streams from SRAM (the online-softmax step)."""


cdef int _check_kv_x(str fn, str name, const float[:, :, ::1] x, Py_ssize_t hkv, Py_ssize_t hd) except -1:
    if x.shape[1] != hkv or x.shape[2] != hd:
        raise ValueError(f"{fn}: {name} has shape {(x.shape[0], x.shape[1], x.shape[2])}, expected (t, {hkv}, {hd}) "
                         f"(tokens, kv heads, head_dim)")
    return 0


def kv_store_i8(x, int8_t[:, :, :, ::1] codes, uint16_t[:, :, ::1] scales, Py_ssize_t layer,
                Py_ssize_t pos):
    """Quantize x float32 (t, n_kv_heads, hd) into ``codes[layer, :, pos:pos+t]`` (int8, cache
    shape (L, Hkv, capacity, hd)) and ``scales[layer, :, pos:pos+t]`` (fp16 bits, (L, Hkv, capacity))."""
    cdef const float[:, :, ::1] xv
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("KVCache.append", "k/v", x, _np.float32, 3) from None
    cdef Py_ssize_t L = codes.shape[0], hkv = codes.shape[1], cap = codes.shape[2], hd = codes.shape[3]
    _check_kv_x("KVCache.append", "k/v", xv, hkv, hd)
    if not (0 <= layer < L) or scales.shape[0] != L or scales.shape[1] != hkv or scales.shape[2] != cap:
        raise ValueError(f"kv_store_i8: layer {layer} or scales {(scales.shape[0], scales.shape[1], scales.shape[2])} do not "
                         f"match codes {(codes.shape[0], codes.shape[1], codes.shape[2], codes.shape[3])}")
    cdef Py_ssize_t t = xv.shape[0]
    if pos < 0 or pos + t > cap:
        raise ValueError(f"kv_store_i8: positions [{pos}, {pos + t}) outside capacity {cap}")
    cdef int rc = 0
    if t:
        with nogil:
            rc = hc_kv_store_i8(&xv[0, 0, 0], t, <int>hkv, <int>hd, pos, cap, &codes[layer, 0, 0, 0],
                                &scales[layer, 0, 0])
        if rc != 0:
            check(rc, "KVCache.append (int8: K/V must be finite, amax/127 within fp16 range)")
    return t


def kv_store_f16(x, uint16_t[:, :, :, ::1] values, Py_ssize_t layer, Py_ssize_t pos):
    """Store x float32 (t, n_kv_heads, hd) as fp16 bits into ``values[layer, :, pos:pos+t]``."""
    cdef const float[:, :, ::1] xv
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("KVCache.append", "k/v", x, _np.float32, 3) from None
    cdef Py_ssize_t L = values.shape[0], hkv = values.shape[1], cap = values.shape[2], hd = values.shape[3]
    _check_kv_x("KVCache.append", "k/v", xv, hkv, hd)
    if not (0 <= layer < L):
        raise ValueError(f"kv_store_f16: layer {layer} outside 0..{L - 1}")
    cdef Py_ssize_t t = xv.shape[0]
    if pos < 0 or pos + t > cap:
        raise ValueError(f"kv_store_f16: positions [{pos}, {pos + t}) outside capacity {cap}")
    cdef int rc = 0
    if t:
        with nogil:
            rc = hc_kv_store_f16(&xv[0, 0, 0], t, <int>hkv, <int>hd, pos, cap, &values[layer, 0, 0, 0])
        if rc != 0:
            check(rc, "KVCache.append (fp16: K/V must be finite and within fp16 range, |x| < 65520)")
    return t


cdef const float[:, :, ::1] _q_view(q, Py_ssize_t hkv, Py_ssize_t hd, Py_ssize_t start,
                                   Py_ssize_t limit) except *:
    cdef const float[:, :, ::1] qv
    try:
        qv = q
    except _BUF_ERRORS:
        raise _arg_error("attention", "q", q, _np.float32, 3) from None
    cdef Py_ssize_t t = qv.shape[0], nh = qv.shape[1]
    if qv.shape[2] != hd or nh == 0 or nh % hkv:
        raise ValueError(f"attention: q has shape {q.shape}; expected (t, n_heads, {hd}) with n_heads "
                         f"a positive multiple of the cache's {hkv} kv heads")
    if start < 0 or start + t > limit:
        raise ValueError(f"attention: queries at positions [{start}, {start + t}) need keys up to "
                         f"position {start + t - 1}, but this layer holds {limit} tokens")
    return qv


cdef float[:, ::1] _out_view(out, Py_ssize_t t, Py_ssize_t n) except *:
    cdef float[:, ::1] ov
    try:
        ov = out
    except _BUF_ERRORS:
        raise _arg_error("attention", "out", out, _np.float32, 2, True) from None
    if ov.shape[0] != t or ov.shape[1] != n:
        raise _shape_error("attention", "out", out.shape, (t, n))
    return ov


def attn_i8(q, const int8_t[:, :, :, ::1] k, const uint16_t[:, :, ::1] ks, const int8_t[:, :, :, ::1] v,
            const uint16_t[:, :, ::1] vs, Py_ssize_t layer, Py_ssize_t start, Py_ssize_t limit, out=None):
    """Causal GQA attention of q float32 (t, n_heads, hd) over layer ``layer`` of an int8 cache
    (codes (L, Hkv, capacity, hd), fp16-bit scales (L, Hkv, capacity)); ``limit`` = tokens the layer
    holds. Returns float32 (t, n_heads*hd)."""
    cdef const float[:, :, ::1] qv
    cdef float[:, ::1] ov
    cdef Py_ssize_t L = k.shape[0], hkv = k.shape[1], cap = k.shape[2], hd = k.shape[3]
    if not (0 <= layer < L):
        raise ValueError(f"attention: layer {layer} outside 0..{L - 1}")
    if limit > cap:
        raise ValueError(f"attention: limit {limit} exceeds capacity {cap}")
    qv = _q_view(q, hkv, hd, start, limit)
    cdef Py_ssize_t t = qv.shape[0], nh = qv.shape[1]
    if out is None:
        out = _np.empty((t, nh * hd), _np.float32)
    ov = _out_view(out, t, nh * hd)
    cdef int rc = 0
    if t:
        with nogil:
            rc = hc_attn_i8(&qv[0, 0, 0], t, <int>nh, <int>hkv, <int>hd, start, &k[layer, 0, 0, 0],
                            &ks[layer, 0, 0], &v[layer, 0, 0, 0], &vs[layer, 0, 0], cap, &ov[0, 0])
        if rc != 0:
            check(rc, "attention (q must be finite, scores within float32 range)")
    return out


def attn_f16(q, const uint16_t[:, :, :, ::1] k, const uint16_t[:, :, :, ::1] v, Py_ssize_t layer,
             Py_ssize_t start, Py_ssize_t limit, out=None):
    """As :func:`attn_i8` over an fp16 cache (fp16 bits (L, Hkv, capacity, hd))."""
    cdef const float[:, :, ::1] qv
    cdef float[:, ::1] ov
    cdef Py_ssize_t L = k.shape[0], hkv = k.shape[1], cap = k.shape[2], hd = k.shape[3]
    if not (0 <= layer < L):
        raise ValueError(f"attention: layer {layer} outside 0..{L - 1}")
    if limit > cap:
        raise ValueError(f"attention: limit {limit} exceeds capacity {cap}")
    qv = _q_view(q, hkv, hd, start, limit)
    cdef Py_ssize_t t = qv.shape[0], nh = qv.shape[1]
    if out is None:
        out = _np.empty((t, nh * hd), _np.float32)
    ov = _out_view(out, t, nh * hd)
    cdef int rc = 0
    if t:
        with nogil:
            rc = hc_attn_f16(&qv[0, 0, 0], t, <int>nh, <int>hkv, <int>hd, start, &k[layer, 0, 0, 0],
                             &v[layer, 0, 0, 0], cap, &ov[0, 0])
        if rc != 0:
            check(rc, "attention (q must be finite, scores within float32 range)")
    return out


def attn_qk_i8(const int8_t[::1] q, const int8_t[:, ::1] k, str isa):
    """Exact int32 dot products ``k @ q`` (q (hd,), k (n, hd) int8) on ISA path ``isa`` (for tests)."""
    if isa not in ISA_NAMES:
        raise ValueError(f"unknown ISA path {isa!r}; known: {', '.join(ISA_NAMES)}")
    if k.shape[1] != q.shape[0] or q.shape[0] == 0:
        raise ValueError(f"attn_qk_i8: k has shape {(k.shape[0], k.shape[1])}, q has {q.shape[0]} values")
    out = _np.empty(k.shape[0], _np.int32)
    cdef int32_t[::1] ov = out
    cdef int rc = 0
    cdef int index = ISA_NAMES.index(isa)
    cdef hc_isa which = <hc_isa>index
    if k.shape[0]:
        with nogil:
            rc = hc_attn_qk_i8(which, &q[0], &k[0, 0], k.shape[0], <int>k.shape[1], &ov[0])
        check(rc, f"attn_qk_i8[{isa}]")
    return out
