# Compute-in-memory products (csrc/hc_cim.c): typed const-memoryview wrappers, validated before any
# pointer is touched; every kernel call releases the GIL.  The public API is hcemu.kernels.cim.
import weakref as _weakref

import numpy as _np
cimport numpy as cnp

cnp.import_array()

from hcemu._hcemu cimport (hc_weights, hc_cim_fn, hc_weights_check, hc_quantize_act, hc_cim_kernel, hc_cim_linear,
                           hc_openmp)
from libc.stdint cimport int8_t, uint8_t, uint16_t, int32_t, int64_t

OPENMP = bool(hc_openmp())
"""True when the kernels were built with OpenMP (n_threads > 1 runs in parallel)."""

MAX_THREADS = 256
M_CHUNK = 64

from hcemu.events import FIELD_INDEX as _FIELD_INDEX, product_counts

cdef int _F_MACS_W8 = _FIELD_INDEX["macs_w8"]
cdef int _F_MACS_W4 = _FIELD_INDEX["macs_w4"]
cdef int _F_CODE = _FIELD_INDEX["rom_code_bits"]
cdef int _F_META = _FIELD_INDEX["rom_meta_bits"]
cdef int _F_TILES = _FIELD_INDEX["rom_tiles"]


def _diagnose(name, a, dtype, ndim):
    """Raise the precise TypeError/ValueError for an array that a typed memoryview refused."""
    if not isinstance(a, _np.ndarray):
        raise TypeError(f"{name} must be a numpy array of {_np.dtype(dtype)}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {_np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (shape {a.shape}, strides {a.strides})")
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writeable (shape {a.shape})")
    raise ValueError(f"{name}: unusable array (dtype {a.dtype}, shape {a.shape})")


cdef class CimWeights:
    """A :class:`hcemu.layout.PackedWeights` prepared for the C kernels (pointers checked once).

    Holds the arrays (not the PackedWeights) and the per-token-pass event increments of
    docs/events.md: ``macs``, ``code_bits``, ``meta_bits``, ``tiles``.
    """
    cdef hc_weights w
    cdef const uint8_t[:, :, ::1] _codes
    cdef const uint16_t[::1] _scales
    cdef const uint16_t[::1] _offsets
    cdef const uint8_t[::1] _lut
    cdef readonly object fmt
    cdef readonly int64_t n, k, tile_k, n_row_tiles, n_blocks
    cdef readonly int64_t macs, code_bits, meta_bits, tiles
    cdef int64_t _nbytes
    cdef int mac_field
    cdef const void *ptr_[3]       # the arrays' first bytes and sizes (outputs must not overlap them)
    cdef Py_ssize_t nbytes_[3]
    cdef int n_arrays

    def __init__(self, pw):
        from hcemu.formats import WeightFormat
        from hcemu.layout import PackedWeights, packed_arrays
        if not isinstance(pw, PackedWeights) or not isinstance(pw.fmt, WeightFormat):
            raise TypeError(f"expected a PackedWeights (with a WeightFormat), got {type(pw).__name__}")
        fmt = pw.fmt
        want = packed_arrays(fmt, pw.n, pw.k)   # the one rule for the arrays of each format
        self.n_arrays = 0
        nt, nb = want["codes"][1][:2]
        arrays = {"codes": pw.codes, "scales": pw.scales, "offsets": pw.offsets}
        for what, a in arrays.items():
            if what not in want:
                if a is not None:
                    raise ValueError(f"{what} are not allowed for {fmt.name}")
                continue
            dtype, shape = want[what]
            if (not isinstance(a, _np.ndarray) or a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous
                    or not a.flags.aligned):
                raise ValueError(f"{what} of a {pw.n}x{pw.k} {fmt.name} matrix must be C-contiguous {dtype.name} "
                                 f"{shape} (aligned), got {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}"
                                 + (f" with strides {a.strides}" if isinstance(a, _np.ndarray) else ""))
            self.ptr_[self.n_arrays] = cnp.PyArray_DATA(<cnp.ndarray>a)
            self.nbytes_[self.n_arrays] = a.nbytes
            self.n_arrays += 1
        cdef int i
        self._nbytes = 0
        for i in range(self.n_arrays):
            self._nbytes += self.nbytes_[i]
        codes = pw.codes
        if fmt.block is not None:
            self._init_block(pw, nt, nb)
            return
        self._codes = codes
        self._scales = pw.scales.view(_np.uint16).reshape(-1)
        self.w.bits = fmt.bits
        self.w.group = fmt.group
        self.w.asymmetric = 1 if fmt.asymmetric else 0
        self.w.n = pw.n
        self.w.k = pw.k
        self.w.n_row_tiles = nt
        self.w.n_blocks = nb
        self.w.codes = &self._codes[0, 0, 0]
        self.w.scales = &self._scales[0]
        self.w.offsets = NULL
        self.w.tensor_scale = 1.0
        if fmt.asymmetric:
            self._offsets = pw.offsets.view(_np.uint16).reshape(-1)
            self.w.offsets = &self._offsets[0]
        check(hc_weights_check(&self.w), "CimWeights")
        self.fmt = fmt
        self.n, self.k, self.tile_k, self.n_row_tiles, self.n_blocks = pw.n, pw.k, fmt.tile_k, nt, nb
        self._counts(fmt, pw.n, pw.k)

    def _init_block(self, pw, nt, nb):
        """A block format (k-quants, Q5_0/Q5_1, MXFP4, NVFP4): docs/numerics.md "Block formats"; the
        arrays were checked against :func:`hcemu.layout.packed_arrays`."""
        from hcemu.formats import FP4_VALUES
        fmt, bk = pw.fmt, pw.fmt.block
        n, k = pw.n, pw.k
        nb = k // 32
        self._codes = pw.codes  # the records (hcemu.layout.block_record)
        self.w.codes = &self._codes[0, 0, 0]
        self.w.bits = fmt.bits
        self.w.group = 32
        self.w.asymmetric = 0
        self.w.n, self.w.k, self.w.n_row_tiles, self.w.n_blocks = n, k, nt, nb
        self.w.block = 1
        self.w.super_k, self.w.sub_k, self.w.bias = bk.super_k, bk.sub_k, bk.bias
        self.w.scale_kind = {"f16": 0, "e8m0": 1, "ue4m3": 2}[bk.scale]
        self.w.offset_kind = {"none": 0, "dmin": 1, "min": 2}[bk.offset]
        self.w.scales = NULL
        self.w.offsets = NULL
        self.w.has_subscales = 1 if bk.has_subscales else 0
        self.w.has_submins = 1 if bk.has_submins else 0
        self.w.lut = NULL
        if bk.float_codes:
            self._lut = _np.asarray([v + bk.bias for v in FP4_VALUES], _np.uint8)
            self.w.lut = &self._lut[0]
        ts = pw.tensor_scale
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 < ts < float("inf"):
            raise ValueError(f"tensor_scale of a {fmt.name} matrix must be a positive finite number, got {ts!r}")
        self.w.tensor_scale = ts
        check(hc_weights_check(&self.w), "CimWeights")
        self.fmt = fmt
        self.n, self.k, self.tile_k, self.n_row_tiles, self.n_blocks = n, k, 32, nt, nb
        self._counts(fmt, n, k)

    def _counts(self, fmt, n, k):
        from hcemu.events import mac_field
        self.mac_field = _FIELD_INDEX[mac_field(fmt)]
        per_pass = product_counts(fmt, n, k)   # the one counting rule (hcemu.events)
        self.macs = per_pass[self.mac_field]
        self.code_bits = per_pass[_F_CODE]
        self.meta_bits = per_pass[_F_META]
        self.tiles = per_pass[_F_TILES]

    @property
    def nbytes(self):
        """Bytes one product streams: codes, scales and offsets as the host holds them (block formats:
        codes in their 4-/8-bit slots and every scale array; the ROM counts are ``code_bits`` /
        ``meta_bits``)."""
        return self._nbytes

    def __repr__(self):
        return f"CimWeights({self.fmt.name}, n={self.n}, k={self.k})"


cdef dict _PREPARED = {}


class _Forget:
    """Weakref callback dropping one cache entry."""
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __call__(self, _ref):
        _PREPARED.pop(self.key, None)


cpdef CimWeights prepared(pw):
    """The cached :class:`CimWeights` of ``pw`` (built on first use, dropped when ``pw`` dies)."""
    if isinstance(pw, CimWeights):
        return <CimWeights>pw
    cdef object key = id(pw)
    cdef object hit = _PREPARED.get(key)
    if hit is not None and (<tuple>hit)[0]() is pw:
        return <CimWeights>(<tuple>hit)[1]
    cw = CimWeights(pw)
    _PREPARED[key] = (_weakref.ref(pw, _Forget(key)), cw)
    return cw


cdef int _disjoint_weights(str fn, str name, const void *p, Py_ssize_t nbytes, CimWeights cw) except -1:
    cdef int i
    for i in range(cw.n_arrays):
        _disjoint(fn, name, p, nbytes, "the weight arrays", cw.ptr_[i], cw.nbytes_[i])
    return 0


cdef int64_t _act_group(CimWeights cw, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_groups) except -1:
    """Activation group inferred from the scale count, checked against the weights' tile width."""
    if k != cw.k:
        raise ValueError(f"activations have K={k} inputs but the {cw.n}x{cw.k} {cw.fmt.name} matrix needs K={cw.k}")
    if n_groups < 1 or k % n_groups:
        raise ValueError(f"{n_groups} activation scales per token do not divide K={k} into equal groups")
    cdef int64_t ag = k // n_groups
    if ag != k and ag % cw.tile_k:
        raise ValueError(f"activation group {ag} must be a multiple of the weight tile width {cw.tile_k} "
                         f"or the whole vector K={k}")
    return ag


cdef int _check_threads(int n_threads) except -1:
    if n_threads < 1 or n_threads > MAX_THREADS:
        raise ValueError(f"n_threads must be in 1..{MAX_THREADS}, got {n_threads}")
    return 0


cdef int _count(CimWeights cw, events, region, int64_t m) except -1:
    """Add the per-product increments times m to ``events.counts[region]``."""
    _count_product(_event_row(events, region), cw, m)
    return 0


cdef inline void _count_product(int64_t *row, CimWeights cw, int64_t m) noexcept:
    """docs/events.md: one product over m tokens reads the whole matrix once per token pass."""
    row[cw.mac_field] += cw.macs * m
    row[_F_CODE] += cw.code_bits * m
    row[_F_META] += cw.meta_bits * m
    row[_F_TILES] += cw.tiles * m


cdef hc_cim_fn _kernel(CimWeights cw, isa) except NULL:
    cdef int index = hc_isa_active() if isa is None else ISA_NAMES.index(isa)
    cdef hc_cim_fn fn = hc_cim_kernel(&cw.w, <hc_isa>index)
    if fn == NULL:
        raise ValueError(f"no kernel for {cw.fmt.name}")
    return fn


def quantize_act(x, Py_ssize_t group, q, scales):
    """Quantize float32 ``x`` (m, k) into ``q`` int8 (m, k) and ``scales`` float32 (m, k // group)."""
    cdef const float[:, ::1] xv
    cdef int8_t[:, ::1] qv
    cdef float[:, ::1] sv
    try:
        xv = x
    except (ValueError, TypeError, BufferError):
        _diagnose("x", x, _np.float32, 2)
    try:
        qv = q
    except (ValueError, TypeError, BufferError):
        _diagnose("q", q, _np.int8, 2)
    try:
        sv = scales
    except (ValueError, TypeError, BufferError):
        _diagnose("scales", scales, _np.float32, 2)
    cdef Py_ssize_t m = xv.shape[0], k = xv.shape[1]
    if k < 1 or group < 1 or k % group:
        raise ValueError(f"activation group {group} does not divide K={k} (K must be positive)")
    if qv.shape[0] != m or qv.shape[1] != k or sv.shape[0] != m or sv.shape[1] != k // group:
        raise ValueError(f"outputs must be q {(m, k)} and scales {(m, k // group)}, got "
                         f"{(qv.shape[0], qv.shape[1])} and {(sv.shape[0], sv.shape[1])}")
    if m == 0:
        return
    if _misaligned(&xv[0, 0], 4):
        xv = _np.array(xv)   # an aligned copy: the kernels read through typed pointers
    _aligned("quantize_act", "scales", &sv[0, 0], 4)
    _disjoint("quantize_act", "q", &qv[0, 0], m * k, "x", &xv[0, 0], m * k * 4)
    _disjoint("quantize_act", "scales", &sv[0, 0], m * (k // group) * 4, "x", &xv[0, 0], m * k * 4)
    _disjoint("quantize_act", "scales", &sv[0, 0], m * (k // group) * 4, "q", &qv[0, 0], m * k)
    cdef int rc
    with nogil:
        rc = hc_quantize_act(&xv[0, 0], m, k, group, &qv[0, 0], &sv[0, 0])
    check(rc, "quantize_activations")


def cim_matmul(q, act_scales, pw, *, out=None, int n_threads=1, events=None, region=None, isa=None, dots=None):
    """float32 (m, n) product of int8 activations ``q`` (m, k) and float32 ``act_scales`` (m, k // Ga)
    with the ROM matrix ``pw`` (a PackedWeights of n x k, or its prepared CimWeights).

    The activation group Ga = k // act_scales.shape[1] must be a multiple of the weights' tile width
    or k. ``out`` (m, n) float32 C-contiguous is written and returned if given. ``n_threads``
    (1..256) splits row tiles over threads (identical results; at most one thread per 4 MiB of
    weights, HC_CIM_BYTES_PER_THREAD). With ``events`` (hcemu.events.Events)
    and ``region``, adds the per-product counts of docs/events.md times m. Testing hooks: ``isa``
    (a path name) forces one ISA path; ``dots`` (int32 (m, n_row_tiles*16, n_blocks)) receives the
    exact integer block sums D of docs/numerics.md.
    """
    cdef CimWeights cw = prepared(pw)
    cdef const int8_t[:, ::1] qv
    cdef const float[:, ::1] sv
    cdef float[:, ::1] yv
    cdef int32_t[:, :, ::1] dv
    cdef int32_t *dp = NULL
    try:
        qv = q
    except (ValueError, TypeError, BufferError):
        _diagnose("q", q, _np.int8, 2)
    try:
        sv = act_scales
    except (ValueError, TypeError, BufferError):
        _diagnose("act_scales", act_scales, _np.float32, 2)
    cdef Py_ssize_t m = qv.shape[0]
    if sv.shape[0] != m:
        raise ValueError(f"act_scales has {sv.shape[0]} rows for {m} tokens")
    cdef int64_t ag = _act_group(cw, m, qv.shape[1], sv.shape[1])
    _check_threads(n_threads)
    if out is None:
        out = _np.empty((m, cw.n), _np.float32)
    try:
        yv = out
    except (ValueError, TypeError, BufferError):
        _diagnose("out", out, _np.float32, 2)
    if yv.shape[0] != m or yv.shape[1] != cw.n:
        raise ValueError(f"out must be {(m, cw.n)}, got {(yv.shape[0], yv.shape[1])}")
    if dots is not None:
        try:
            dv = dots
        except (ValueError, TypeError, BufferError):
            _diagnose("dots", dots, _np.int32, 3)
        if dv.shape[0] != m or dv.shape[1] != cw.n_row_tiles * 16 or dv.shape[2] != cw.n_blocks:
            raise ValueError(f"dots must be {(m, cw.n_row_tiles * 16, cw.n_blocks)}")
        if m:
            dp = &dv[0, 0, 0]
    cdef hc_cim_fn fn = _kernel(cw, isa)
    cdef int rc = 0
    cdef Py_ssize_t k = qv.shape[1], ny = m * cw.n * 4, nd = m * cw.n_row_tiles * 16 * cw.n_blocks * 4
    if m:
        if _misaligned(&sv[0, 0], 4):
            sv = _np.array(sv)   # an aligned copy: the kernels read through typed pointers
        _aligned("cim_matmul", "out", &yv[0, 0], 4)
        _disjoint("cim_matmul", "out", &yv[0, 0], ny, "q", &qv[0, 0], m * k)
        _disjoint("cim_matmul", "out", &yv[0, 0], ny, "act_scales", &sv[0, 0], m * sv.shape[1] * 4)
        _disjoint_weights("cim_matmul", "out", &yv[0, 0], ny, cw)
        if dp != NULL:
            _aligned("cim_matmul", "dots", dp, 4)
            _disjoint("cim_matmul", "dots", dp, nd, "out", &yv[0, 0], ny)
            _disjoint("cim_matmul", "dots", dp, nd, "q", &qv[0, 0], m * k)
            _disjoint("cim_matmul", "dots", dp, nd, "act_scales", &sv[0, 0], m * sv.shape[1] * 4)
            _disjoint_weights("cim_matmul", "dots", dp, nd, cw)
        with nogil:
            rc = fn(&cw.w, &qv[0, 0], &sv[0, 0], m, ag, &yv[0, 0], dp, n_threads)
        if rc:  # the message is formatted only on failure (per-call cost at decode)
            check(rc, f"cim_matmul({cw.fmt.name})")
        if events is not None:
            _count(cw, events, region, m)
    return out


def cim_linear(x, Py_ssize_t act_group, pw, *, out=None, int n_threads=1, events=None, region=None):
    """Fused quantize + product of float32 ``x`` (m, k) in one C call (hc_cim_linear, active ISA):
    quantize_activations(x, act_group) then cim_matmul, same arguments and result (float32 (m, n))."""
    cdef CimWeights cw = prepared(pw)
    cdef const float[:, ::1] xv
    cdef float[:, ::1] yv
    try:
        xv = x
    except (ValueError, TypeError, BufferError):
        _diagnose("x", x, _np.float32, 2)
    cdef Py_ssize_t m = xv.shape[0], k = xv.shape[1]
    if k < 1 or act_group < 1 or k % act_group:
        raise ValueError(f"activation group {act_group} does not divide K={k} (K must be positive)")
    cdef int64_t ag = _act_group(cw, m, k, k // act_group)
    _check_threads(n_threads)
    if out is None:
        out = _np.empty((m, cw.n), _np.float32)
    try:
        yv = out
    except (ValueError, TypeError, BufferError):
        _diagnose("out", out, _np.float32, 2)
    if yv.shape[0] != m or yv.shape[1] != cw.n:
        raise ValueError(f"out must be {(m, cw.n)}, got {(yv.shape[0], yv.shape[1])}")
    cdef int rc = 0
    if m:
        if _misaligned(&xv[0, 0], 4):
            xv = _np.array(xv)   # an aligned copy: the kernels read through typed pointers
        _aligned("cim_linear", "out", &yv[0, 0], 4)
        _disjoint("cim_linear", "out", &yv[0, 0], m * cw.n * 4, "x", &xv[0, 0], m * k * 4)
        _disjoint_weights("cim_linear", "out", &yv[0, 0], m * cw.n * 4, cw)
        with nogil:
            rc = hc_cim_linear(&cw.w, &xv[0, 0], m, ag, &yv[0, 0], n_threads)
        if rc:  # the message is formatted only on failure (per-call cost at decode)
            check(rc, f"cim_linear({cw.fmt.name})")
        if events is not None:
            _count(cw, events, region, m)
    return out

