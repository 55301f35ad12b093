# The benchmarks' bandwidth peer (csrc/hc_bench.c), not a chip kernel: hcemu.bench.kernels holds the
# CIM products to the rate of this plain read of the same bytes.
from hcemu._hcemu cimport hc_stream_read
from libc.stdint cimport uint8_t, uint64_t


def stream_read(buf, int n_threads=1):
    """Read every byte of the uint8 buffer ``buf`` (1-D, contiguous) once; returns a checksum.

    The bandwidth peer of the benchmarks: ``n_threads`` splits the bytes as the kernels split row
    tiles (at most one thread per 4 MiB)."""
    cdef const uint8_t[::1] b = buf
    _check_threads(n_threads)
    cdef uint64_t s = 0
    if b.shape[0]:
        with nogil:
            s = hc_stream_read(&b[0], b.shape[0], n_threads)
    return s
