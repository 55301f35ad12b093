# Run-time ISA selection and the C status -> Python exception mapping shared by all wrappers.
from hcemu._hcemu cimport (hc_isa, hc_isa_supported, hc_isa_active, hc_isa_set, hc_isa_name,
                           HC_ISA_COUNT, HC_OK, HC_EINVAL, HC_ENOMEM, HC_EUNSUPPORTED,
                           HC_ENONFINITE, HC_ECAPACITY)


cdef int check(int rc, str what) except -1:
    """Raise the Python exception for a C status code ``rc`` returned by kernel ``what``."""
    if rc == HC_OK:
        return 0
    if rc == HC_EINVAL:
        raise ValueError(f"{what}: invalid argument")
    if rc == HC_ENOMEM:
        raise MemoryError(f"{what}: out of memory")
    if rc == HC_EUNSUPPORTED:
        raise RuntimeError(f"{what}: instruction-set path not supported by this CPU")
    if rc == HC_ENONFINITE:
        raise ValueError(f"{what}: input holds NaN or infinity")
    if rc == HC_ECAPACITY:
        raise OverflowError(f"{what}: capacity exceeded")
    raise RuntimeError(f"{what}: C status {rc}")


ISA_NAMES = tuple(hc_isa_name(<hc_isa>i).decode() for i in range(<int>HC_ISA_COUNT))


def isa_supported():
    """Names of the ISA paths this CPU can run, scalar first."""
    cdef unsigned mask = hc_isa_supported()
    return [ISA_NAMES[i] for i in range(<int>HC_ISA_COUNT) if mask & (1u << i)]


def isa_active():
    """Name of the path the kernels dispatch to now."""
    return ISA_NAMES[<int>hc_isa_active()]


def isa_set(str name):
    """Make ``name`` the active path for the whole process."""
    if name not in ISA_NAMES:
        raise ValueError(f"unknown ISA path {name!r}; known: {', '.join(ISA_NAMES)}")
    cdef int index = ISA_NAMES.index(name)
    cdef int rc = hc_isa_set(<hc_isa>index)
    if rc == HC_EUNSUPPORTED:
        raise RuntimeError(f"ISA path {name!r} is not supported on this machine "
                           f"(supported: {', '.join(isa_supported())})")
    check(rc, "isa_set")


# ---- memory checks shared by the wrappers: C kernels read through typed pointers, so an input at an odd
# byte offset is copied to aligned memory and an output must be aligned; an output must not overlap an
# input (or must be the very same buffer, where a kernel documents in-place use), else the results would
# be silently wrong.
cdef inline bint _overlap(const void *a, Py_ssize_t na, const void *b, Py_ssize_t nb) noexcept nogil:
    cdef size_t pa = <size_t>a, pb = <size_t>b
    return na > 0 and nb > 0 and pa < pb + <size_t>nb and pb < pa + <size_t>na


cdef int _disjoint(str fn, str out_name, const void *o, Py_ssize_t on, str in_name, const void *i,
                   Py_ssize_t inn, bint same_ok=False) except -1:
    """Raise ValueError when the out buffer [o, o+on) overlaps the input [i, i+inn) (the very same
    buffer is allowed with ``same_ok``: in-place use)."""
    if _overlap(o, on, i, inn) and not (same_ok and o == i and on == inn):
        raise ValueError(f"{fn}: {out_name} overlaps {in_name} in memory"
                         + (" (in-place use needs the very same array)" if same_ok else "")
                         + "; pass separate arrays")
    return 0


cdef inline bint _misaligned(const void *p, size_t align) noexcept nogil:
    return ((<size_t>p) & (align - 1)) != 0


cdef int _aligned(str fn, str name, const void *p, size_t align) except -1:
    """Outputs (and the KV cache's storage) must be aligned; misaligned inputs are copied instead."""
    if _misaligned(p, align):
        raise ValueError(f"{fn}: {name} is not aligned to {align} bytes (a view at an odd byte offset); "
                         f"pass an aligned array")
    return 0

