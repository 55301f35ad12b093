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
