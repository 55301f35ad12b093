# The transformer layers as one compiled pass (csrc/hc_chip.c); used by hcemu.chip.Chip.
from hcemu._hcemu cimport (hc_layer, hc_decoder, hc_decoder_trace, hc_decoder_op_name, hc_decoder_check,
                           hc_decoder_layers, HC_DEC_OP_COUNT, hc_adapter_slot, HC_ADAPTERS_MAX)
from libc.string cimport memset

if HC_DEC_OP_COUNT != 12 or HC_ADAPTERS_MAX != 8:
    raise ImportError(f"hcemu._core: hcemu.h has {HC_DEC_OP_COUNT} decoder ops and {HC_ADAPTERS_MAX} adapters per "
                      f"slot, _hcemu.pxd 12 and 8")

DECODER_OPS = tuple(hc_decoder_op_name(i).decode() for i in range(HC_DEC_OP_COUNT))
"""The operations :class:`Decoder` times when profiling, in their C order."""


cdef const float *_f32_ptr(a, Py_ssize_t n, str what) except NULL:
    if not _plain_f32(a, 1, False) or cnp.PyArray_DIM(<cnp.ndarray>a, 0) != n:
        raise ValueError(f"Decoder: {what} must be a C-contiguous float32 array of shape ({n},), got "
                         f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    return <const float *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class Decoder:
    """Every transformer layer of a model over ROM matrices and one :class:`KVStore`, run as one C
    call per step (:c:func:`hc_decoder_layers`): the same kernels, in the same order, as the
    interpreted layer loop of :class:`hcemu.chip.Chip`, so values and events are identical to it.

    ``layers``: one tuple per layer ``(attn_norm, ffn_norm, wq, wk, wv, wo, wg, wu, wd)`` with
    float32 (d_model,) norms and PackedWeights (or CimWeights) products; ``wk = wv = None`` when
    ``wq`` holds q, k, v stacked, ``wu = None`` when ``wg`` holds gate, up stacked. ``cos``, ``sin``:
    float32 (kv capacity, head_dim / 2) RoPE tables.
    """
    cdef hc_decoder d
    cdef hc_layer *layers_
    cdef hc_adapter_slot *slots_  # [n_layers * 7], or NULL: no adapters
    cdef list adapter_keep
    cdef hc_decoder_trace trace
    cdef KVStore store
    cdef list keep
    cdef list products  # per layer: the CimWeights whose events one token pass counts
    cdef readonly int64_t n_layers, n_heads, head_dim

    def __cinit__(self):
        self.layers_ = NULL
        self.slots_ = NULL

    def __dealloc__(self):
        free(self.layers_)
        free(self.slots_)

    def __init__(self, KVStore store, layers, *, Py_ssize_t d_model, Py_ssize_t n_heads, Py_ssize_t d_ff,
                 double norm_eps, Py_ssize_t act_group_d, Py_ssize_t act_group_q, Py_ssize_t act_group_f,
                 cos, sin):
        layers = list(layers)
        cdef Py_ssize_t n = len(layers), hd = store.head_dim, i
        if n != store.n_layers:
            raise ValueError(f"Decoder: {n} layers given, the KV cache has {store.n_layers}")
        for name, tab in (("cos", cos), ("sin", sin)):
            if not _plain_f32(tab, 2, False) or tab.shape != (store.capacity, hd // 2):
                raise ValueError(f"Decoder: {name} must be C-contiguous float32 {(store.capacity, hd // 2)}, "
                                 f"got {getattr(tab, 'dtype', type(tab))} {getattr(tab, 'shape', '')}")
        free(self.layers_)
        self.layers_ = <hc_layer *>calloc(n, sizeof(hc_layer))
        if self.layers_ == NULL:
            raise MemoryError()
        self.store, self.keep, self.products = store, [cos, sin], []
        cdef hc_layer *L
        cdef CimWeights cw
        for i, lay in enumerate(layers):
            if len(lay) != 9:
                raise ValueError(f"Decoder: layer {i} must be (attn_norm, ffn_norm, wq, wk, wv, wo, wg, wu, wd)")
            L = &self.layers_[i]
            L.attn_norm = _f32_ptr(lay[0], d_model, f"layer {i} attn_norm")
            L.ffn_norm = _f32_ptr(lay[1], d_model, f"layer {i} ffn_norm")
            cws = [None if pw is None else prepared(pw) for pw in lay[2:]]
            if cws[0] is None or cws[3] is None or cws[4] is None or cws[6] is None:
                raise ValueError(f"Decoder: layer {i} lacks wq, wo, wg or wd")
            cw = cws[0]; L.wq = &cw.w
            if cws[1] is not None:
                cw = cws[1]; L.wk = &cw.w
            if cws[2] is not None:
                cw = cws[2]; L.wv = &cw.w
            cw = cws[3]; L.wo = &cw.w
            cw = cws[4]; L.wg = &cw.w
            if cws[5] is not None:
                cw = cws[5]; L.wu = &cw.w
            cw = cws[6]; L.wd = &cw.w
            if store.is_i8:
                L.k_codes, L.v_codes = &store.kc[i, 0, 0, 0], &store.vc[i, 0, 0, 0]
                L.k_scales, L.v_scales = &store.ks[i, 0, 0], &store.vs[i, 0, 0]
            else:
                L.k16, L.v16 = &store.k16[i, 0, 0, 0], &store.v16[i, 0, 0, 0]
            self.keep.append((lay[0], lay[1]))
            self.products.append([cw_ for cw_ in cws if cw_ is not None])
        self.d.n_layers, self.d.d_model, self.d.n_heads = n, d_model, n_heads
        self.d.n_kv_heads, self.d.head_dim, self.d.d_ff = store.n_kv_heads, hd, d_ff
        self.d.norm_eps = <float>norm_eps
        self.d.act_group_d, self.d.act_group_q, self.d.act_group_f = act_group_d, act_group_q, act_group_f
        self.d.kv_int8 = 1 if store.is_i8 else 0
        self.d.kv_capacity = store.capacity
        self.d.rope_cos = <const float *>cnp.PyArray_DATA(<cnp.ndarray>cos)
        self.d.rope_sin = <const float *>cnp.PyArray_DATA(<cnp.ndarray>sin)
        self.d.layers = self.layers_
        if hc_decoder_check(&self.d) != 0:
            raise ValueError(
                f"Decoder: inconsistent model description (d_model {d_model}, heads {n_heads}/{store.n_kv_heads}"
                f" x {hd}, d_ff {d_ff}, activation groups {act_group_d}/{act_group_q}/{act_group_f}): a matrix "
                f"shape or group does not fit")
        self.n_layers, self.n_heads, self.head_dim = n, n_heads, hd
        memset(&self.trace, 0, sizeof(hc_decoder_trace))

    property profile:
        """When true, every op's seconds and calls accumulate (see :meth:`op_times`)."""
        def __get__(self):
            return bool(self.trace.profile)

        def __set__(self, value):
            self.trace.profile = 1 if value else 0

    def op_times(self):
        """``{op: (seconds, calls)}`` accumulated while profiling, in the order of DECODER_OPS."""
        return {DECODER_OPS[i]: (self.trace.op_seconds[i], self.trace.op_calls[i]) for i in range(HC_DEC_OP_COUNT)}

    @property
    def seconds(self):
        """Seconds inside :meth:`forward`'s C call accumulated while profiling (kernels and the glue
        between them; ``seconds - sum(op_times)`` is the glue)."""
        return self.trace.seconds

    @property
    def calls(self):
        """:meth:`forward` calls accumulated while profiling."""
        return self.trace.calls

    def set_adapters(self, slots):
        """Add LoRA adapters to the layers' products from the next :meth:`forward` on: ``slots`` is
        None (none) or one sequence per layer of 7 sequences (q, k, v, o, gate, up, down) of
        :class:`CimAdapter`, applied in that order (at most 8 per matrix). Replaces the previous
        selection; the ROM matrices are untouched."""
        if slots is None:
            self.d.adapters = NULL
            self.adapter_keep = None
            return
        slots = [list(map(list, s)) for s in slots]
        if len(slots) != self.n_layers or any(len(s) != 7 for s in slots):
            raise ValueError(f"Decoder.set_adapters: need {self.n_layers} layers of 7 slots")
        cdef hc_adapter_slot *tab = <hc_adapter_slot *>calloc(self.n_layers * 7, sizeof(hc_adapter_slot))
        if tab == NULL:
            raise MemoryError()
        cdef CimAdapter ca
        cdef Py_ssize_t i, j, s_
        cdef const hc_adapter_slot *old = self.d.adapters
        cdef hc_adapter_slot *old_tab = self.slots_
        keep = []
        try:
            for i in range(self.n_layers):
                for j in range(7):
                    items = slots[i][j]
                    if len(items) > HC_ADAPTERS_MAX:
                        raise ValueError(f"Decoder.set_adapters: {len(items)} adapters on one matrix "
                                         f"(layer {i}); at most {HC_ADAPTERS_MAX}")
                    tab[i * 7 + j].n = len(items)
                    for s_ in range(len(items)):
                        if not isinstance(items[s_], CimAdapter):
                            raise TypeError(f"Decoder.set_adapters: expected CimAdapter, got "
                                            f"{type(items[s_]).__name__}")
                        ca = <CimAdapter>items[s_]
                        tab[i * 7 + j].a[s_] = &ca.ad
                        keep.append(ca)
            self.d.adapters = tab
            if hc_decoder_check(&self.d) != 0:
                self.d.adapters = old
                raise ValueError("Decoder.set_adapters: an adapter's shape does not fit its matrix")
        except BaseException:
            free(tab)
            raise
        self.slots_ = tab
        free(old_tab)
        self.adapter_keep = keep

    def reset_op_times(self):
        cdef int p = self.trace.profile
        memset(&self.trace, 0, sizeof(hc_decoder_trace))
        self.trace.profile = p

    def forward(self, x, Py_ssize_t start, int n_threads=1, events=None):
        """Run every layer on x float32 (t, d_model) in place for tokens at [start, start+t); store
        their K/V (each layer must hold exactly ``start`` tokens); add the layers' kernel events
        (products, KV traffic, attention) to ``events`` regions 0..n_layers-1."""
        if not _plain_f32(x, 2, True) or cnp.PyArray_DIM(<cnp.ndarray>x, 1) != self.d.d_model:
            raise ValueError(f"Decoder.forward: x must be a writeable C-contiguous float32 (t, {self.d.d_model}) "
                             f"array, got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
        _check_threads(n_threads)
        cdef Py_ssize_t t = cnp.PyArray_DIM(<cnp.ndarray>x, 0), i
        if t == 0:
            return x
        for i in range(self.n_layers):
            if self.store.filled_[i] != start:
                raise ValueError(f"Decoder.forward: tokens start at position {start} but layer {i} of the KV "
                                 f"cache holds {self.store.filled_[i]}")
        if start < 0 or start + t > self.store.capacity:
            raise OverflowError(f"Decoder.forward: positions [{start}, {start + t}) exceed the KV cache's "
                                f"{self.store.capacity} token slots")
        cdef int64_t *counts = NULL
        if events is not None:
            counts = _event_counts(events, self.n_layers)
        cdef float *xp = <float *>cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef int rc
        with nogil:
            rc = hc_decoder_layers(&self.d, xp, t, start, n_threads, &self.trace)
        if rc != 0:
            where = (f"layer {self.trace.failed_layer} {DECODER_OPS[self.trace.failed_op]}"
                     if self.trace.failed_op >= 0 else "setup")
            check(rc, f"Decoder.forward ({where})")
        cdef int64_t *row
        for i in range(self.n_layers):
            self.store.filled_[i] = start + t
            if counts != NULL:
                row = counts + i * _N_FIELDS
                for cw in self.products[i]:
                    _count_product(row, <CimWeights>cw, t)
                _count_kv_write(row, t, self.store.bytes_per_token_layer)
                _count_attention(row, t, start, self.n_heads, self.head_dim, self.store.bytes_per_token_layer)
        return x
