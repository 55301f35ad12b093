/* SRAM KV cache stores and the streaming attention unit.
 *
 * The cache is read in blocks of HC_ATTN_BLOCK keys with an online softmax (running max m and sum l,
 * the accumulator rescaled by exp(m_old - m_new) when the max grows).  int8 cache: queries are
 * quantized to int8 per (token, head) by the activation rule; q.k are exact int32 dot products;
 * softmax and P.V run in float32.  fp16 cache: q.k and P.V in float32.  Exact rules and evaluation
 * order: docs/numerics.md "KV cache" and "Attention".  Every ISA path gives bit-identical outputs:
 * integer parts are exact, and the float loops are elementwise in the same order on every path. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hcemu.h"
#include "hc_quant.h"
#include "hc_vecmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HC_X86 1
#else
#define HC_X86 0
#endif

#define BLK HC_ATTN_BLOCK

/* ---- quantizers ------------------------------------------------------------------------------ */

/* One (token, kv head) slot of the int8 KV store: amax = max|x| taken on the bits (for non-negative
 * floats the uint32 order is the float order; inf/NaN have the largest patterns), s = fp16(amax/127),
 * q = clamp(rne(x * (1/s)), -127, 127), the code step of the activation rule (hc__quant_code:
 * |x / s| <= 127 * (1 + 2^-11), or below 2^8 where s is an fp16 subnormal, well inside its exact
 * range).  Every loop is elementwise or a max, so the per-ISA copies below vectorize without
 * changing a bit. */
#define HC_KV_STORE_I8(SUF, ATTR)                                                                  \
    ATTR static int kv_store_i8_##SUF(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos, \
                                      int64_t capacity, int8_t *codes, uint16_t *scales) {         \
        for (int64_t i = 0; i < t; ++i)                                                            \
            for (int g = 0; g < n_kv_heads; ++g) {                                                 \
                const float *xi = x + (i * n_kv_heads + g) * (int64_t)hd;                          \
                const int64_t slot = (int64_t)g * capacity + pos + i;                              \
                const uint32_t mx = hc__absmax_bits(xi, hd);                                       \
                if (mx >= 0x7f800000u) return HC_ENONFINITE;                                       \
                const uint16_t h = hc__f32_to_f16(hc__u2f(mx) / 127.0f);                           \
                if ((h & 0x7fff) == 0x7c00) return HC_ENONFINITE; /* scale overflows fp16 */       \
                const float s = hc__f16_to_f32(h);                                                 \
                const float inv = s > 0.0f ? 1.0f / s : 0.0f;                                      \
                int8_t *q = codes + slot * hd;                                                     \
                for (int d = 0; d < hd; ++d) q[d] = (int8_t)hc__quant_code(xi[d], inv);            \
                scales[slot] = h;                                                                  \
            }                                                                                      \
        return HC_OK;                                                                              \
    }

HC_KV_STORE_I8(scalar, )
#if HC_X86
HC_KV_STORE_I8(avx2, __attribute__((target("avx2,f16c"))))
HC_KV_STORE_I8(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))))
#endif

int hc_kv_store_f16(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos,
                    int64_t capacity, uint16_t *values) {
    if (t < 0 || n_kv_heads <= 0 || hd <= 0 || pos < 0 || capacity < 0) return HC_EINVAL;
    if (pos + t > capacity) return HC_ECAPACITY;
    for (int64_t i = 0; i < t; ++i)
        for (int g = 0; g < n_kv_heads; ++g) {
            const float *xi = x + (i * n_kv_heads + g) * (int64_t)hd;
            uint16_t *dst = values + ((int64_t)g * capacity + pos + i) * hd;
            for (int d = 0; d < hd; ++d) {
                uint16_t h = hc__f32_to_f16(xi[d]);
                if ((h & 0x7fff) >= 0x7c00) return HC_ENONFINITE;
                dst[d] = h;
            }
        }
    return HC_OK;
}

/* ---- the streaming attention unit -------------------------------------------------------------
 *
 * docs/numerics.md fixes the arithmetic of each (query, head) row: its blocks in ascending order,
 * and inside a block the score, online-softmax and P.V steps in a fixed order.  Rows are
 * independent, so the work is arranged for the CPU: per chunk of up to QCHUNK queries, every
 * (query, head) query vector is quantized once; then per kv head and per block of BLK keys, the
 * block is prepared once (scales as float, K in the ISA's q.k layout, V as float when several
 * queries share the block) and every query of the chunk that sees the block processes its G heads,
 * RMAX rows at a time, against it: q.k, scores, softmax step and P.V with the rows' state (m, l and
 * the hd-float accumulator).  The float loops are elementwise or sequential sums in the documented
 * order on every ISA path, so all paths give the oracle's bits. */

#include <pthread.h>

#define RMAX 4    /* rows (heads of one query) processed together: P.V shares each V load */
#define QCHUNK 64 /* queries per chunk: bounds the row state to QCHUNK * G rows */
#define HC_ALIGNED __attribute__((aligned(64)))
#define HC_INLINE static inline __attribute__((always_inline))

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

typedef void (*cvt_f16_fn)(const uint16_t *h, int64_t n, float *out);

/* One block of keys of one kv head, prepared once for every query that reads it. */
typedef struct {
    int hd, hdq, hd16;          /* head_dim; rounded up to 64 (q rows, AVX-512 layout) and to 16 */
    HC_ALIGNED float ksc[BLK];  /* int8: K scales as float, 0 past the block's keys */
    HC_ALIGNED float vsc[BLK];  /* int8: V scales as float, 0 past the block's keys */
    const int8_t *k8, *v8;      /* int8: the block's rows in the cache (row stride hd) */
    void *kx;                   /* int8: K in the ISA's q.k layout (scratch, BLK * hdq * 2 bytes) */
    float *kf;                  /* fp16: K as float (scratch, BLK * hd) */
    float *vbuf;                /* scratch for V as float (BLK * hd) */
    const float *vf;            /* V as float (= vbuf), or NULL: P.V converts v8 on the fly */
    float cap, icap;            /* soft-capping of the scores (cap > 0) and 1/cap; 0: none */
} block;

typedef float scores_t[BLK];
typedef int32_t dots_t[BLK];

/* ---- per-thread scratch ---------------------------------------------------------------------- */

#define SCRATCH_KEEP ((size_t)4 << 20) /* a thread keeps up to 4 MiB between calls */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;
static __thread void *scratch_mem;
static __thread size_t scratch_size;

/* Runs in the ending thread: frees its buffer and forgets it. */
static void scratch_release(void *p) {
    free(p);
    scratch_mem = NULL;
    scratch_size = 0;
}

static void scratch_key_init(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_release) == 0; }

/* 64-byte aligned scratch for one call.  Up to SCRATCH_KEEP bytes it is the calling thread's own
 * buffer, kept between calls (freed when the thread ends); a larger request gets its own block,
 * returned in *owned for the caller to free.  NULL when out of memory. */
static void *scratch_get(size_t bytes, void **owned) {
    *owned = NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    if (bytes > SCRATCH_KEEP) return *owned = aligned_alloc(64, bytes);
    if (bytes <= scratch_size) return scratch_mem;
    pthread_once(&scratch_once, scratch_key_init);
    void *p = aligned_alloc(64, bytes);
    if (!p) return NULL;
    free(scratch_mem);
    scratch_mem = p;
    scratch_size = bytes;
    if (scratch_key_ok) pthread_setspecific(scratch_key, p);
    return p;
}

/* Soft-capped scores s = tanh(s * (1/cap)) * cap (docs/numerics.md "Attention"), elementwise. */
static inline void softcap_rows(float (*S)[BLK], int R, int nv, float cap, float icap) {
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < nv; ++j) S[r][j] = hc__tanh(S[r][j] * icap) * cap;
}

/* ---- generic kernels, compiled once per ISA so the compiler may use that ISA's vectors --------
 * Every loop here is elementwise (any vector width gives the same bits) or a sequential sum. */

#define HC_GENERIC_KERNELS(SUF, ATTR)                                                              \
    ATTR static int check_finite_##SUF(const float *x, int64_t n) {                                \
        return hc__absmax_bits(x, n) >= 0x7f800000u ? HC_ENONFINITE : HC_OK;                       \
    }                                                                                              \
    /* R heads of one query (int8 codes qq, rows hdq apart) against block B of which the query     \
     * sees the first nb keys: scores, softmax step and P.V into the rows' state. */               \
    ATTR static int rows_i8_##SUF(const block *B, const int8_t *qq, const int32_t *qsum,           \
                                  const float *qsc, int R, int nb, float *m, float *l,             \
                                  float *acc) {                                                    \
        HC_ALIGNED dots_t D[RMAX];                                                                 \
        HC_ALIGNED scores_t S[RMAX];                                                               \
        float alpha[RMAX] = {0};                                                                   \
        const int nv = round_up(nb, 16);                                                           \
        qk_rows_##SUF(B, qq, qsum, R, nb, D);                                                      \
        for (int r = 0; r < R; ++r) {                                                              \
            const float qs = qsc[r];                                                               \
            for (int j = 0; j < nv; ++j) S[r][j] = ((float)D[r][j] * B->ksc[j]) * qs;              \
        }                                                                                          \
        if (B->cap > 0.0f) softcap_rows(S, R, nv, B->cap, B->icap);                                \
        int rc = softmax_rows_##SUF(S, R, nb, nv, B->vsc, m, l, alpha);                            \
        if (rc != HC_OK) return rc;                                                                \
        pv_rows_##SUF(acc, B, alpha, (const scores_t *)S, R, nb);                                  \
        return HC_OK;                                                                              \
    }                                                                                              \
    /* The same for the fp16 cache: float q rows (hd apart), scores lane_sum(q * K) * c. */        \
    ATTR static int rows_f16_##SUF(const block *B, const float *q, float c, int R, int nb,         \
                                   float *m, float *l, float *acc) {                               \
        HC_ALIGNED scores_t S[RMAX];                                                               \
        float alpha[RMAX] = {0};                                                                   \
        const int nv = round_up(nb, 16);                                                           \
        dot_rows_##SUF(q, R, B->kf, nb, B->hd, &S[0][0], BLK);                                     \
        for (int r = 0; r < R; ++r) {                                                              \
            for (int j = 0; j < nb; ++j) S[r][j] = S[r][j] * c;                                    \
            for (int j = nb; j < nv; ++j) S[r][j] = 0.0f;                                          \
        }                                                                                          \
        if (B->cap > 0.0f) softcap_rows(S, R, nv, B->cap, B->icap);                                \
        int rc = softmax_rows_##SUF(S, R, nb, nv, NULL, m, l, alpha);                              \
        if (rc != HC_OK) return rc;                                                                \
        pv_rows_##SUF(acc, B, alpha, (const scores_t *)S, R, nb);                                  \
        return HC_OK;                                                                              \
    }

/* The query quantizer: the activation rule per row of hd floats (hc_quant.h), codes zero-padded to
 * hdq, their sum in qsum and the scale times c in qsc. */
#define HC_QUANT_ROWS(SUF, ATTR, ROW)                                                              \
    ATTR static int quant_rows_##SUF(const float *x, int64_t rows, int hd, int hdq, float c,       \
                                     int8_t *qq, int32_t *qsum, float *qsc) {                      \
        for (int64_t r = 0; r < rows; ++r) {                                                       \
            float scale;                                                                           \
            if (ROW(x + r * hd, hd, hdq, qq + r * hdq, &scale, qsum + r)) return HC_ENONFINITE;    \
            qsc[r] = scale * c;                                                                    \
        }                                                                                          \
        return HC_OK;                                                                              \
    }

/* The softmax step in plain C, for the paths without a hand-written one. */
#define HC_GENERIC_SOFTMAX(SUF, ATTR)                                                              \
    /* Online-softmax step of R rows over one block: S holds the scores of keys j < nb (finite     \
     * filler up to nv); on return it holds w_j = p_j * v_scale_j (p_j when vsc is NULL), m and l  \
     * are updated and alpha holds each row's accumulator factor. */                              \
    ATTR static int softmax_rows_##SUF(scores_t *S, int R, int nb, int nv, const float *vsc,       \
                                       float *m, float *l, float *alpha) {                         \
        for (int r = 0; r < R; ++r) {                                                              \
            const float mb = maxn_##SUF(S[r], nb);                                                 \
            if (!(mb <= FLT_MAX && mb >= -FLT_MAX)) return HC_ENONFINITE;                          \
            const float mnew = m[r] > mb ? m[r] : mb;                                              \
            alpha[r] = hc__exp(m[r] - mnew); /* m = -inf on the first block: exp(-inf) = 0 */      \
            m[r] = mnew;                                                                           \
            float *s = S[r];                                                                       \
            for (int j = 0; j < nv; ++j) s[j] = hc__exp(s[j] - mnew);                              \
        }                                                                                          \
        lsum_rows(S, R, nb, l, alpha);                                                             \
        if (vsc)                                                                                   \
            for (int r = 0; r < R; ++r)                                                            \
                for (int j = 0; j < nv; ++j) S[r][j] = S[r][j] * vsc[j];                           \
        return HC_OK;                                                                              \
    }

/* l = l * alpha, then l = l + p_j for j ascending; the rows' sums run as independent chains. */
HC_INLINE void lsum_rows(scores_t *S, int R, int nb, float *l, const float *alpha) {
    float l0 = l[0] * alpha[0], l1 = 0.0f, l2 = 0.0f, l3 = 0.0f;
    switch (R) {
    case 1:
        for (int j = 0; j < nb; ++j) l0 = l0 + S[0][j];
        break;
    case 2:
        l1 = l[1] * alpha[1];
        for (int j = 0; j < nb; ++j) { l0 = l0 + S[0][j]; l1 = l1 + S[1][j]; }
        break;
    case 3:
        l1 = l[1] * alpha[1]; l2 = l[2] * alpha[2];
        for (int j = 0; j < nb; ++j) { l0 = l0 + S[0][j]; l1 = l1 + S[1][j]; l2 = l2 + S[2][j]; }
        break;
    default:
        l1 = l[1] * alpha[1]; l2 = l[2] * alpha[2]; l3 = l[3] * alpha[3];
        for (int j = 0; j < nb; ++j) {
            l0 = l0 + S[0][j]; l1 = l1 + S[1][j]; l2 = l2 + S[2][j]; l3 = l3 + S[3][j];
        }
    }
    l[0] = l0;
    if (R > 1) l[1] = l1;
    if (R > 2) l[2] = l2;
    if (R > 3) l[3] = l3;
}

/* P.V over dims [d0, hd) of R rows: acc_d = acc_d * alpha, then acc_d = acc_d + w_j * v[j, d]
 * for j ascending (V as float, or int8 converted exactly). */
static inline void pv_span(float *acc, const block *B, const float *alpha, const scores_t *W, int R,
                           int nb, int d0) {
    const int hd = B->hd;
    for (int r = 0; r < R; ++r) {
        float *ar = acc + (int64_t)r * hd;
        const float al = alpha[r];
        for (int d = d0; d < hd; ++d) ar[d] = ar[d] * al;
        for (int j = 0; j < nb; ++j) {
            const float wj = W[r][j];
            if (B->vf) {
                const float *vj = B->vf + (int64_t)j * hd;
                for (int d = d0; d < hd; ++d) ar[d] = ar[d] + wj * vj[d];
            } else {
                const int8_t *vj = B->v8 + (int64_t)j * hd;
                for (int d = d0; d < hd; ++d) ar[d] = ar[d] + wj * (float)vj[d];
            }
        }
    }
}

/* ---- scalar path ----------------------------------------------------------------------------- */

/* fp16 cache scores: 16-lane float dots (lane l sums d = l mod 16 ascending, fold 8, 4, 2, 1). */
#define HC_DOT16(SUF, ATTR)                                                                        \
    ATTR static void dot16_##SUF(const float *q, int G, const float *k, int64_t nk, int hd,        \
                                 float *s, int64_t lds) {                                          \
        for (int64_t j = 0; j < nk; ++j)                                                           \
            for (int a = 0; a < G; ++a) {                                                          \
                const float *qa = q + (int64_t)a * hd, *kj = k + j * hd;                           \
                float acc[HC_LANES] = {0};                                                         \
                int d = 0;                                                                         \
                for (; d + HC_LANES <= hd; d += HC_LANES)                                          \
                    for (int l = 0; l < HC_LANES; ++l) acc[l] = acc[l] + qa[d + l] * kj[d + l];    \
                for (int l = 0; d + l < hd; ++l) acc[l] = acc[l] + qa[d + l] * kj[d + l];          \
                s[a * lds + j] = hc__fold16(acc);                                                  \
            }                                                                                      \
    }

HC_DOT16(scalar, )
#define dot_rows_scalar dot16_scalar

static void cvt_f16_scalar(const uint16_t *h, int64_t n, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}

static void prep_k_scalar(block *B, const int8_t *k, int nb) { (void)B; (void)k; (void)nb; }

/* D[r][j] = sum_d q[r, d] * K[j, d] exactly, for j < nb; 0 from nb up to a multiple of 16. */
static void qk_rows_scalar(const block *B, const int8_t *qq, const int32_t *qsum, int R, int nb,
                           dots_t *D) {
    (void)qsum;
    const int hd = B->hd, hdq = B->hdq, nv = round_up(nb, 16);
    for (int r = 0; r < R; ++r) {
        const int8_t *qr = qq + (int64_t)r * hdq;
        for (int j = 0; j < nb; ++j) {
            const int8_t *kj = B->k8 + (int64_t)j * hd;
            int32_t s = 0;
            for (int d = 0; d < hd; ++d) s += (int32_t)qr[d] * (int32_t)kj[d];
            D[r][j] = s;
        }
        for (int j = nb; j < nv; ++j) D[r][j] = 0;
    }
}

static inline float maxn_scalar(const float *s, int nb) {
    float mb = -INFINITY;
    for (int j = 0; j < nb; ++j) mb = s[j] > mb ? s[j] : mb;
    return mb;
}

static void pv_rows_scalar(float *acc, const block *B, const float *alpha, const scores_t *W, int R,
                           int nb) {
    pv_span(acc, B, alpha, W, R, nb, 0);
}

HC_QUANT_ROWS(scalar, , hc__quant_row)
HC_GENERIC_SOFTMAX(scalar, )
HC_GENERIC_KERNELS(scalar, )

#if HC_X86
#define T_AVX2 __attribute__((target("avx2,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* ---- AVX2 path ------------------------------------------------------------------------------- */

HC_DOT16(avx2, T_AVX2)

/* 16-lane float dots with the fold 8, 4, 2, 1 of hc__fold16, in registers. */
T_AVX2 static inline float fold8x2_avx2(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);                                         /* l + 8 */
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); /* l + 4 */
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));                                   /* l + 2 */
    b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));                               /* l + 1 */
    return _mm_cvtss_f32(b);
}

T_AVX2 static void dot_rows_avx2(const float *q, int G, const float *k, int64_t nk, int hd, float *s,
                                 int64_t lds) {
    if (hd % 16) { dot16_avx2(q, G, k, nk, hd, s, lds); return; }
    for (int a = 0; a < G; ++a) {
        const float *qa = q + (int64_t)a * hd;
        for (int64_t j = 0; j < nk; ++j) {
            const float *kj = k + j * hd;
            __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
            for (int d = 0; d < hd; d += 16) {
                lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(qa + d), _mm256_loadu_ps(kj + d)));
                hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(qa + d + 8), _mm256_loadu_ps(kj + d + 8)));
            }
            s[a * lds + j] = fold8x2_avx2(lo, hi);
        }
    }
}

T_AVX2 static void cvt_f16_avx2(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}

/* K of the block as int16 rows of hd16 values (zero-padded), zero rows up to a multiple of 16. */
T_AVX2 static void prep_k_avx2(block *B, const int8_t *k, int nb) {
    const int hd = B->hd, hd16 = B->hd16, full = hd / 16 * 16;
    int16_t *k16 = (int16_t *)B->kx;
    for (int j = 0; j < nb; ++j) {
        const int8_t *kj = k + (int64_t)j * hd;
        int16_t *o = k16 + (int64_t)j * hd16;
        int d = 0;
        for (; d < full; d += 16)
            _mm256_storeu_si256((__m256i *)(o + d),
                                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(kj + d))));
        for (; d < hd; ++d) o[d] = kj[d];
        for (; d < hd16; ++d) o[d] = 0;
    }
    const int nv = round_up(nb, 16);
    if (nb < nv) memset(k16 + (int64_t)nb * hd16, 0, sizeof(int16_t) * (size_t)(nv - nb) * hd16);
}

/* (sum a0, ..., sum a7) of eight int32 vectors. */
T_AVX2 static inline __m256i hsum8_epi32(__m256i a0, __m256i a1, __m256i a2, __m256i a3, __m256i a4,
                                         __m256i a5, __m256i a6, __m256i a7) {
    const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a4, a5), _mm256_hadd_epi32(a6, a7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                            _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* q.k with vpmaddwd on sign-extended int16 (exact), eight keys per step. */
T_AVX2 static void qk_rows_avx2(const block *B, const int8_t *qq, const int32_t *qsum, int R, int nb,
                                dots_t *D) {
    (void)qsum;
    const int hd16 = B->hd16, hdq = B->hdq, nv = round_up(nb, 16);
    const int16_t *k16 = (const int16_t *)B->kx;
    for (int r = 0; r < R; ++r) {
        const int8_t *qr = qq + (int64_t)r * hdq;
        for (int j0 = 0; j0 < nv; j0 += 8) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
                    a7 = a0;
            const int16_t *kp = k16 + (int64_t)j0 * hd16;
            for (int d = 0; d < hd16; d += 16) {
                const __m256i qv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(qr + d)));
#define HC_MADD(A, J) A = _mm256_add_epi32(A, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(kp + (J) * hd16 + d)), qv))
                HC_MADD(a0, 0); HC_MADD(a1, 1); HC_MADD(a2, 2); HC_MADD(a3, 3);
                HC_MADD(a4, 4); HC_MADD(a5, 5); HC_MADD(a6, 6); HC_MADD(a7, 7);
#undef HC_MADD
            }
            _mm256_storeu_si256((__m256i *)(D[r] + j0), hsum8_epi32(a0, a1, a2, a3, a4, a5, a6, a7));
        }
    }
}

T_AVX2 static inline float maxn_avx2(const float *s, int nb) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= nb; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float mb = _mm_cvtss_f32(h);
    for (; j < nb; ++j) mb = s[j] > mb ? s[j] : mb;
    return mb;
}

/* P.V of R rows, 16 dims (two vectors per row) at a time; V loaded once for the R rows. */
T_AVX2 HC_INLINE void pv_avx2_r(float *acc, const block *B, const float *alpha, const scores_t *W,
                                const int R, int nb, const int use_vf) {
    const int hd = B->hd;
    int d0 = 0;
    for (; d0 + 16 <= hd; d0 += 16) {
        __m256 a[RMAX][2];
        for (int r = 0; r < R; ++r) {
            const __m256 al = _mm256_set1_ps(alpha[r]);
            a[r][0] = _mm256_mul_ps(_mm256_loadu_ps(acc + (int64_t)r * hd + d0), al);
            a[r][1] = _mm256_mul_ps(_mm256_loadu_ps(acc + (int64_t)r * hd + d0 + 8), al);
        }
        for (int j = 0; j < nb; ++j) {
            __m256 v0, v1;
            if (use_vf) {
                v0 = _mm256_loadu_ps(B->vf + (int64_t)j * hd + d0);
                v1 = _mm256_loadu_ps(B->vf + (int64_t)j * hd + d0 + 8);
            } else {
                const __m128i b = _mm_loadu_si128((const __m128i *)(B->v8 + (int64_t)j * hd + d0));
                v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
            }
            for (int r = 0; r < R; ++r) {
                const __m256 w = _mm256_set1_ps(W[r][j]);
                a[r][0] = _mm256_add_ps(a[r][0], _mm256_mul_ps(w, v0));
                a[r][1] = _mm256_add_ps(a[r][1], _mm256_mul_ps(w, v1));
            }
        }
        for (int r = 0; r < R; ++r) {
            _mm256_storeu_ps(acc + (int64_t)r * hd + d0, a[r][0]);
            _mm256_storeu_ps(acc + (int64_t)r * hd + d0 + 8, a[r][1]);
        }
    }
    if (d0 < hd) pv_span(acc, B, alpha, W, R, nb, d0);
}

T_AVX2 static void pv_rows_avx2(float *acc, const block *B, const float *alpha, const scores_t *W,
                                int R, int nb) {
    const int f = B->vf != NULL;
    switch (R) {
    case 1: f ? pv_avx2_r(acc, B, alpha, W, 1, nb, 1) : pv_avx2_r(acc, B, alpha, W, 1, nb, 0); break;
    case 2: f ? pv_avx2_r(acc, B, alpha, W, 2, nb, 1) : pv_avx2_r(acc, B, alpha, W, 2, nb, 0); break;
    case 3: f ? pv_avx2_r(acc, B, alpha, W, 3, nb, 1) : pv_avx2_r(acc, B, alpha, W, 3, nb, 0); break;
    default: f ? pv_avx2_r(acc, B, alpha, W, 4, nb, 1) : pv_avx2_r(acc, B, alpha, W, 4, nb, 0);
    }
}

/* hc__exp on 8 lanes, bit for bit (as exp16_avx512: same operations, range cases by masks). */
T_AVX2 HC_INLINE __m256 exp8_avx2(__m256 x) {
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    const __m256 lo = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    const __m256 hi = _mm256_cmp_ps(x, _mm256_set1_ps(88.0f), _CMP_GT_OQ);
    const __m256 xc = _mm256_andnot_ps(_mm256_or_ps(nan, _mm256_or_ps(lo, hi)), x);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(0x1.715476p+0f)), magic), magic);
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0x1.63p-1f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-0x1.bd0106p-13f)));
    const __m256 z = _mm256_mul_ps(r, r);
    __m256 p = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(0x1.a0d2cep-13f), r), _mm256_set1_ps(0x1.6e879cp-10f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0x1.111210p-7f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0x1.555382p-5f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0x1.555554p-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0.5f));
    p = _mm256_add_ps(_mm256_mul_ps(p, z), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_andnot_ps(lo, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), hi);
    return _mm256_blendv_ps(y, x, nan);
}

/* The online-softmax step of the generic kernels (same operations), exps on 8 lanes, the rows'
 * alphas together in one vector. */
T_AVX2 static int softmax_rows_avx2(scores_t *S, int R, int nb, int nv, const float *vsc, float *m,
                                    float *l, float *alpha) {
    HC_ALIGNED float dm[8] = {0}, al[8];
    for (int r = 0; r < R; ++r) {
        const float mb = maxn_avx2(S[r], nb);
        if (!(mb <= FLT_MAX && mb >= -FLT_MAX)) return HC_ENONFINITE;
        const float mnew = m[r] > mb ? m[r] : mb;
        dm[r] = m[r] - mnew; /* m = -inf on the first block: exp(-inf) = 0 */
        m[r] = mnew;
        const __m256 mv = _mm256_set1_ps(mnew);
        for (int j = 0; j < nv; j += 8)
            _mm256_store_ps(S[r] + j, exp8_avx2(_mm256_sub_ps(_mm256_load_ps(S[r] + j), mv)));
    }
    _mm256_store_ps(al, exp8_avx2(_mm256_load_ps(dm)));
    for (int r = 0; r < R; ++r) alpha[r] = al[r];
    lsum_rows(S, R, nb, l, alpha);
    if (vsc)
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < nv; j += 8)
                _mm256_store_ps(S[r] + j, _mm256_mul_ps(_mm256_load_ps(S[r] + j), _mm256_load_ps(vsc + j)));
    return HC_OK;
}

HC_QUANT_ROWS(avx2, T_AVX2, hc__quant_row_avx2)
HC_GENERIC_KERNELS(avx2, T_AVX2)

/* ---- AVX-512 VNNI path ----------------------------------------------------------------------- */

T_AVX512 static void dot_rows_avx512(const float *q, int G, const float *k, int64_t nk, int hd,
                                     float *s, int64_t lds) {
    for (int a = 0; a < G; ++a) {
        const float *qa = q + (int64_t)a * hd;
        for (int64_t j = 0; j < nk; ++j) {
            const float *kj = k + j * hd;
            __m512 acc = _mm512_setzero_ps();
            for (int d = 0; d < hd; d += 16) {
                int rem = hd - d;
                __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
                acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, qa + d),
                                                       _mm512_maskz_loadu_ps(m, kj + d)));
            }
            /* fold 8, 4, 2, 1; lanes past hd added +0 to lanes that never hold -0 */
            __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
            __m128 b = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            b = _mm_add_ps(b, _mm_movehl_ps(b, b));
            b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
            s[a * lds + j] = _mm_cvtss_f32(b);
        }
    }
}

T_AVX512 static void cvt_f16_avx512(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}

/* Transpose a 16 x 16 matrix of int32 held in r[0..15] (row i = r[i]). */
T_AVX512 HC_INLINE void transpose16_epi32(__m512i *r) {
    __m512i t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 4) { /* r[i + e], 128-bit lane L: rows i..i+3 of column 4L + e */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 4
    for (int e = 0; e < 4; ++e) {
        const __m512i a = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x88);  /* lanes 0, 2 */
        const __m512i b = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xdd);  /* lanes 1, 3 */
        const __m512i c = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x88);
        const __m512i d = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xdd);
        t[e] = _mm512_shuffle_i32x4(a, c, 0x88);       /* column e      */
        t[8 + e] = _mm512_shuffle_i32x4(a, c, 0xdd);   /* column 8 + e  */
        t[4 + e] = _mm512_shuffle_i32x4(b, d, 0x88);   /* column 4 + e  */
        t[12 + e] = _mm512_shuffle_i32x4(b, d, 0xdd);  /* column 12 + e */
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = t[i];
}

/* K of the block for vpdpbusd: kt[c * BLK + j] = the four bytes K[j, 4c..4c+3] ^ 0x80, for
 * c < hdq/4 and keys j below nb rounded up to 16 (bytes past hd and keys past nb read as 0,
 * stored as 0x80). */
T_AVX512 static void prep_k_avx512(block *B, const int8_t *k, int nb) {
    const int hd = B->hd, hdq = B->hdq;
    int32_t *kt = (int32_t *)B->kx;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int cc = 0; cc < hdq; cc += 64) {
        const int rem = hd - cc;
        const __mmask64 mb = rem >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << rem) - 1);
        for (int g = 0; g < nb; g += 16) {
            __m512i r[16];
#pragma GCC unroll 16
            for (int x = 0; x < 16; ++x) {
                const int j = g + x;
                const __mmask64 m = j < nb ? mb : 0;
                r[x] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, k + (int64_t)j * hd + cc), flip);
            }
            transpose16_epi32(r);
#pragma GCC unroll 16
            for (int x = 0; x < 16; ++x) _mm512_store_si512(kt + (cc / 4 + x) * BLK + g, r[x]);
        }
    }
}

/* q.k of R rows against the first 16 * NG keys: vpdpbusd on (K ^ 0x80) (unsigned) times q (signed),
 * then minus 128 * sum(q): exact integer arithmetic (docs/numerics.md). Each K vector serves R rows. */
T_AVX512 HC_INLINE void qk_avx512_r(const block *B, const int8_t *qq, const int32_t *qsum, const int R,
                                    const int NG, dots_t *D) {
    const int hdq = B->hdq, C = hdq / 4;
    const int32_t *kt = (const int32_t *)B->kx;
    __m512i acc[RMAX][4];
    for (int r = 0; r < R; ++r)
        for (int g = 0; g < NG; ++g) acc[r][g] = _mm512_setzero_si512();
    for (int c = 0; c < C; ++c) {
        __m512i kv[4];
        for (int g = 0; g < NG; ++g) kv[g] = _mm512_load_si512(kt + c * BLK + 16 * g);
        for (int r = 0; r < R; ++r) {
            int32_t q4;
            memcpy(&q4, qq + (int64_t)r * hdq + 4 * c, 4);
            const __m512i qb = _mm512_set1_epi32(q4);
            for (int g = 0; g < NG; ++g) acc[r][g] = _mm512_dpbusd_epi32(acc[r][g], kv[g], qb);
        }
    }
    for (int r = 0; r < R; ++r) {
        const __m512i corr = _mm512_set1_epi32(128 * qsum[r]);
        for (int g = 0; g < NG; ++g)
            _mm512_store_si512(D[r] + 16 * g, _mm512_sub_epi32(acc[r][g], corr));
    }
}

#define HC_QK_AVX512_NG(R)                                                                          \
    switch (ng) {                                                                                   \
    case 1: qk_avx512_r(B, qq, qsum, R, 1, D); break;                                               \
    case 2: qk_avx512_r(B, qq, qsum, R, 2, D); break;                                               \
    case 3: qk_avx512_r(B, qq, qsum, R, 3, D); break;                                               \
    default: qk_avx512_r(B, qq, qsum, R, 4, D);                                                     \
    }

/* D for the keys below nb rounded up to 16 (keys past nb give finite filler). */
T_AVX512 static void qk_rows_avx512(const block *B, const int8_t *qq, const int32_t *qsum, int R,
                                    int nb, dots_t *D) {
    const int ng = (nb + 15) >> 4;
    switch (R) {
    case 1: HC_QK_AVX512_NG(1) break;
    case 2: HC_QK_AVX512_NG(2) break;
    case 3: HC_QK_AVX512_NG(3) break;
    default: HC_QK_AVX512_NG(4)
    }
}

T_AVX512 static inline float maxn_avx512(const float *s, int nb) {
    __m512 m = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= nb; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
    if (j < nb) m = _mm512_mask_max_ps(m, (__mmask16)((1u << (nb - j)) - 1), m, _mm512_loadu_ps(s + j));
    return _mm512_reduce_max_ps(m);
}

T_AVX512 HC_INLINE __m512 v16_avx512(const block *B, int j, int d, __mmask16 m, const int use_vf) {
    if (use_vf) return _mm512_maskz_loadu_ps(m, B->vf + (int64_t)j * B->hd + d);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, B->v8 + (int64_t)j * B->hd + d)));
}

/* P.V of R rows, 64 dims (four vectors per row) at a time, then 16 (masked at the end); each V
 * vector is loaded (and converted) once for the R rows. */
T_AVX512 HC_INLINE void pv_avx512_r(float *acc, const block *B, const float *alpha, const scores_t *W,
                                    const int R, int nb, const int use_vf) {
    const int hd = B->hd;
    int d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) {
        __m512 a[RMAX][4];
        for (int r = 0; r < R; ++r) {
            const __m512 al = _mm512_set1_ps(alpha[r]);
            for (int x = 0; x < 4; ++x)
                a[r][x] = _mm512_mul_ps(_mm512_loadu_ps(acc + (int64_t)r * hd + d0 + 16 * x), al);
        }
        for (int j = 0; j < nb; ++j) {
            __m512 v[4];
            for (int x = 0; x < 4; ++x) v[x] = v16_avx512(B, j, d0 + 16 * x, 0xffff, use_vf);
            for (int r = 0; r < R; ++r) {
                const __m512 w = _mm512_set1_ps(W[r][j]);
                for (int x = 0; x < 4; ++x) a[r][x] = _mm512_add_ps(a[r][x], _mm512_mul_ps(w, v[x]));
            }
        }
        for (int r = 0; r < R; ++r)
            for (int x = 0; x < 4; ++x) _mm512_storeu_ps(acc + (int64_t)r * hd + d0 + 16 * x, a[r][x]);
    }
    for (; d0 < hd; d0 += 16) {
        const int rem = hd - d0;
        const __mmask16 m = rem >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rem) - 1);
        __m512 a[RMAX];
        for (int r = 0; r < R; ++r)
            a[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, acc + (int64_t)r * hd + d0), _mm512_set1_ps(alpha[r]));
        for (int j = 0; j < nb; ++j) {
            const __m512 v = v16_avx512(B, j, d0, m, use_vf);
            for (int r = 0; r < R; ++r) a[r] = _mm512_add_ps(a[r], _mm512_mul_ps(_mm512_set1_ps(W[r][j]), v));
        }
        for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(acc + (int64_t)r * hd + d0, m, a[r]);
    }
}

T_AVX512 static void pv_rows_avx512(float *acc, const block *B, const float *alpha, const scores_t *W,
                                    int R, int nb) {
    const int f = B->vf != NULL;
    switch (R) {
    case 1: f ? pv_avx512_r(acc, B, alpha, W, 1, nb, 1) : pv_avx512_r(acc, B, alpha, W, 1, nb, 0); break;
    case 2: f ? pv_avx512_r(acc, B, alpha, W, 2, nb, 1) : pv_avx512_r(acc, B, alpha, W, 2, nb, 0); break;
    case 3: f ? pv_avx512_r(acc, B, alpha, W, 3, nb, 1) : pv_avx512_r(acc, B, alpha, W, 3, nb, 0); break;
    default: f ? pv_avx512_r(acc, B, alpha, W, 4, nb, 1) : pv_avx512_r(acc, B, alpha, W, 4, nb, 0);
    }
}

/* hc__exp on 16 lanes, bit for bit: the same float operations in the same order, the range
 * cases (x < -87 -> +0, x > 88 -> +inf, NaN -> x) applied by masks. */
T_AVX512 HC_INLINE __m512 exp16_avx512(__m512 x) {
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __mmask16 lo = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    const __mmask16 hi = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.0f), _CMP_GT_OQ);
    const __m512 xc = _mm512_mask_mov_ps(x, nan | lo | hi, _mm512_setzero_ps());
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(0x1.715476p+0f)), magic), magic);
    __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(0x1.63p-1f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-0x1.bd0106p-13f)));
    const __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(0x1.a0d2cep-13f), r), _mm512_set1_ps(0x1.6e879cp-10f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0x1.111210p-7f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0x1.555382p-5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0x1.555554p-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, z), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    y = _mm512_mask_mov_ps(y, lo, _mm512_setzero_ps());
    y = _mm512_mask_mov_ps(y, hi, _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(y, nan, x);
}

/* The online-softmax step of the generic kernels (same operations), with every exp on 16 lanes:
 * the rows' alphas together in one vector. */
T_AVX512 static int softmax_rows_avx512(scores_t *S, int R, int nb, int nv, const float *vsc, float *m,
                                        float *l, float *alpha) {
    HC_ALIGNED float dm[16] = {0}, al[16];
    for (int r = 0; r < R; ++r) {
        const float mb = maxn_avx512(S[r], nb);
        if (!(mb <= FLT_MAX && mb >= -FLT_MAX)) return HC_ENONFINITE;
        const float mnew = m[r] > mb ? m[r] : mb;
        dm[r] = m[r] - mnew; /* m = -inf on the first block: exp(-inf) = 0 */
        m[r] = mnew;
        const __m512 mv = _mm512_set1_ps(mnew);
        for (int j = 0; j < nv; j += 16)
            _mm512_store_ps(S[r] + j, exp16_avx512(_mm512_sub_ps(_mm512_load_ps(S[r] + j), mv)));
    }
    _mm512_store_ps(al, exp16_avx512(_mm512_load_ps(dm)));
    for (int r = 0; r < R; ++r) alpha[r] = al[r];
    lsum_rows(S, R, nb, l, alpha);
    if (vsc)
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < nv; j += 16)
                _mm512_store_ps(S[r] + j, _mm512_mul_ps(_mm512_load_ps(S[r] + j), _mm512_load_ps(vsc + j)));
    return HC_OK;
}

HC_QUANT_ROWS(avx512, T_AVX512, hc__quant_row_avx512)
HC_GENERIC_KERNELS(avx512, T_AVX512)
#endif /* HC_X86 */

/* ---- dispatch -------------------------------------------------------------------------------- */

typedef struct {
    int (*kv_store)(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos, int64_t capacity,
                    int8_t *codes, uint16_t *scales);
    cvt_f16_fn cvt;
    int (*quant)(const float *x, int64_t rows, int hd, int hdq, float c, int8_t *qq, int32_t *qsum,
                 float *qsc);
    int (*check)(const float *x, int64_t n);
    void (*prep_k)(block *B, const int8_t *k, int nb);
    void (*qk)(const block *B, const int8_t *qq, const int32_t *qsum, int R, int nb, dots_t *D);
    int (*rows_i8)(const block *B, const int8_t *qq, const int32_t *qsum, const float *qsc, int R,
                   int nb, float *m, float *l, float *acc);
    int (*rows_f16)(const block *B, const float *q, float c, int R, int nb, float *m, float *l,
                    float *acc);
} kernels;

#define HC_KERNELS(SUF, CVT) \
    {kv_store_i8_##SUF, CVT, quant_rows_##SUF, check_finite_##SUF, prep_k_##SUF, qk_rows_##SUF, rows_i8_##SUF, rows_f16_##SUF}

static kernels kernels_for(hc_isa isa) {
#if HC_X86
    /* AVX2 implies F16C here; the AVX-VNNI path's attention is the AVX2 one (its int8 q.k runs on
     * 16-bit products, not on vpdpbusd) */
    if (isa == HC_ISA_AVX2 || isa == HC_ISA_AVXVNNI) return (kernels)HC_KERNELS(avx2, cvt_f16_avx2);
    if (isa == HC_ISA_AVX512VNNI) return (kernels)HC_KERNELS(avx512, cvt_f16_avx512);
#else
    (void)isa;
#endif
    return (kernels)HC_KERNELS(scalar, cvt_f16_scalar);
}

int hc_kv_store_i8(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos, int64_t capacity,
                   int8_t *codes, uint16_t *scales) {
    if (t < 0 || n_kv_heads <= 0 || hd <= 0 || pos < 0 || capacity < 0) return HC_EINVAL;
    if (pos + t > capacity) return HC_ECAPACITY;
    return kernels_for(hc_isa_active()).kv_store(x, t, n_kv_heads, hd, pos, capacity, codes, scales);
}

static void block_init(block *B, int hd, char *kx, float *kf, float *vbuf) {
    B->hd = hd;
    B->hdq = round_up(hd, 64);
    B->hd16 = round_up(hd, 16);
    B->kx = kx;
    B->kf = kf;
    B->vbuf = vbuf;
    B->vf = NULL;
    B->k8 = B->v8 = NULL;
    B->cap = B->icap = 0.0f;
}

/* Prepare an int8 block of nb keys (rows k, v; fp16 scales ks, vs; v and the scales may be NULL
 * for q.k alone); V as float when want_vf (several queries share the block). */
static void prep_i8(const kernels *K, block *B, const int8_t *k, const uint16_t *ks, const int8_t *v,
                    const uint16_t *vs, int nb, int want_vf) {
    const int hd = B->hd;
    B->k8 = k;
    B->v8 = v;
    if (ks) {
        K->cvt(ks, nb, B->ksc);
        K->cvt(vs, nb, B->vsc);
        for (int j = nb; j < BLK; ++j) B->ksc[j] = B->vsc[j] = 0.0f;
    }
    K->prep_k(B, k, nb);
    B->vf = NULL;
    if (want_vf && v) {
        float *vf = B->vbuf;
        for (int64_t e = 0; e < (int64_t)nb * hd; ++e) vf[e] = (float)v[e];
        B->vf = vf;
    }
}

static void prep_f16(const kernels *K, block *B, const uint16_t *k, const uint16_t *v, int nb) {
    K->cvt(k, (int64_t)nb * B->hd, B->kf);
    K->cvt(v, (int64_t)nb * B->hd, B->vbuf);
    B->vf = B->vbuf;
}

int64_t hc_attended_keys(int64_t t, int64_t start, int64_t window) {
    const int64_t lo = start + 1, hi = start + t;
    if (window <= 0 || hi <= window) return (lo + hi) * t / 2;
    if (lo > window) return window * t;
    return (lo + window) * (window - lo + 1) / 2 + window * (hi - window);
}

int hc_attn_qk_i8(hc_isa isa, const int8_t *q, const int8_t *k, int64_t n, int hd, int32_t *out) {
    if (n < 0 || hd <= 0 || hd > HC_ATTN_MAX_HEAD_DIM || (int)isa < 0 || isa >= HC_ISA_COUNT)
        return HC_EINVAL;
    if (!(hc_isa_supported() & (1u << isa))) return HC_EUNSUPPORTED;
    const kernels K = kernels_for(isa);
    const int hdq = round_up(hd, 64);
    void *owned;
    char *mem = scratch_get((size_t)hdq + (size_t)BLK * hdq * 2, &owned);
    if (!mem) return HC_ENOMEM;
    int8_t *qq = (int8_t *)mem;
    block B;
    block_init(&B, hd, mem + hdq, NULL, NULL);
    int32_t qsum = 0;
    for (int d = 0; d < hdq; ++d) { qq[d] = d < hd ? q[d] : 0; qsum += qq[d]; }
    HC_ALIGNED dots_t D[RMAX];
    for (int64_t j0 = 0; j0 < n; j0 += BLK) {
        const int nb = (int)(n - j0 < BLK ? n - j0 : BLK);
        prep_i8(&K, &B, k + j0 * hd, NULL, NULL, NULL, nb, 0);
        K.qk(&B, qq, &qsum, 1, nb, D);
        memcpy(out + j0, D[0], sizeof(int32_t) * (size_t)nb);
    }
    free(owned);
    return HC_OK;
}

/* ---- the streaming driver -------------------------------------------------------------------- */

/* The state one call's queries share: sizes, kernels, options, and the scratch the groups reuse. */
typedef struct {
    int is_i8, H, G, hd, hdq, n_kv_heads;
    float c;
    const kernels *K;
    const void *k, *v;
    const uint16_t *k_scale, *v_scale;
    int64_t capacity;
    int8_t *qq;
    int32_t *qsum;
    float *qsc, *m, *l, *acc;
    block *B;
} attn_ctx;

/* tc queries at positions [pos0, pos0+tc) whose keys start at key_lo (all of them): the queries'
 * rows of out are written.  q points at the first query, out at its output row. */
static int attn_group(const attn_ctx *A, const float *qc, int64_t tc, int64_t pos0, int64_t key_lo,
                      float *out) {
    const int H = A->H, G = A->G, hd = A->hd, hdq = A->hdq;
    const kernels K = *A->K;
    block *B = A->B;
    int rc = A->is_i8 ? K.quant(qc, tc * H, hd, hdq, A->c, A->qq, A->qsum, A->qsc) : K.check(qc, tc * H * hd);
    for (int g = 0; g < A->n_kv_heads && rc == HC_OK; ++g) {
        const int64_t base = (int64_t)g * A->capacity, nkeys = pos0 + tc;
        for (int64_t r = 0; r < tc * G; ++r) { A->m[r] = -INFINITY; A->l[r] = 0.0f; }
        memset(A->acc, 0, sizeof(float) * (size_t)(tc * G * hd));
        for (int64_t j0 = key_lo; j0 < nkeys && rc == HC_OK; j0 += BLK) {
            const int nbmax = (int)(nkeys - j0 < BLK ? nkeys - j0 : BLK);
            const int64_t first = j0 > pos0 ? j0 - pos0 : 0; /* first query that sees key j0 */
            if (A->is_i8)
                prep_i8(&K, B, (const int8_t *)A->k + (base + j0) * hd, A->k_scale + base + j0,
                        (const int8_t *)A->v + (base + j0) * hd, A->v_scale + base + j0, nbmax, tc - first > 1);
            else
                prep_f16(&K, B, (const uint16_t *)A->k + (base + j0) * hd,
                         (const uint16_t *)A->v + (base + j0) * hd, nbmax);
            for (int64_t i = first; i < tc && rc == HC_OK; ++i) {
                const int nb = (int)(pos0 + i + 1 - j0 < BLK ? pos0 + i + 1 - j0 : BLK);
                for (int a0 = 0; a0 < G && rc == HC_OK; a0 += RMAX) {
                    const int R = G - a0 < RMAX ? G - a0 : RMAX;
                    const int64_t row = i * G + a0, qrow = i * H + (int64_t)g * G + a0;
                    rc = A->is_i8 ? K.rows_i8(B, A->qq + qrow * hdq, A->qsum + qrow, A->qsc + qrow, R, nb,
                                              A->m + row, A->l + row, A->acc + row * hd)
                                  : K.rows_f16(B, qc + qrow * hd, A->c, R, nb, A->m + row, A->l + row,
                                               A->acc + row * hd);
                }
            }
        }
        if (rc != HC_OK) break;
        for (int64_t i = 0; i < tc; ++i)
            for (int a = 0; a < G; ++a) {
                float *o = out + (i * H + (int64_t)g * G + a) * hd;
                const float *ar = A->acc + (i * G + a) * hd, la = A->l[i * G + a];
                for (int d = 0; d < hd; ++d) o[d] = ar[d] / la;
            }
    }
    return rc;
}

static int attn_run(int is_i8, const float *q, int64_t t, int n_heads, int n_kv_heads, int hd,
                    int64_t start, const void *k, const uint16_t *k_scale, const void *v,
                    const uint16_t *v_scale, int64_t capacity, const hc_attn_opts *opts, float *out) {
    if (t < 0 || n_heads <= 0 || n_kv_heads <= 0 || hd <= 0 || hd > HC_ATTN_MAX_HEAD_DIM ||
        n_heads % n_kv_heads || start < 0 || capacity < 0)
        return HC_EINVAL;
    if (opts && (!(opts->scale >= 0.0f) || !(opts->softcap >= 0.0f) || opts->window < 0 ||
                 opts->scale > 3.4e38f || opts->softcap > 3.4e38f))
        return HC_EINVAL;
    if (start + t > capacity) return HC_ECAPACITY;
    if (t == 0) return HC_OK;
    const int H = n_heads, G = n_heads / n_kv_heads;
    const kernels K = kernels_for(hc_isa_active());
    const int hdq = round_up(hd, 64);
    const int64_t tc_max = t < QCHUNK ? t : QCHUNK;
    const int64_t window = opts ? opts->window : 0;

    /* scratch: quantized queries, row state, block buffers */
    size_t off = 0;
#define PLACE(name, bytes) const size_t name = off; off += ((size_t)(bytes) + 63) & ~(size_t)63
    PLACE(o_qq, is_i8 ? (size_t)tc_max * H * hdq : 0);
    PLACE(o_qsum, sizeof(int32_t) * (size_t)tc_max * H);
    PLACE(o_qsc, sizeof(float) * (size_t)tc_max * H);
    PLACE(o_m, sizeof(float) * (size_t)tc_max * G);
    PLACE(o_l, sizeof(float) * (size_t)tc_max * G);
    PLACE(o_acc, sizeof(float) * (size_t)tc_max * G * hd);
    PLACE(o_kx, is_i8 ? (size_t)BLK * hdq * 2 : 0);
    PLACE(o_kf, is_i8 ? 0 : sizeof(float) * (size_t)BLK * hd);
    PLACE(o_vf, sizeof(float) * (size_t)BLK * hd);
#undef PLACE
    void *owned;
    char *mem = scratch_get(off, &owned);
    if (!mem) return HC_ENOMEM;
    block B;
    block_init(&B, hd, mem + o_kx, (float *)(mem + o_kf), (float *)(mem + o_vf));
    if (opts && opts->softcap > 0.0f) {
        B.cap = opts->softcap;
        B.icap = 1.0f / opts->softcap;
    }
    const attn_ctx A = {is_i8, H, G, hd, hdq, n_kv_heads,
                        opts && opts->scale > 0.0f ? opts->scale : (float)(1.0 / sqrt((double)hd)),
                        &K, k, v, k_scale, v_scale, capacity, (int8_t *)(mem + o_qq),
                        (int32_t *)(mem + o_qsum), (float *)(mem + o_qsc), (float *)(mem + o_m),
                        (float *)(mem + o_l), (float *)(mem + o_acc), &B};

    int rc = HC_OK;
    for (int64_t c0 = 0; c0 < t && rc == HC_OK; c0 += QCHUNK) {
        const int64_t tc = t - c0 < QCHUNK ? t - c0 : QCHUNK, pos0 = start + c0;
        /* queries whose keys start at 0 run together; with a window, the others one by one, their
         * blocks streamed from their window's first key */
        int64_t whole = tc;
        if (window > 0) whole = window - pos0 < 0 ? 0 : (window - pos0 < tc ? window - pos0 : tc);
        if (whole > 0) rc = attn_group(&A, q + c0 * H * hd, whole, pos0, 0, out + c0 * H * hd);
        for (int64_t i = whole; i < tc && rc == HC_OK; ++i)
            rc = attn_group(&A, q + (c0 + i) * H * hd, 1, pos0 + i, pos0 + i - window + 1,
                            out + (c0 + i) * H * hd);
    }
    free(owned);
    return rc;
}

int hc_attn_i8(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
               const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
               int64_t capacity, float *out) {
    return attn_run(1, q, t, n_heads, n_kv_heads, hd, start, k, k_scale, v, v_scale, capacity, NULL, out);
}

int hc_attn_f16(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                const uint16_t *k, const uint16_t *v, int64_t capacity, float *out) {
    return attn_run(0, q, t, n_heads, n_kv_heads, hd, start, k, NULL, v, NULL, capacity, NULL, out);
}

int hc_attn_i8_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                    const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
                    int64_t capacity, const hc_attn_opts *opts, float *out) {
    return attn_run(1, q, t, n_heads, n_kv_heads, hd, start, k, k_scale, v, v_scale, capacity, opts, out);
}

int hc_attn_f16_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                     const uint16_t *k, const uint16_t *v, int64_t capacity, const hc_attn_opts *opts,
                     float *out) {
    return attn_run(0, q, t, n_heads, n_kv_heads, hd, start, k, NULL, v, NULL, capacity, opts, out);
}
