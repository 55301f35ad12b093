# LoRA adapters held in SRAM (csrc/hc_lora.c): one adapted matrix per CimAdapter; the public API is
# hcemu.kernels.lora.
from hcemu._hcemu cimport hc_adapter, hc_adapter_check, hc_adapter_apply


cdef class CimAdapter:
    """One adapted matrix (n x k, rank r) in the SRAM form the kernels read.

    int8 form: ``a`` and ``b`` are int8 :class:`hcemu.layout.PackedWeights` of r x k and n x r (the
    adapter scale already folded into b's scales). fp16 form: ``a`` float16 (r, k) and ``b`` float16
    (n, r) arrays. ``fmt`` is ``"int8"`` or ``"fp16"``.
    """
    cdef hc_adapter ad
    cdef CimWeights a_cw, b_cw
    cdef object a32, b32
    cdef readonly object fmt, a, b
    cdef readonly int64_t n, k, rank

    def __init__(self, a, b):
        cdef cnp.ndarray arr
        if isinstance(a, _np.ndarray) or isinstance(b, _np.ndarray):
            for what, x in (("a", a), ("b", b)):
                if not isinstance(x, _np.ndarray) or x.dtype != _np.float16 or x.ndim != 2:
                    raise TypeError(f"CimAdapter: fp16 {what} must be a 2-D float16 array, got "
                                    f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
            r, k = a.shape
            n = b.shape[0]
            if b.shape[1] != r or r < 1 or k < 1 or n < 1:
                raise ValueError(f"CimAdapter: a {a.shape} and b {b.shape} must be (r, k) and (n, r), r >= 1")
            self.fmt = "fp16"
            self.a32 = _np.ascontiguousarray(a, dtype=_np.float32)
            self.b32 = _np.ascontiguousarray(b, dtype=_np.float32)
            self.ad.fp16 = 1
            arr = self.a32
            self.ad.a32 = <const float *>cnp.PyArray_DATA(arr)
            arr = self.b32
            self.ad.b32 = <const float *>cnp.PyArray_DATA(arr)
        else:
            self.a_cw, self.b_cw = prepared(a), prepared(b)
            if self.a_cw.fmt.bits != 8 or self.b_cw.fmt.bits != 8:
                raise ValueError(f"CimAdapter: int8 adapters need int8 matrices, got {self.a_cw.fmt.name}, "
                                 f"{self.b_cw.fmt.name}")
            r, k, n = self.a_cw.n, self.a_cw.k, self.b_cw.n
            if self.b_cw.k != r and not (r < 32 and self.b_cw.k == 32 and not self.b_cw.fmt.per_channel):
                raise ValueError(f"CimAdapter: a is {r}x{k} but b is {n}x{self.b_cw.k}: b needs {r} inputs "
                                 f"(or, for r < 32, one zero-padded block of 32)")
            self.fmt = "int8"
            self.ad.fp16 = 0
            self.ad.a = &self.a_cw.w
            self.ad.b = &self.b_cw.w
        self.a, self.b = a, b
        self.ad.n, self.ad.k, self.ad.rank = n, k, r
        self.n, self.k, self.rank = n, k, r
        check(hc_adapter_check(&self.ad), "CimAdapter")

    def __repr__(self):
        return f"CimAdapter({self.fmt}, n={self.n}, k={self.k}, rank={self.rank})"


def adapter_apply(CimAdapter ad, q, act_scales, x, y, Py_ssize_t col=0):
    """``y[:, col:col+n] += B (A x)`` for m tokens (docs/numerics.md "LoRA adapters").

    int8 form: ``q`` int8 (m, k) and ``act_scales`` float32 (m, k // Ga), the ROM product's activations
    (``x`` may be None). fp16 form: ``x`` float32 (m, k) (``q``, ``act_scales`` may be None).
    ``y``: writeable C-contiguous float32 (m, >= col + n).
    """
    cdef const int8_t[:, ::1] qv
    cdef const float[:, ::1] sv
    cdef const float[:, ::1] xv
    cdef float[:, ::1] yv
    try:
        yv = y
    except (ValueError, TypeError, BufferError):
        _diagnose("y", y, _np.float32, 2)
    cdef Py_ssize_t m = yv.shape[0], ld = yv.shape[1]
    if col < 0 or col + ad.n > ld:
        raise ValueError(f"adapter_apply: columns [{col}, {col + ad.n}) do not fit y with {ld} columns")
    cdef const int8_t *qp = NULL
    cdef const float *sp = NULL
    cdef const float *xp = NULL
    cdef int64_t ag = 0
    if ad.ad.fp16:
        try:
            xv = x
        except (ValueError, TypeError, BufferError):
            _diagnose("x", x, _np.float32, 2)
        if xv.shape[0] != m or xv.shape[1] != ad.k:
            raise ValueError(f"adapter_apply: x must be {(m, ad.k)}, got {(xv.shape[0], xv.shape[1])}")
        if m:
            xp = &xv[0, 0]
    else:
        try:
            qv = q
        except (ValueError, TypeError, BufferError):
            _diagnose("q", q, _np.int8, 2)
        try:
            sv = act_scales
        except (ValueError, TypeError, BufferError):
            _diagnose("act_scales", act_scales, _np.float32, 2)
        if qv.shape[0] != m or sv.shape[0] != m:
            raise ValueError(f"adapter_apply: q has {qv.shape[0]} rows, act_scales {sv.shape[0]}, y {m}")
        ag = _act_group(ad.a_cw, m, qv.shape[1], sv.shape[1])
        if m:
            qp, sp = &qv[0, 0], &sv[0, 0]
    if m == 0:
        return y
    cdef int rc
    with nogil:
        rc = hc_adapter_apply(&ad.ad, qp, sp, ag, xp, m, &yv[0, col], ld)
    if rc:
        check(rc, f"adapter_apply({ad.fmt}, {ad.n}x{ad.k}, rank {ad.rank})")
    return y
