# The transformer layers as one compiled pass (csrc/hc_chip.c); used by hcemu.chip.Chip.
from hcemu._hcemu cimport (hc_layer, hc_decoder, hc_decoder_trace, hc_decoder_op_name, hc_decoder_check,
                           hc_decoder_layers, HC_DEC_OP_COUNT, hc_adapter_slot, HC_ADAPTERS_MAX)
from libc.string cimport memcpy, memset

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


cdef int _remote_expert_cb(void *ctx, int64_t layer, int64_t expert, const float *h, int64_t n,
                           float *out) noexcept nogil:
    with gil:
        return (<Decoder>ctx)._remote(layer, expert, h, n, out)


cdef class Decoder:
    """Every transformer layer of a model over ROM matrices and one :class:`KVStore`, run as one C
    call per step (:c:func:`hc_decoder_layers`): the same kernels, in the same order, as the
    interpreted layer loop of :class:`hcemu.chip.Chip`, so values and events are identical to it.

    ``layers``: one tuple per layer ``(attn_norm, ffn_norm, wq, wk, wv, wo, wg, wu, wd)`` with
    float32 (d_model,) norms and PackedWeights (or CimWeights) products; ``wk = wv = None`` when
    ``wq`` holds q, k, v stacked, ``wu = None`` when ``wg`` holds gate, up stacked. ``cos``, ``sin``:
    float32 (kv capacity, head_dim / 2) RoPE tables.

    Block kinds beyond Llama (docs/chip.md): ``extras``, one dict per layer with any of ``bq``, ``bk``,
    ``bv`` (float32 biases), ``q_norm``, ``k_norm`` (float32 RMSNorm weights of one head, or of the
    whole q / k with ``qk_norm_full``), ``attn_post_norm``, ``ffn_post_norm`` (float32 (d_model,)),
    ``rope_cos``, ``rope_sin`` (the layer's own tables), ``window`` (sliding window in keys);
    ``rope_neox`` (NeoX RoPE pairs), ``ffn_gelu`` (GeGLU), ``attn_scale`` (0: 1/sqrt(head_dim)),
    ``attn_softcap`` (0: none).

    Mixture of experts (``n_experts`` > 0): each layer's ``wg, wu, wd`` are its shared expert's (None
    without one) and its extras hold ``router`` (products, (n_experts, d_model)), ``experts`` (per expert
    ``(gate, up, down)``, ``up = None`` when ``gate`` holds gate, up stacked) and ``shared_gate``
    ((1, d_model) or None). After each :meth:`forward`, ``last_routes`` holds the experts every token was
    routed to, int32 (t, n_layers, n_experts_used); the experts' product events go to their regions.
    """
    cdef hc_decoder d
    cdef hc_layer *layers_
    cdef hc_adapter_slot *slots_  # [n_layers * 7], or NULL: no adapters
    cdef list adapter_keep
    cdef hc_decoder_trace trace
    cdef KVStore store
    cdef list keep
    cdef list products  # per layer: the CimWeights whose events one token pass counts
    cdef list expert_products  # per layer, per expert: its CimWeights (mixture of experts)
    cdef const hc_weights **ptrs_  # the layers' expert pointer arrays (gate, up, down per layer)
    cdef readonly int64_t n_layers, n_heads, head_dim, n_experts
    cdef public object last_routes
    cdef public object remote  # remote(layer, expert, h (n, d_model) float32) -> (n, d_model) float32
    cdef object _remote_exc
    cdef object _routes_buf
    cdef size_t *ranges_     # [lo, hi) byte ranges of everything forward() reads besides x, in pairs
    cdef Py_ssize_t n_ranges

    def __cinit__(self):
        self.layers_ = NULL
        self.ptrs_ = NULL
        self.ranges_ = NULL
        self.slots_ = NULL

    def __dealloc__(self):
        free(self.layers_)
        free(self.ptrs_)
        free(self.ranges_)
        free(self.slots_)

    cdef int _keep_ranges(self, KVStore store) except -1:
        """Record the byte ranges of the store, the RoPE tables, the norms, the extras, the weights and
        the selected adapters' SRAM arrays, so that forward() can refuse an x that overlaps any of them."""
        cdef int j
        cdef CimWeights cw
        cdef CimAdapter ca
        spans = []
        for j in range(store.n_arrays):
            spans.append((<size_t>store.ptr_[j], store.nbytes_[j]))
        for a in self.keep:
            for arr in (a if isinstance(a, tuple) else (a,)):
                spans.append((<size_t>cnp.PyArray_DATA(<cnp.ndarray>arr), arr.nbytes))
        weights = [cw_ for layer in self.products for cw_ in layer]
        weights += [cw_ for layer in self.expert_products for mats in layer for cw_ in mats]
        for ca in (self.adapter_keep or ()):
            if ca.ad.fp16:
                for arr in (ca.a32, ca.b32):
                    spans.append((<size_t>cnp.PyArray_DATA(<cnp.ndarray>arr), arr.nbytes))
            else:
                weights += [ca.a_cw, ca.b_cw]
        for cw in weights:
            for j in range(cw.n_arrays):
                spans.append((<size_t>cw.ptr_[j], cw.nbytes_[j]))
        free(self.ranges_)
        self.ranges_ = NULL
        self.n_ranges = 0
        self.ranges_ = <size_t *>calloc(2 * len(spans) + 1, sizeof(size_t))
        if self.ranges_ == NULL:
            raise MemoryError()
        for j, (lo, nbytes) in enumerate(spans):
            self.ranges_[2 * j], self.ranges_[2 * j + 1] = lo, lo + nbytes
        self.n_ranges = len(spans)
        return 0

    def __init__(self, KVStore store, layers, *, Py_ssize_t d_model, Py_ssize_t n_heads, Py_ssize_t d_ff,
                 double norm_eps, Py_ssize_t act_group_d, Py_ssize_t act_group_q, Py_ssize_t act_group_f,
                 cos, sin, extras=None, bint rope_neox=False, bint ffn_gelu=False, bint qk_norm_full=False,
                 double attn_scale=0.0, double attn_softcap=0.0, Py_ssize_t n_experts=0,
                 Py_ssize_t n_experts_used=0, Py_ssize_t d_ff_expert=0, Py_ssize_t d_ff_shared=0,
                 Py_ssize_t act_group_fe=0, Py_ssize_t act_group_fs=0, bint expert_norm=False,
                 double expert_scale=1.0):
        layers = list(layers)
        for name, v, lo in (("d_model", d_model, 1), ("n_heads", n_heads, 1), ("d_ff", d_ff, 1),
                            ("act_group_d", act_group_d, 1), ("act_group_q", act_group_q, 1),
                            ("act_group_f", act_group_f, 1), ("n_experts", n_experts, 0),
                            ("n_experts_used", n_experts_used, 0), ("d_ff_expert", d_ff_expert, 0),
                            ("d_ff_shared", d_ff_shared, 0), ("act_group_fe", act_group_fe, 0),
                            ("act_group_fs", act_group_fs, 0)):
            if not lo <= v < (1 << 31):   # sane sizes keep the C side's products of sizes inside int64
                raise ValueError(f"Decoder: {name} must be in {lo}..2**31-1, got {v}")
        if not 0 < norm_eps <= 1e30:
            raise ValueError(f"Decoder: norm_eps must be positive and finite, got {norm_eps}")
        if not (0 <= attn_scale <= 3.4e38 and 0 <= attn_softcap <= 3.4e38 and 0 < expert_scale <= 3.4e38):
            raise ValueError(f"Decoder: attn_scale {attn_scale}, attn_softcap {attn_softcap} (>= 0) and expert_scale "
                             f"{expert_scale} (> 0) must be finite")
        extras = [{}] * len(layers) if extras is None else list(extras)
        if len(extras) != len(layers):
            raise ValueError(f"Decoder: {len(extras)} extras for {len(layers)} layers")
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
        self.store, self.keep, self.products, self.expert_products = store, [cos, sin], [], []
        self.n_experts = n_experts
        self.last_routes = None
        free(self.ptrs_)
        self.ptrs_ = NULL
        if n_experts:
            self.ptrs_ = <const hc_weights **>calloc(3 * n * n_experts, sizeof(hc_weights *))
            if self.ptrs_ == NULL:
                raise MemoryError()
        cdef hc_layer *L
        cdef CimWeights cw
        for i, lay in enumerate(layers):
            if len(lay) != 9:
                raise ValueError(f"Decoder: layer {i} must be (attn_norm, ffn_norm, wq, wk, wv, wo, wg, wu, wd)")
            L = &self.layers_[i]
            L.attn_norm = _f32_ptr(lay[0], d_model, f"layer {i} attn_norm")
            L.ffn_norm = _f32_ptr(lay[1], d_model, f"layer {i} ffn_norm")
            cws = [None if pw is None else prepared(pw) for pw in lay[2:]]
            if cws[0] is None or cws[3] is None or (not n_experts and (cws[4] is None or cws[6] is None)):
                raise ValueError(f"Decoder: layer {i} lacks wq, wo, wg or wd")
            cw = cws[0]; L.wq = &cw.w
            if cws[1] is not None:
                cw = cws[1]; L.wk = &cw.w
            if cws[2] is not None:
                cw = cws[2]; L.wv = &cw.w
            cw = cws[3]; L.wo = &cw.w
            if cws[4] is not None:
                cw = cws[4]; L.wg = &cw.w
            if cws[5] is not None:
                cw = cws[5]; L.wu = &cw.w
            if cws[6] is not None:
                cw = cws[6]; L.wd = &cw.w
            if store.is_i8:
                L.k_codes, L.v_codes = &store.kc[i, 0, 0, 0], &store.vc[i, 0, 0, 0]
                L.k_scales, L.v_scales = &store.ks[i, 0, 0], &store.vs[i, 0, 0]
            else:
                L.k16, L.v16 = &store.k16[i, 0, 0, 0], &store.v16[i, 0, 0, 0]
            self.keep.append((lay[0], lay[1]))
            self.products.append([cw_ for cw_ in cws if cw_ is not None])
            ex = dict(extras[i])
            if n_experts:
                self._set_experts(i, L, ex, n_experts)
            self._set_extras(i, L, ex, d_model, n_heads, hd, store, qk_norm_full)
        self.d.n_layers, self.d.d_model, self.d.n_heads = n, d_model, n_heads
        self.d.n_kv_heads, self.d.head_dim, self.d.d_ff = store.n_kv_heads, hd, d_ff
        self.d.norm_eps = <float>norm_eps
        self.d.act_group_d, self.d.act_group_q, self.d.act_group_f = act_group_d, act_group_q, act_group_f
        self.d.kv_int8 = 1 if store.is_i8 else 0
        self.d.kv_capacity = store.capacity
        self.d.rope_cos = <const float *>cnp.PyArray_DATA(<cnp.ndarray>cos)
        self.d.rope_sin = <const float *>cnp.PyArray_DATA(<cnp.ndarray>sin)
        self.d.layers = self.layers_
        self.d.rope_neox, self.d.ffn_gelu, self.d.qk_norm_full = rope_neox, ffn_gelu, qk_norm_full
        if not (attn_scale >= 0 and attn_softcap >= 0):
            raise ValueError(f"Decoder: attn_scale {attn_scale} and attn_softcap {attn_softcap} must be >= 0")
        self.d.attn_scale, self.d.attn_softcap = <float>attn_scale, <float>attn_softcap
        self.d.n_experts, self.d.n_experts_used = n_experts, n_experts_used
        self.d.d_ff_expert, self.d.d_ff_shared = d_ff_expert, d_ff_shared
        self.d.act_group_fe, self.d.act_group_fs = act_group_fe, act_group_fs
        self.d.expert_norm, self.d.expert_scale = expert_norm, <float>expert_scale
        self._routes_buf = None
        if n_experts:  # a placeholder for the check; forward points it at each call's array
            self._routes_buf = _np.zeros((1, n, max(n_experts_used, 1)), _np.int32)
            self.d.routes = <int32_t *>cnp.PyArray_DATA(<cnp.ndarray>self._routes_buf)
        if hc_decoder_check(&self.d) != 0:
            raise ValueError(
                f"Decoder: inconsistent model description (d_model {d_model}, heads {n_heads}/{store.n_kv_heads}"
                f" x {hd}, d_ff {d_ff}, activation groups {act_group_d}/{act_group_q}/{act_group_f}): a matrix "
                f"shape or group does not fit")
        self.n_layers, self.n_heads, self.head_dim = n, n_heads, hd
        self._keep_ranges(store)
        memset(&self.trace, 0, sizeof(hc_decoder_trace))

    cdef int _set_experts(self, Py_ssize_t i, hc_layer *L, dict ex, Py_ssize_t n_experts) except -1:
        """Point layer i's router, experts and shared gate at the products of ``ex`` (popped from it)."""
        cdef CimWeights cw
        cdef const hc_weights **gates = self.ptrs_ + 3 * i * n_experts
        cdef const hc_weights **ups = gates + n_experts
        cdef const hc_weights **downs = ups + n_experts
        router, experts, shared_gate = ex.pop("router", None), ex.pop("experts", None), ex.pop("shared_gate", None)
        if router is None or experts is None or len(experts) != n_experts:
            raise ValueError(f"Decoder: mixture-of-experts layer {i} needs a router and {n_experts} experts")
        cw = prepared(router)
        L.router = &cw.w
        self.products[i].append(cw)
        held = [x for x in experts if x is not None]
        stacked = not held or held[0][1] is None
        per_expert = []
        for e, x in enumerate(experts):
            if x is None:   # held by another die (expert parallelism): forward() calls self.remote for it
                per_expert.append([])
                self.d.remote_expert = _remote_expert_cb
                self.d.remote_ctx = <void *>self
                continue
            gate, up, down = x
            if (up is None) != stacked:
                raise ValueError(f"Decoder: layer {i} experts mix stacked and separate gate/up")
            mats = [prepared(w) for w in (gate, up, down) if w is not None]
            per_expert.append(mats)
            cw = mats[0]; gates[e] = &cw.w
            if not stacked:
                cw = mats[1]; ups[e] = &cw.w
            cw = mats[len(mats) - 1]; downs[e] = &cw.w
        L.exp_gate, L.exp_up, L.exp_down = gates, (NULL if stacked else ups), downs
        if shared_gate is not None:
            cw = prepared(shared_gate)
            L.shared_gate = &cw.w
            self.products[i].append(cw)
        self.expert_products.append(per_expert)
        return 0

    cdef int _remote(self, int64_t layer, int64_t expert, const float *h, int64_t n, float *out):
        """Run expert ``expert`` of layer ``layer`` (this decoder's index) held by another die through
        ``self.remote``; its exception is kept for :meth:`forward` to raise."""
        cdef Py_ssize_t d = self.d.d_model
        try:
            if self.remote is None:
                raise RuntimeError(f"Decoder: expert {expert} of layer {layer} is held by another die and no "
                                   f"remote runs it")
            rows = _np.empty((n, d), _np.float32)
            memcpy(cnp.PyArray_DATA(<cnp.ndarray>rows), h, <size_t>(n * d) * sizeof(float))
            y = self.remote(int(layer), int(expert), rows)
            if not _plain_f32(y, 2, False) or y.shape != (n, d):
                raise ValueError(f"Decoder: the remote expert returned {getattr(y, 'dtype', type(y))} "
                                 f"{getattr(y, 'shape', '')}, not C-contiguous float32 {(n, d)}")
            memcpy(out, cnp.PyArray_DATA(<cnp.ndarray>y), <size_t>(n * d) * sizeof(float))
            return 0
        except BaseException as exc:
            self._remote_exc = exc
            return 1

    cdef int _set_extras(self, Py_ssize_t i, hc_layer *L, dict ex, Py_ssize_t d, Py_ssize_t nh, Py_ssize_t hd,
                         KVStore store, bint qk_full) except -1:
        """Point layer i's optional block-kind fields at the arrays of ``ex`` (kept alive here)."""
        cdef Py_ssize_t qd = nh * hd, kvd = store.n_kv_heads * hd
        sizes = {"bq": qd, "bk": kvd, "bv": kvd, "q_norm": qd if qk_full else hd, "k_norm": kvd if qk_full else hd,
                 "attn_post_norm": d, "ffn_post_norm": d}
        unknown = set(ex) - set(sizes) - {"rope_cos", "rope_sin", "window"}
        if unknown:
            raise ValueError(f"Decoder: layer {i} extras {sorted(unknown)} are not block kinds")
        for key, n in sizes.items():
            a = ex.get(key)
            if a is None:
                continue
            ptr = _f32_ptr(a, n, f"layer {i} {key}")
            if key == "bq": L.bq = ptr
            elif key == "bk": L.bk = ptr
            elif key == "bv": L.bv = ptr
            elif key == "q_norm": L.q_norm = ptr
            elif key == "k_norm": L.k_norm = ptr
            elif key == "attn_post_norm": L.attn_post_norm = ptr
            else: L.ffn_post_norm = ptr
            self.keep.append(a)
        if ex.get("rope_cos") is not None or ex.get("rope_sin") is not None:
            for name in ("rope_cos", "rope_sin"):
                tab = ex.get(name)
                if not _plain_f32(tab, 2, False) or tab.shape != (store.capacity, hd // 2):
                    raise ValueError(f"Decoder: layer {i} {name} must be C-contiguous float32 "
                                     f"{(store.capacity, hd // 2)}, got {getattr(tab, 'dtype', type(tab))} "
                                     f"{getattr(tab, 'shape', '')}")
                self.keep.append(tab)
            L.rope_cos = <const float *>cnp.PyArray_DATA(<cnp.ndarray>ex["rope_cos"])
            L.rope_sin = <const float *>cnp.PyArray_DATA(<cnp.ndarray>ex["rope_sin"])
        L.window = int(ex.get("window", 0) or 0)
        if L.window < 0:
            raise ValueError(f"Decoder: layer {i} window must be >= 0, got {L.window}")
        return 0

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
            self._keep_ranges(self.store)
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
        self._keep_ranges(self.store)

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
        if events is not None:  # with experts, their regions follow the layers, head and embedding
            counts = _event_counts(events, self.n_layers + (2 + self.n_layers * self.n_experts if self.n_experts else 0))
        cdef float *xp = <float *>cnp.PyArray_DATA(<cnp.ndarray>x)
        cdef size_t lo = <size_t>xp, hi = lo + <size_t>(t * self.d.d_model * 4)
        for i in range(self.n_ranges):
            if lo < self.ranges_[2 * i + 1] and self.ranges_[2 * i] < hi:
                raise ValueError("Decoder.forward: x overlaps the KV cache, a RoPE table, a norm, a weight or an adapter "
                                 "array in memory; pass a separate array")
        cdef int rc
        routes = None
        if self.n_experts:
            routes = _np.empty((t, self.n_layers, self.d.n_experts_used), _np.int32)
            self.d.routes = <int32_t *>cnp.PyArray_DATA(<cnp.ndarray>routes)
        with nogil:
            rc = hc_decoder_layers(&self.d, xp, t, start, n_threads, &self.trace)
        if self._remote_exc is not None:
            exc, self._remote_exc = self._remote_exc, None
            raise exc
        if rc != 0:
            where = (f"layer {self.trace.failed_layer} {DECODER_OPS[self.trace.failed_op]}"
                     if self.trace.failed_op >= 0 else "setup")
            check(rc, f"Decoder.forward ({where})")
        cdef int64_t *row
        cdef Py_ssize_t e_idx
        self.last_routes = routes
        if routes is not None and counts != NULL:
            for i in range(self.n_layers):
                fired = _np.bincount(routes[:, i].ravel(), minlength=self.n_experts)
                for e in _np.nonzero(fired)[0]:
                    e_idx = int(e)
                    row = counts + (self.n_layers + 2 + i * self.n_experts + e_idx) * _N_FIELDS
                    for cw in self.expert_products[i][e_idx]:
                        _count_product(row, <CimWeights>cw, int(fired[e_idx]))
        for i in range(self.n_layers):
            self.store.filled_[i] = start + t
            if counts != NULL:
                row = counts + i * _N_FIELDS
                for cw in self.products[i]:
                    _count_product(row, <CimWeights>cw, t)
                _count_kv_write(row, t, self.store.bytes_per_token_layer)
                _count_attention(row, t, start, self.n_heads, self.head_dim, self.store.bytes_per_token_layer,
                                 self.layers_[i].window, self.d.attn_softcap > 0)
        return x
