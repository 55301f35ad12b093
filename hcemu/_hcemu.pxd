# Declarations of csrc/hcemu.h for the Cython wrappers (each section mirrors one in the header).
from libc.stdint cimport int8_t, uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef extern from "hcemu.h" nogil:
    int HC_OK, HC_EINVAL, HC_ENOMEM, HC_EUNSUPPORTED, HC_ENONFINITE, HC_ECAPACITY
    ctypedef enum hc_isa:
        HC_ISA_SCALAR, HC_ISA_AVX2, HC_ISA_AVX512VNNI, HC_ISA_COUNT
    unsigned hc_isa_supported()
    hc_isa hc_isa_active()
    int hc_isa_set(hc_isa isa)
    const char *hc_isa_name(hc_isa isa)
