# SRAM KV cache stores and the streaming attention unit (csrc/hc_attn.c).
# Rules: docs/numerics.md "KV cache" and "Attention". The Python objects are in hcemu.kernels.attention.
from hcemu._hcemu cimport (hc_kv_store_i8, hc_kv_store_f16, hc_attn_i8, hc_attn_f16, hc_attn_qk_i8,
                           HC_ATTN_BLOCK, HC_ATTN_MAX_HEAD_DIM)

ATTN_BLOCK = HC_ATTN_BLOCK
"""Keys per block the attention unit streams from SRAM (the online-softmax step)."""
ATTN_MAX_HEAD_DIM = HC_ATTN_MAX_HEAD_DIM
"""Largest head_dim the attention unit takes (every int32 q.k sum stays exact)."""


cdef int _check_kv_x(str fn, str name, const float[:, :, ::1] x, Py_ssize_t hkv, Py_ssize_t hd) except -1:
    if x.shape[1] != hkv or x.shape[2] != hd:
        raise ValueError(f"{fn}: {name} has shape {(x.shape[0], x.shape[1], x.shape[2])}, expected (t, {hkv}, {hd}) "
                         f"(tokens, kv heads, head_dim)")
    return 0


cdef int _check_q(q, Py_ssize_t nh, Py_ssize_t qhd, Py_ssize_t t, Py_ssize_t hkv, Py_ssize_t hd,
                  Py_ssize_t start, Py_ssize_t limit) except -1:
    if qhd != hd or nh == 0 or nh % hkv:
        raise ValueError(f"attention: q has shape {q.shape}; expected (t, n_heads, {hd}) with n_heads "
                         f"a positive multiple of the cache's {hkv} kv heads")
    if start < 0 or start + t > limit:
        raise ValueError(f"attention: queries at positions [{start}, {start + t}) need keys up to "
                         f"position {start + t - 1}, but this layer holds {limit} tokens")
    return 0


cdef const float[:, :, ::1] _q_view(q, Py_ssize_t hkv, Py_ssize_t hd, Py_ssize_t start,
                                   Py_ssize_t limit) except *:
    cdef const float[:, :, ::1] qv
    try:
        qv = q
    except _BUF_ERRORS:
        raise _arg_error("attention", "q", q, _np.float32, 3) from None
    _check_q(q, qv.shape[1], qv.shape[2], qv.shape[0], hkv, hd, start, limit)
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


from hcemu.events import FIELD_INDEX as _FIELD_INDEX
from libc.stdlib cimport calloc, free
cimport numpy as cnp

cnp.import_array()

cdef Py_ssize_t _I_READ = _FIELD_INDEX["sram_kv_bytes_read"]
cdef Py_ssize_t _I_WRITE = _FIELD_INDEX["sram_kv_bytes_written"]
cdef Py_ssize_t _I_MACS = _FIELD_INDEX["attn_macs"]
cdef Py_ssize_t _I_FLOPS = _FIELD_INDEX["vec_flops"]
cdef Py_ssize_t _I_TRANS = _FIELD_INDEX["vec_transcendentals"]


cdef inline bint _plain_f32(a, int ndim, bint writable):
    """a is an aligned C-contiguous float32 ndarray with ndim dimensions (writeable if asked)."""
    return (cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            and (not writable or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a)))


cdef inline void _count_kv_write(int64_t *row, Py_ssize_t t, Py_ssize_t bytes_per_token_layer) noexcept nogil:
    """docs/events.md: t tokens stored in one layer write t * bytes_per_token_layer bytes of SRAM."""
    row[_I_WRITE] += t * bytes_per_token_layer


cdef inline void _count_attention(int64_t *row, Py_ssize_t t, Py_ssize_t start, Py_ssize_t nh, Py_ssize_t hd,
                                  Py_ssize_t bytes_per_token_layer) noexcept nogil:
    """docs/events.md: t queries at [start, start+t) over nh heads each read keys [0, p]."""
    cdef Py_ssize_t keys = t * start + t * (t + 1) // 2  # sum over the queries of (p + 1)
    row[_I_READ] += keys * bytes_per_token_layer
    row[_I_MACS] += 2 * nh * hd * keys
    row[_I_FLOPS] += 5 * nh * keys
    row[_I_TRANS] += nh * keys


cdef class KVStore:
    """The arrays of one :class:`hcemu.kernels.attention.KVCache` with their typed views acquired once, so
    that a call per layer and token costs little Python time; tracks tokens written per layer.

    int8: ``KVStore(k_codes, v_codes, k_scales, v_scales)``; fp16: ``KVStore(k, v)`` (uint16 bits).
    """
    cdef int8_t[:, :, :, ::1] kc, vc
    cdef uint16_t[:, :, ::1] ks, vs
    cdef uint16_t[:, :, :, ::1] k16, v16
    cdef readonly bint is_i8
    cdef readonly Py_ssize_t n_layers, n_kv_heads, capacity, head_dim, bytes_per_token_layer
    cdef Py_ssize_t *filled_

    def __cinit__(self):
        self.filled_ = NULL

    def __init__(self, k, v, k_scales=None, v_scales=None):
        self.is_i8 = k_scales is not None
        cdef Py_ssize_t L, hkv, cap, hd
        if self.is_i8:
            self.kc = k
            self.vc = v
            self.ks = k_scales
            self.vs = v_scales
            L, hkv, cap, hd = self.kc.shape[0], self.kc.shape[1], self.kc.shape[2], self.kc.shape[3]
            if (self.vc.shape[0], self.vc.shape[1], self.vc.shape[2], self.vc.shape[3]) != (L, hkv, cap, hd) \
                    or (self.ks.shape[0], self.ks.shape[1], self.ks.shape[2]) != (L, hkv, cap) \
                    or (self.vs.shape[0], self.vs.shape[1], self.vs.shape[2]) != (L, hkv, cap):
                raise ValueError("KVStore: K/V codes and scales disagree in shape")
            self.bytes_per_token_layer = 2 * hkv * (hd + 2)
        else:
            self.k16 = k
            self.v16 = v
            L, hkv, cap, hd = self.k16.shape[0], self.k16.shape[1], self.k16.shape[2], self.k16.shape[3]
            if (self.v16.shape[0], self.v16.shape[1], self.v16.shape[2], self.v16.shape[3]) != (L, hkv, cap, hd):
                raise ValueError("KVStore: K and V disagree in shape")
            self.bytes_per_token_layer = 2 * hkv * hd * 2
        if L < 1 or hkv < 1 or hd < 1 or hd > HC_ATTN_MAX_HEAD_DIM:
            raise ValueError(f"KVStore: cache shape {(L, hkv, cap, hd)} is empty or head_dim exceeds "
                             f"{HC_ATTN_MAX_HEAD_DIM}")
        self.n_layers, self.n_kv_heads, self.capacity, self.head_dim = L, hkv, cap, hd
        free(self.filled_)
        self.filled_ = <Py_ssize_t *>calloc(L, sizeof(Py_ssize_t))
        if self.filled_ == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.filled_)

    cdef int _layer_ok(self, Py_ssize_t layer, str fn) except -1:
        if not (0 <= layer < self.n_layers):
            raise ValueError(f"{fn}: layer {layer} outside 0..{self.n_layers - 1}")
        return 0

    def filled(self, Py_ssize_t layer):
        """Tokens written in ``layer``."""
        self._layer_ok(layer, "KVCache.filled")
        return self.filled_[layer]

    def filled_all(self):
        return [self.filled_[i] for i in range(self.n_layers)]

    def reset(self, Py_ssize_t length=0):
        """Set every layer's written count to ``length`` (0 forgets everything)."""
        if not (0 <= length <= self.capacity):
            raise ValueError(f"KVStore.reset: length {length} outside 0..{self.capacity}")
        for i in range(self.n_layers):
            self.filled_[i] = length

    def append(self, Py_ssize_t layer, k, v, events=None, region=None):
        """Store k, v float32 (t, n_kv_heads, head_dim) at the next t positions of ``layer``.

        Returns the new written count, or -1 (writing nothing) when the tokens do not fit."""
        cdef const float[:, :, ::1] kv_, vv_
        self._layer_ok(layer, "KVCache.append")
        try:
            kv_ = k
        except _BUF_ERRORS:
            raise _arg_error("KVCache.append", "k", k, _np.float32, 3) from None
        try:
            vv_ = v
        except _BUF_ERRORS:
            raise _arg_error("KVCache.append", "v", v, _np.float32, 3) from None
        _check_kv_x("KVCache.append", "k", kv_, self.n_kv_heads, self.head_dim)
        _check_kv_x("KVCache.append", "v", vv_, self.n_kv_heads, self.head_dim)
        cdef Py_ssize_t t = kv_.shape[0], pos = self.filled_[layer]
        if vv_.shape[0] != t:
            raise ValueError(f"KVCache.append: k holds {t} tokens, v {vv_.shape[0]}")
        if pos + t > self.capacity:
            return -1
        cdef int rc = 0
        cdef int hkv = <int>self.n_kv_heads, hd = <int>self.head_dim
        cdef Py_ssize_t cap = self.capacity
        if t:
            with nogil:
                if self.is_i8:
                    rc = hc_kv_store_i8(&kv_[0, 0, 0], t, hkv, hd, pos, cap, &self.kc[layer, 0, 0, 0],
                                        &self.ks[layer, 0, 0])
                    if rc == 0:
                        rc = hc_kv_store_i8(&vv_[0, 0, 0], t, hkv, hd, pos, cap, &self.vc[layer, 0, 0, 0],
                                            &self.vs[layer, 0, 0])
                else:
                    rc = hc_kv_store_f16(&kv_[0, 0, 0], t, hkv, hd, pos, cap, &self.k16[layer, 0, 0, 0])
                    if rc == 0:
                        rc = hc_kv_store_f16(&vv_[0, 0, 0], t, hkv, hd, pos, cap, &self.v16[layer, 0, 0, 0])
            if rc != 0:
                check(rc, "KVCache.append (int8: K/V must be finite, amax/127 within fp16 range)"
                      if self.is_i8 else
                      "KVCache.append (fp16: K/V must be finite and within fp16 range, |x| < 65520)")
        self.filled_[layer] = pos + t
        if events is not None:
            _count_kv_write(_event_row(events, layer if region is None else region), t,
                            self.bytes_per_token_layer)
        return pos + t

    def attend(self, q, Py_ssize_t layer, Py_ssize_t start, out=None, events=None, region=None):
        """Causal GQA attention of q float32 (t, n_heads, head_dim) over ``layer``; see
        :func:`hcemu.kernels.attention.attention`."""
        self._layer_ok(layer, "attention")
        cdef Py_ssize_t t, nh, hd = self.head_dim
        cdef const float *qp = NULL
        cdef float *op = NULL
        cdef const float[:, :, ::1] qv
        cdef float[:, ::1] ov
        cdef cnp.npy_intp dims[2]
        # a plain float32 ndarray goes straight to C; anything else through a typed memoryview,
        # whose refusal names what is wrong
        if _plain_f32(q, 3, False):
            t, nh = cnp.PyArray_DIM(<cnp.ndarray>q, 0), cnp.PyArray_DIM(<cnp.ndarray>q, 1)
            _check_q(q, nh, cnp.PyArray_DIM(<cnp.ndarray>q, 2), t, self.n_kv_heads, hd, start,
                     self.filled_[layer])
            qp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>q)
        else:
            qv = _q_view(q, self.n_kv_heads, hd, start, self.filled_[layer])
            t, nh = qv.shape[0], qv.shape[1]
            if t:
                qp = &qv[0, 0, 0]
        if out is None:
            dims[0], dims[1] = t, nh * hd
            out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_FLOAT32, 0)
        if (_plain_f32(out, 2, True) and cnp.PyArray_DIM(<cnp.ndarray>out, 0) == t
                and cnp.PyArray_DIM(<cnp.ndarray>out, 1) == nh * hd):
            op = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
        else:
            ov = _out_view(out, t, nh * hd)
            if t:
                op = &ov[0, 0]
        cdef int rc = 0
        cdef int hkv = <int>self.n_kv_heads
        cdef Py_ssize_t cap = self.capacity
        if t:
            with nogil:
                if self.is_i8:
                    rc = hc_attn_i8(qp, t, <int>nh, hkv, <int>hd, start,
                                    &self.kc[layer, 0, 0, 0], &self.ks[layer, 0, 0],
                                    &self.vc[layer, 0, 0, 0], &self.vs[layer, 0, 0], cap, op)
                else:
                    rc = hc_attn_f16(qp, t, <int>nh, hkv, <int>hd, start,
                                     &self.k16[layer, 0, 0, 0], &self.v16[layer, 0, 0, 0], cap, op)
            if rc != 0:
                check(rc, "attention (q must be finite, scores within float32 range)")
        if events is not None:
            _count_attention(_event_row(events, layer if region is None else region), t, start, nh, hd,
                             self.bytes_per_token_layer)
        return out
