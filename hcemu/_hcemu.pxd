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

# ---- compute-in-memory products (csrc/hc_cim.c)
cdef extern from "hcemu.h" nogil:
    int HC_CIM_M_CHUNK, HC_MAX_THREADS
    ctypedef struct hc_weights:
        int bits
        int group
        int asymmetric
        int64_t n, k
        int64_t n_row_tiles
        int64_t n_blocks
        const uint8_t *codes
        const uint16_t *scales
        const uint16_t *offsets
    ctypedef int (*hc_cim_fn)(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                              int64_t act_group, float *y, int32_t *dots, int n_threads)
    int hc_weights_check(const hc_weights *w)
    int hc_quantize_act(const float *x, int64_t m, int64_t k, int64_t group, int8_t *q, float *scales)
    int hc_cim_matmul(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                      int64_t act_group, float *y, int n_threads)
    int hc_cim_linear(const hc_weights *w, const float *x, int64_t m, int64_t act_group, float *y,
                      int n_threads)
    hc_cim_fn hc_cim_kernel(const hc_weights *w, hc_isa isa)
    uint64_t hc_stream_read(const uint8_t *p, int64_t nbytes, int n_threads)
    int hc_openmp()
