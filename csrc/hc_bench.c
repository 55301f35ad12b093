/* The bandwidth peer of the benchmarks (hcemu.bench.kernels), not a chip kernel: a plain streaming
 * read of the bytes a CIM product streams, split over threads by the products' rule (hc_split.h),
 * the ceiling their GB/s are held to.  Each thread reads its range as READ_STREAMS interleaved
 * streams with software prefetch, in the widest vectors the active ISA path has. */
#include "hcemu.h"
#include "hc_split.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HC_X86 1
#else
#define HC_X86 0
#endif

/* the targets of the CIM paths each read is held against (AVX-VNNI's reads with the AVX2 code) */
#define READ_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define READ_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

#define READ_STREAMS 2 /* measured 1-5% faster than 4 (1 and 3 no better, 8 slower) on the 2-core development VM (AMD EPYC, AVX-512) */
#define READ_PF 4096

/* One range read as READ_STREAMS interleaved streams of whole 64-byte lines, each line prefetched
 * READ_PF bytes ahead, then the bytes past the last line: the ISA supplies its accumulator type VEC,
 * ZERO(), ADD_LINE(acc, line) and SUM(acc) (the uint64 sum of acc's lanes). */
#define READ_RANGE(SUF, ATTR, VEC, ZERO, ADD_LINE, SUM)                                            \
    static ATTR uint64_t read_range_##SUF(const uint8_t *p, int64_t nbytes) {                      \
        VEC acc[READ_STREAMS];                                                                     \
        for (int s = 0; s < READ_STREAMS; s++) acc[s] = ZERO();                                    \
        const int64_t lines = nbytes / 64, per = lines / READ_STREAMS;                             \
        const uint8_t *base[READ_STREAMS];                                                         \
        for (int s = 0; s < READ_STREAMS; s++) base[s] = p + s * per * 64;                         \
        for (int64_t l = 0; l < per; l++)                                                          \
            for (int s = 0; s < READ_STREAMS; s++) {                                               \
                _mm_prefetch((const char *)(base[s] + l * 64 + READ_PF), _MM_HINT_T0);             \
                acc[s] = ADD_LINE(acc[s], base[s] + l * 64);                                       \
            }                                                                                      \
        uint64_t sum = 0;                                                                          \
        for (int s = 0; s < READ_STREAMS; s++) sum += SUM(acc[s]);                                 \
        for (int64_t i = per * READ_STREAMS * 64; i < nbytes; i++) sum += p[i];                    \
        return sum;                                                                                \
    }

#if HC_X86
static inline __attribute__((always_inline)) READ_AVX512_TARGET __m512i add_line_avx512(__m512i acc, const uint8_t *line) {
    return _mm512_add_epi64(acc, _mm512_loadu_si512(line));
}

static inline __attribute__((always_inline)) READ_AVX512_TARGET uint64_t sum_avx512(__m512i acc) {
    return (uint64_t)_mm512_reduce_add_epi64(acc);
}

static inline __attribute__((always_inline)) READ_AVX2_TARGET __m256i add_line_avx2(__m256i acc, const uint8_t *line) {
    return _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)line),
                                                  _mm256_loadu_si256((const __m256i *)(line + 32))));
}

static inline __attribute__((always_inline)) READ_AVX2_TARGET uint64_t sum_avx2(__m256i acc) {
    uint64_t tmp[4];
    _mm256_storeu_si256((__m256i *)tmp, acc);
    return tmp[0] + tmp[1] + tmp[2] + tmp[3];
}

READ_RANGE(avx512, READ_AVX512_TARGET, __m512i, _mm512_setzero_si512, add_line_avx512, sum_avx512)
READ_RANGE(avx2, READ_AVX2_TARGET, __m256i, _mm256_setzero_si256, add_line_avx2, sum_avx2)
#endif

static uint64_t read_range_serial(const uint8_t *p, int64_t nbytes) {
    uint64_t sum = 0;
    int64_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        sum += v;
    }
    for (; i < nbytes; i++) sum += p[i];
    return sum;
}

static uint64_t read_range(const uint8_t *p, int64_t nbytes) {
#if HC_X86
    const hc_isa isa = hc_isa_active();
    if (isa == HC_ISA_AVX512VNNI) return read_range_avx512(p, nbytes);
    if (isa == HC_ISA_AVX2 || isa == HC_ISA_AVXVNNI) return read_range_avx2(p, nbytes);
#endif
    return read_range_serial(p, nbytes);
}

uint64_t hc_stream_read(const uint8_t *p, int64_t nbytes, int n_threads) {
    if (!p || nbytes <= 0) return 0;
    n_threads = hc__threads_for_bytes(n_threads < 1 ? 1 : n_threads, nbytes); /* the kernels' rule */
#ifdef _OPENMP
    if (n_threads == 2 && nbytes / 64 < ((int64_t)1 << 31)) { /* the kernels' two-ended split */
        uint64_t sum = 0, range = (uint64_t)(nbytes / 64) << 32;
        const int64_t lines = nbytes / 64;
#pragma omp parallel num_threads(2) reduction(+ : sum)
        {
            const int top = omp_get_thread_num() == 1;
            int64_t l0, l1;
            while (hc__claim2(&range, top, HC_SPLIT2_BYTES / 64, &l0, &l1))
                sum += read_range(p + l0 * 64, (l1 == lines ? nbytes : l1 * 64) - l0 * 64);
        }
        return sum;
    }
    if (n_threads > 1) {
        uint64_t sum = 0;
        const int64_t lines = nbytes / 64;
#pragma omp parallel num_threads(n_threads) reduction(+ : sum)
        {
            int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            int64_t l0 = lines * tid / nth, l1 = lines * (tid + 1) / nth;
            int64_t end = tid == nth - 1 ? nbytes : l1 * 64;
            sum += read_range(p + l0 * 64, end - l0 * 64);
        }
        return sum;
    }
#endif
    return read_range(p, nbytes);
}
