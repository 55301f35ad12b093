# SRAM KV cache stores and the streaming attention unit (csrc/hc_attn.c).
# Rules: docs/numerics.md "KV cache" and "Attention". The Python objects are in hcemu.kernels.attention.
from hcemu._hcemu cimport (hc_kv_store_i8, hc_kv_store_f16, hc_attn_i8, hc_attn_f16, hc_attn_qk_i8, hc_attended_keys,
                           hc_attn_opts, hc_attn_i8_opts, hc_attn_f16_opts, HC_ATTN_BLOCK, HC_ATTN_MAX_HEAD_DIM)

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
    if start < 0 or start > limit - t:
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


cdef inline Py_ssize_t _attended_keys(Py_ssize_t t, Py_ssize_t start, Py_ssize_t window) noexcept nogil:
    """hcemu.events.attended_keys: the sum over queries at [start, start+t) of min(p + 1, window)
    (:c:func:`hc_attended_keys`, which the C library's counts use too)."""
    return hc_attended_keys(t, start, window)


cdef inline void _count_attention(int64_t *row, Py_ssize_t t, Py_ssize_t start, Py_ssize_t nh, Py_ssize_t hd,
                                  Py_ssize_t bytes_per_token_layer, Py_ssize_t window=0,
                                  bint softcap=False) noexcept nogil:
    """docs/events.md: t queries at [start, start+t) over nh heads each read keys [0, p] (the last
    ``window`` of them); a soft-cap costs 6 flops and a tanh per head and key."""
    cdef Py_ssize_t keys = _attended_keys(t, start, window)
    row[_I_READ] += keys * bytes_per_token_layer
    row[_I_MACS] += 2 * nh * hd * keys
    row[_I_FLOPS] += (11 if softcap else 5) * nh * keys
    row[_I_TRANS] += (2 if softcap else 1) * nh * keys


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
    cdef const void *ptr_[4]       # the storage arrays' first bytes and sizes (for the overlap checks)
    cdef Py_ssize_t nbytes_[4]
    cdef int n_arrays

    def __cinit__(self):
        self.filled_ = NULL

    def __init__(self, k, v, k_scales=None, v_scales=None):
        if k is None or v is None or (k_scales is None) != (v_scales is None):
            raise TypeError("KVStore takes k, v (and for int8 both k_scales and v_scales) as arrays")
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
        if L < 1 or hkv < 1 or cap < 1 or hd < 1 or hd > HC_ATTN_MAX_HEAD_DIM or hkv > (1 << 30):
            raise ValueError(f"KVStore: cache shape {(L, hkv, cap, hd)} is empty or head_dim exceeds "
                             f"{HC_ATTN_MAX_HEAD_DIM}")
        cdef Py_ssize_t values = L * hkv * cap * hd, scales = L * hkv * cap
        cdef int i, j
        if self.is_i8:
            self.n_arrays = 4
            self.ptr_[0], self.nbytes_[0] = &self.kc[0, 0, 0, 0], values
            self.ptr_[1], self.nbytes_[1] = &self.vc[0, 0, 0, 0], values
            self.ptr_[2], self.nbytes_[2] = &self.ks[0, 0, 0], scales * 2
            self.ptr_[3], self.nbytes_[3] = &self.vs[0, 0, 0], scales * 2
        else:
            self.n_arrays = 2
            self.ptr_[0], self.nbytes_[0] = &self.k16[0, 0, 0, 0], values * 2
            self.ptr_[1], self.nbytes_[1] = &self.v16[0, 0, 0, 0], values * 2
        names = ("k", "v", "k_scales", "v_scales")
        for i in range(self.n_arrays):
            _aligned("KVStore", names[i], self.ptr_[i], 1 if self.is_i8 and i < 2 else 2)
            for j in range(i):
                _disjoint("KVStore", names[i], self.ptr_[i], self.nbytes_[i], names[j], self.ptr_[j], self.nbytes_[j])
        self.n_layers, self.n_kv_heads, self.capacity, self.head_dim = L, hkv, cap, hd
        free(self.filled_)
        self.filled_ = <Py_ssize_t *>calloc(L, sizeof(Py_ssize_t))
        if self.filled_ == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.filled_)

    cdef int _disjoint_from(self, str fn, str name, const void *p, Py_ssize_t nbytes) except -1:
        """``name`` [p, p+nbytes) must not overlap the cache's storage."""
        cdef int i
        for i in range(self.n_arrays):
            _disjoint(fn, name, p, nbytes, "the KV cache's storage", self.ptr_[i], self.nbytes_[i])
        return 0

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
            if _misaligned(&kv_[0, 0, 0], 4):
                kv_ = _np.array(kv_)   # an aligned copy: the kernels read through typed pointers
            if _misaligned(&vv_[0, 0, 0], 4):
                vv_ = _np.array(vv_)
            self._disjoint_from("KVCache.append", "k", &kv_[0, 0, 0], t * hkv * hd * 4)
            self._disjoint_from("KVCache.append", "v", &vv_[0, 0, 0], t * hkv * hd * 4)
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

    def attend(self, q, Py_ssize_t layer, Py_ssize_t start, out=None, events=None, region=None,
               double scale=0.0, double softcap=0.0, Py_ssize_t window=0):
        """Causal GQA attention of q float32 (t, n_heads, head_dim) over ``layer``; see
        :func:`hcemu.kernels.attention.attention`."""
        self._layer_ok(layer, "attention")
        if not (scale >= 0 and softcap >= 0 and window >= 0) or scale > 3.4e38 or softcap > 3.4e38:
            raise ValueError(f"attention: scale {scale}, softcap {softcap} and window {window} must be >= 0 "
                             "and finite (0: the default / off)")
        cdef hc_attn_opts opts
        opts.scale, opts.softcap, opts.window = <float>scale, <float>softcap, window
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
            if t and _misaligned(&qv[0, 0, 0], 4):
                qv = _np.array(qv)   # an aligned copy: the kernels read through typed pointers
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
            _aligned("attention", "out", op, 4)
            _disjoint("attention", "out", op, t * nh * hd * 4, "q", qp, t * nh * hd * 4)
            self._disjoint_from("attention", "out", op, t * nh * hd * 4)
            with nogil:
                if self.is_i8:
                    rc = hc_attn_i8_opts(qp, t, <int>nh, hkv, <int>hd, start,
                                         &self.kc[layer, 0, 0, 0], &self.ks[layer, 0, 0],
                                         &self.vc[layer, 0, 0, 0], &self.vs[layer, 0, 0], cap, &opts, op)
                else:
                    rc = hc_attn_f16_opts(qp, t, <int>nh, hkv, <int>hd, start,
                                          &self.k16[layer, 0, 0, 0], &self.v16[layer, 0, 0, 0], cap, &opts, op)
            if rc != 0:
                check(rc, "attention (q must be finite, scores within float32 range)")
        if events is not None:
            _count_attention(_event_row(events, layer if region is None else region), t, start, nh, hd,
                             self.bytes_per_token_layer, window, softcap > 0)
        return out
