# The chip's vector unit (csrc/hc_vec.c): float32 RMSNorm, RoPE, SiLU-gate product, residual add.
# Rules: docs/numerics.md "Vector unit". Public names re-exported by hcemu.kernels.vector.
import numpy as _np
from libc.stdint cimport int8_t, uint16_t, int32_t, int64_t
from hcemu._hcemu cimport (hc_exp_f32_array, hc_f32_to_f16_array, hc_rmsnorm_f32, hc_rope_f32,
                           hc_silu_mul_f32, hc_add_f32, hc_rope_style_f32, hc_gelu_mul_f32, hc_add_rows_f32,
                           hc_scale_f32, hc_softcap_f32, hc_moe_route_f32, hc_axpy_rows_f32, hc_sigmoid_f32)


_BUF_ERRORS = (TypeError, ValueError, BufferError)


cdef object _arg_error(str fn, str name, object a, object dtype, int ndim, bint writable=False):
    """The exception for an argument a typed memoryview refused: TypeError for the wrong type or
    dtype, ValueError for the wrong number of dimensions, non-contiguity or read-only output."""
    want = f"a C-contiguous {_np.dtype(dtype).name} array with {ndim} dimension{'s' if ndim > 1 else ''}"
    if not isinstance(a, _np.ndarray):
        return TypeError(f"{fn}: {name} must be {want}, got {type(a).__name__}")
    if a.dtype != dtype:
        return TypeError(f"{fn}: {name} must be {want}, got dtype {a.dtype} shape {a.shape}")
    if a.ndim != ndim:
        return ValueError(f"{fn}: {name} must be {want}, got shape {a.shape}")
    if not a.flags.c_contiguous:
        return ValueError(f"{fn}: {name} must be {want}; it is not C-contiguous (shape {a.shape}, "
                          f"strides {a.strides})")
    if writable and not a.flags.writeable:
        return ValueError(f"{fn}: {name} is read-only (shape {a.shape})")
    return ValueError(f"{fn}: {name} must be {want}, got shape {a.shape}")


cdef inline object _shape_error(str fn, str name, tuple got, tuple want):
    return ValueError(f"{fn}: {name} has shape {got}, expected {want}")


def rmsnorm(x, w, double eps, out=None):
    """RMSNorm over the last axis: ``y = (x * rsqrt(mean(x^2) + eps)) * w``.

    x: float32 (m, d); w: float32 (d,); eps: added to the mean square (rounded to float32).
    out: optional float32 (m, d) (may be ``x``). Returns ``out``. Sum order: docs/numerics.md.
    """
    cdef const float[:, ::1] xv
    cdef const float[::1] wv
    cdef float[:, ::1] ov
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("rmsnorm", "x", x, _np.float32, 2) from None
    try:
        wv = w
    except _BUF_ERRORS:
        raise _arg_error("rmsnorm", "w", w, _np.float32, 1) from None
    cdef Py_ssize_t m = xv.shape[0], d = xv.shape[1]
    if wv.shape[0] != d or d == 0:
        raise ValueError(f"rmsnorm: w has {wv.shape[0]} values, x rows have {d} (must match, > 0)")
    if out is None:
        out = _np.empty((m, d), _np.float32)
    try:
        ov = out
    except _BUF_ERRORS:
        raise _arg_error("rmsnorm", "out", out, _np.float32, 2, True) from None
    if ov.shape[0] != m or ov.shape[1] != d:
        raise _shape_error("rmsnorm", "out", out.shape, (m, d))
    if not 0 <= eps <= 1e30:
        raise ValueError(f"rmsnorm: eps must be finite and >= 0, got {eps}")
    cdef float feps = <float>eps
    cdef int rc = 0
    if m:
        if _misaligned(&xv[0, 0], 4):
            xv = _np.array(xv)   # an aligned copy: the kernels read through typed pointers
        if _misaligned(&wv[0], 4):
            wv = _np.array(wv)
        _aligned("rmsnorm", "out", &ov[0, 0], 4)
        _disjoint("rmsnorm", "out", &ov[0, 0], m * d * 4, "x", &xv[0, 0], m * d * 4, True)
        _disjoint("rmsnorm", "out", &ov[0, 0], m * d * 4, "w", &wv[0], d * 4)
        with nogil:
            rc = hc_rmsnorm_f32(&xv[0, 0], &wv[0], m, d, feps, &ov[0, 0])
        check(rc, "rmsnorm")
    return out


def rope(x, cos, sin, out=None, style="normal"):
    """Rotate pairs of every head by angle ``j``: style ``"normal"`` (GGUF llama) the consecutive
    pairs ``(x[2j], x[2j+1])``, ``"neox"`` the halves ``(x[j], x[j + head_dim/2])``.

    x: float32 (t, heads, head_dim), head_dim even; cos, sin: float32 (t, head_dim // 2), the
    tables of the tokens' positions. out: optional float32 like x (may be ``x``). Returns ``out``.
    """
    cdef int neox
    if style == "normal":
        neox = 0
    elif style == "neox":
        neox = 1
    else:
        raise ValueError(f"rope: style must be 'normal' or 'neox', got {style!r}")
    cdef const float[:, :, ::1] xv
    cdef const float[:, ::1] cv, sv
    cdef float[:, :, ::1] ov
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("rope", "x", x, _np.float32, 3) from None
    try:
        cv = cos
    except _BUF_ERRORS:
        raise _arg_error("rope", "cos", cos, _np.float32, 2) from None
    try:
        sv = sin
    except _BUF_ERRORS:
        raise _arg_error("rope", "sin", sin, _np.float32, 2) from None
    cdef Py_ssize_t t = xv.shape[0], heads = xv.shape[1], hd = xv.shape[2]
    if hd % 2 or hd == 0:
        raise ValueError(f"rope: head_dim must be even and > 0, got x shape {x.shape}")
    if cv.shape[0] != t or cv.shape[1] != hd // 2:
        raise _shape_error("rope", "cos", cos.shape, (t, hd // 2))
    if sv.shape[0] != t or sv.shape[1] != hd // 2:
        raise _shape_error("rope", "sin", sin.shape, (t, hd // 2))
    if out is None:
        out = _np.empty((t, heads, hd), _np.float32)
    try:
        ov = out
    except _BUF_ERRORS:
        raise _arg_error("rope", "out", out, _np.float32, 3, True) from None
    if ov.shape[0] != t or ov.shape[1] != heads or ov.shape[2] != hd:
        raise _shape_error("rope", "out", out.shape, (t, heads, hd))
    cdef int rc = 0
    cdef Py_ssize_t nx = t * heads * hd * 4, nt = t * (hd // 2) * 4
    if t and heads:
        if _misaligned(&xv[0, 0, 0], 4):
            xv = _np.array(xv)   # an aligned copy: the kernels read through typed pointers
        if _misaligned(&cv[0, 0], 4):
            cv = _np.array(cv)
        if _misaligned(&sv[0, 0], 4):
            sv = _np.array(sv)
        _aligned("rope", "out", &ov[0, 0, 0], 4)
        _disjoint("rope", "out", &ov[0, 0, 0], nx, "x", &xv[0, 0, 0], nx, True)
        _disjoint("rope", "out", &ov[0, 0, 0], nx, "cos", &cv[0, 0], nt)
        _disjoint("rope", "out", &ov[0, 0, 0], nx, "sin", &sv[0, 0], nt)
        with nogil:
            rc = hc_rope_style_f32(&xv[0, 0, 0], &cv[0, 0], &sv[0, 0], t, heads, hd, neox, &ov[0, 0, 0])
        check(rc, "rope")
    return out


def silu_mul(gate, up, out=None):
    """``silu(gate) * up = (gate / (1 + exp(-gate))) * up``, float32 (m, f). Returns ``out``."""
    return _gate_mul("silu_mul", gate, up, out, 0)


def gelu_mul(gate, up, out=None):
    """``gelu(gate) * up`` (GELU's tanh approximation in the unit's float32, docs/numerics.md),
    float32 (m, f). Returns ``out``."""
    return _gate_mul("gelu_mul", gate, up, out, 1)


cdef object _gate_mul(str fn, gate, up, out, int gelu):
    cdef const float[:, ::1] gv, uv
    cdef float[:, ::1] ov
    try:
        gv = gate
    except _BUF_ERRORS:
        raise _arg_error(fn, "gate", gate, _np.float32, 2) from None
    try:
        uv = up
    except _BUF_ERRORS:
        raise _arg_error(fn, "up", up, _np.float32, 2) from None
    cdef Py_ssize_t m = gv.shape[0], f = gv.shape[1]
    if uv.shape[0] != m or uv.shape[1] != f:
        raise _shape_error(fn, "up", up.shape, (m, f))
    if out is None:
        out = _np.empty((m, f), _np.float32)
    try:
        ov = out
    except _BUF_ERRORS:
        raise _arg_error(fn, "out", out, _np.float32, 2, True) from None
    if ov.shape[0] != m or ov.shape[1] != f:
        raise _shape_error(fn, "out", out.shape, (m, f))
    cdef int rc = 0
    if m and f:
        if _misaligned(&gv[0, 0], 4):
            gv = _np.array(gv)   # an aligned copy: the kernels read through typed pointers
        if _misaligned(&uv[0, 0], 4):
            uv = _np.array(uv)
        _aligned(fn, "out", &ov[0, 0], 4)
        _disjoint(fn, "out", &ov[0, 0], m * f * 4, "gate", &gv[0, 0], m * f * 4, True)
        _disjoint(fn, "out", &ov[0, 0], m * f * 4, "up", &uv[0, 0], m * f * 4, True)
        with nogil:
            if gelu:
                rc = hc_gelu_mul_f32(&gv[0, 0], &uv[0, 0], m * f, &ov[0, 0])
            else:
                rc = hc_silu_mul_f32(&gv[0, 0], &uv[0, 0], m * f, &ov[0, 0])
        check(rc, fn)
    return out


def add_(x, y):
    """Residual add in place: ``x += y``; x, y float32 (m, d). Returns ``x``."""
    cdef float[:, ::1] xv
    cdef const float[:, ::1] yv
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("add_", "x", x, _np.float32, 2, True) from None
    try:
        yv = y
    except _BUF_ERRORS:
        raise _arg_error("add_", "y", y, _np.float32, 2) from None
    if yv.shape[0] != xv.shape[0] or yv.shape[1] != xv.shape[1]:
        raise _shape_error("add_", "y", y.shape, x.shape)
    cdef int rc = 0
    cdef Py_ssize_t nb = xv.shape[0] * xv.shape[1] * 4
    if xv.shape[0] and xv.shape[1]:
        _aligned("add_", "x", &xv[0, 0], 4)
        if _misaligned(&yv[0, 0], 4):
            yv = _np.array(yv)   # an aligned copy: the kernels read through typed pointers
        _disjoint("add_", "x", &xv[0, 0], nb, "y", &yv[0, 0], nb, True)
        with nogil:
            rc = hc_add_f32(&xv[0, 0], &yv[0, 0], xv.shape[0] * xv.shape[1])
        check(rc, "add_")
    return x


def add_rows_(x, b):
    """Bias add in place: ``x[i, :] += b``; x float32 (m, n), b float32 (n,). Returns ``x``."""
    cdef float[:, ::1] xv
    cdef const float[::1] bv
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("add_rows_", "x", x, _np.float32, 2, True) from None
    try:
        bv = b
    except _BUF_ERRORS:
        raise _arg_error("add_rows_", "b", b, _np.float32, 1) from None
    if bv.shape[0] != xv.shape[1]:
        raise _shape_error("add_rows_", "b", b.shape, (xv.shape[1],))
    cdef int rc = 0
    if xv.shape[0] and xv.shape[1]:
        _aligned("add_rows_", "x", &xv[0, 0], 4)
        if _misaligned(&bv[0], 4):
            bv = _np.array(bv)   # an aligned copy: the kernels read through typed pointers
        _disjoint("add_rows_", "x", &xv[0, 0], xv.shape[0] * xv.shape[1] * 4, "b", &bv[0], bv.shape[0] * 4)
        with nogil:
            rc = hc_add_rows_f32(&xv[0, 0], &bv[0], xv.shape[0], xv.shape[1])
        check(rc, "add_rows_")
    return x


def scale_(x, double s):
    """``x *= s`` in place (s rounded to float32); x float32, C-contiguous, any shape. Returns ``x``."""
    if not (isinstance(x, _np.ndarray) and x.dtype == _np.float32 and x.flags.c_contiguous and x.flags.writeable
            and x.flags.aligned):
        raise TypeError(f"scale_: x must be a writeable, aligned, C-contiguous float32 array, got {type(x).__name__}"
                        f" {getattr(x, 'dtype', '')}")
    if not -3.4e38 <= s <= 3.4e38:
        raise ValueError(f"scale_: s must be a finite float32 value, got {s}")
    cdef float[::1] xv = x.reshape(-1)
    cdef float fs = <float>s
    cdef int rc = 0
    if xv.shape[0]:
        with nogil:
            rc = hc_scale_f32(&xv[0], fs, xv.shape[0])
        check(rc, "scale_")
    return x


def softcap_(x, double cap):
    """Soft-capping in place: ``x = tanh(x * (1/cap)) * cap`` in the unit's float32 (cap > 0,
    rounded to float32); x float32, C-contiguous, any shape. Returns ``x``."""
    if not (isinstance(x, _np.ndarray) and x.dtype == _np.float32 and x.flags.c_contiguous and x.flags.writeable
            and x.flags.aligned):
        raise TypeError(f"softcap_: x must be a writeable, aligned, C-contiguous float32 array, got {type(x).__name__}"
                        f" {getattr(x, 'dtype', '')}")
    if not 0 < cap <= 3.4e38:
        raise ValueError(f"softcap_: cap must be positive and finite, got {cap}")
    cdef float[::1] xv = x.reshape(-1)
    cdef float fc = <float>cap
    cdef int rc = 0
    if xv.shape[0]:
        with nogil:
            rc = hc_softcap_f32(&xv[0], fc, xv.shape[0])
        check(rc, "softcap_")
    return x


def moe_route(logits, int k, bint norm=False, double scale=1.0):
    """Mixture-of-experts routing (docs/numerics.md): logits float32 (t, n_experts) -> (experts int32
    (t, k), weights float32 (t, k)): the k largest logits, descending, the lower expert first on ties;
    their softmax probabilities, renormalized to sum 1 when ``norm``, times ``scale``."""
    cdef const float[:, ::1] lv
    try:
        lv = logits
    except _BUF_ERRORS:
        raise _arg_error("moe_route", "logits", logits, _np.float32, 2) from None
    cdef Py_ssize_t t = lv.shape[0], E = lv.shape[1]
    if not 1 <= k <= E:
        raise ValueError(f"moe_route: k must be in 1..{E} (the experts), got {k}")
    if not 0 < scale <= 3.4e38:
        raise ValueError(f"moe_route: scale must be positive and finite, got {scale}")
    sel = _np.empty((t, k), _np.int32)
    w = _np.empty((t, k), _np.float32)
    cdef int32_t[:, ::1] sv = sel
    cdef float[:, ::1] wv = w
    cdef float fs = <float>scale
    cdef int rc = 0
    if t:
        if E and _misaligned(&lv[0, 0], 4):
            lv = _np.array(lv)   # an aligned copy: the kernels read through typed pointers
        with nogil:
            rc = hc_moe_route_f32(&lv[0, 0], t, E, k, 1 if norm else 0, fs, &sv[0, 0], &wv[0, 0])
        check(rc, "moe_route (router logits must be finite)")
    return sel, w


def axpy_rows_(y, x, w):
    """``y[i, :] += x[i, :] * w[i]`` in place; y, x float32 (m, n), w float32 (m,). Returns ``y``."""
    cdef float[:, ::1] yv
    cdef const float[:, ::1] xv
    cdef const float[::1] wv
    try:
        yv = y
    except _BUF_ERRORS:
        raise _arg_error("axpy_rows_", "y", y, _np.float32, 2, True) from None
    try:
        xv = x
    except _BUF_ERRORS:
        raise _arg_error("axpy_rows_", "x", x, _np.float32, 2) from None
    try:
        wv = w
    except _BUF_ERRORS:
        raise _arg_error("axpy_rows_", "w", w, _np.float32, 1) from None
    if xv.shape[0] != yv.shape[0] or xv.shape[1] != yv.shape[1]:
        raise _shape_error("axpy_rows_", "x", x.shape, y.shape)
    if wv.shape[0] != yv.shape[0]:
        raise _shape_error("axpy_rows_", "w", w.shape, (yv.shape[0],))
    cdef int rc = 0
    cdef Py_ssize_t ny = yv.shape[0] * yv.shape[1] * 4
    if yv.shape[0] and yv.shape[1]:
        _aligned("axpy_rows_", "y", &yv[0, 0], 4)
        if _misaligned(&xv[0, 0], 4):
            xv = _np.array(xv)   # an aligned copy: the kernels read through typed pointers
        if _misaligned(&wv[0], 4):
            wv = _np.array(wv)
        _disjoint("axpy_rows_", "y", &yv[0, 0], ny, "x", &xv[0, 0], ny, True)
        _disjoint("axpy_rows_", "y", &yv[0, 0], ny, "w", &wv[0], yv.shape[0] * 4)
        with nogil:
            rc = hc_axpy_rows_f32(&yv[0, 0], &xv[0, 0], &wv[0], yv.shape[0], yv.shape[1])
        check(rc, "axpy_rows_")
    return y


def sigmoid_(x):
    """``x = 1 / (1 + exp(-x))`` in place (the unit's exp); x float32, C-contiguous. Returns ``x``."""
    if not (isinstance(x, _np.ndarray) and x.dtype == _np.float32 and x.flags.c_contiguous and x.flags.writeable
            and x.flags.aligned):
        raise TypeError(f"sigmoid_: x must be a writeable, aligned, C-contiguous float32 array, got {type(x).__name__}"
                        f" {getattr(x, 'dtype', '')}")
    cdef float[::1] xv = x.reshape(-1)
    if xv.shape[0]:
        with nogil:
            hc_sigmoid_f32(&xv[0], xv.shape[0])
    return x


def exp_f32(x):
    """The vector unit's exp over a float32 array (any shape); for tests of the numerics."""
    a = _np.ascontiguousarray(x, dtype=_np.float32)
    out = _np.empty_like(a)
    cdef const float[::1] av = a.reshape(-1)
    cdef float[::1] ov = out.reshape(-1)
    if av.shape[0]:
        with nogil:
            hc_exp_f32_array(&av[0], av.shape[0], &ov[0])
    return out


def f32_to_f16_bits(x):
    """IEEE binary16 bits (uint16) of a float32 array, rounded to nearest even as the chip does."""
    a = _np.ascontiguousarray(x, dtype=_np.float32)
    out = _np.empty(a.shape, _np.uint16)
    cdef const float[::1] av = a.reshape(-1)
    cdef uint16_t[::1] ov = out.reshape(-1)
    if av.shape[0]:
        with nogil:
            hc_f32_to_f16_array(&av[0], av.shape[0], &ov[0])
    return out
