# Fixed-width names matching numpy, plus the aliases hcemu's kernels speak in.
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, uint32_t, int64_t, uint64_t

ctypedef int8_t i8_t       # int8 weights and activations
ctypedef uint8_t u8_t      # packed ROM codes (int4 pairs, int8 bytes)
ctypedef uint16_t f16_t    # IEEE half, stored as the silicon holds scales
ctypedef int32_t acc_t     # exact integer accumulators
ctypedef float f32_t       # vector-unit floats
ctypedef uint64_t addr_t   # ROM bit addresses
ctypedef int64_t count_t   # event counters
