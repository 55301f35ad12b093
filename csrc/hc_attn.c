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
#include "hc_vecmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HC_X86 1
#else
#define HC_X86 0
#endif

#define BLK HC_ATTN_BLOCK

/* ---- quantizers ------------------------------------------------------------------------------ */

static inline int amax_f32(const float *x, int n, float *amax) {
    float a = 0.0f;
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        float v = fabsf(x[i]);
        bad |= !(v <= FLT_MAX);
        a = v > a ? v : a;
    }
    *amax = a;
    return bad ? HC_ENONFINITE : HC_OK;
}

static inline void quant_codes(const float *x, int n, float inv, int8_t *q) {
    for (int i = 0; i < n; ++i) {
        float v = rintf(x[i] * inv);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[i] = (int8_t)v;
    }
}

int hc_kv_store_i8(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos, int64_t capacity,
                   int8_t *codes, uint16_t *scales) {
    if (t < 0 || n_kv_heads <= 0 || hd <= 0 || pos < 0 || capacity < 0) return HC_EINVAL;
    if (pos + t > capacity) return HC_ECAPACITY;
    for (int64_t i = 0; i < t; ++i)
        for (int g = 0; g < n_kv_heads; ++g) {
            const float *xi = x + (i * n_kv_heads + g) * (int64_t)hd;
            int64_t slot = (int64_t)g * capacity + pos + i;
            float amax;
            if (amax_f32(xi, hd, &amax) != HC_OK) return HC_ENONFINITE;
            uint16_t h = hc__f32_to_f16(amax / 127.0f);
            if ((h & 0x7fff) == 0x7c00) return HC_ENONFINITE; /* scale overflows fp16 */
            float s = hc__f16_to_f32(h);
            float inv = s > 0.0f ? 1.0f / s : 0.0f;
            quant_codes(xi, hd, inv, codes + slot * hd);
            scales[slot] = h;
        }
    return HC_OK;
}

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

/* ---- q.k: exact int32 dot products of G int8 query vectors with nk int8 keys --------------------
 * D[a * BLK + j] = sum_d q[a*hd + d] * k[j*hd + d]. */

typedef void (*qk_fn)(const int8_t *q, const int16_t *q16, const int32_t *qsum, int G,
                      const int8_t *k, int64_t nk, int hd, int32_t *D, int64_t ldd);

static void qk_i8_scalar(const int8_t *q, const int16_t *q16, const int32_t *qsum, int G,
                         const int8_t *k, int64_t nk, int hd, int32_t *D, int64_t ldd) {
    (void)q16; (void)qsum;
    for (int64_t j = 0; j < nk; ++j) {
        const int8_t *kj = k + j * hd;
        for (int a = 0; a < G; ++a) {
            const int8_t *qa = q + (int64_t)a * hd;
            int32_t s = 0;
            for (int d = 0; d < hd; ++d) s += (int32_t)qa[d] * (int32_t)kj[d];
            D[a * ldd + j] = s;
        }
    }
}

/* ---- P.V: acc[d] = acc[d] + w[j] * float(v[j, d]) for j ascending (int8 V, scale folded in w) */

typedef void (*pv_i8_fn)(float *acc, const float *w, const int8_t *v, int64_t nk, int hd);
typedef void (*pv_f32_fn)(float *acc, const float *w, const float *v, int64_t nk, int hd);
typedef void (*cvt_f16_fn)(const uint16_t *h, int64_t n, float *out);
typedef void (*dot_fn)(const float *q, int G, const float *k, int64_t nk, int hd, float *s,
                       int64_t lds);

static void pv_i8_scalar(float *acc, const float *w, const int8_t *v, int64_t nk, int hd) {
    for (int64_t j = 0; j < nk; ++j) {
        const float wj = w[j];
        const int8_t *vj = v + j * hd;
        for (int d = 0; d < hd; ++d) acc[d] = acc[d] + wj * (float)vj[d];
    }
}

/* The float kernels of the fp16 cache: one C body, compiled for each target so the compiler may use
 * that target's vectors; the arithmetic is elementwise (P.V) or in the fixed 16-lane order (dot). */
#define HC_FLOAT_KERNELS(SUF, ATTR)                                                                \
    ATTR static void pv_f32_##SUF(float *acc, const float *w, const float *v, int64_t nk, int hd) { \
        for (int64_t j = 0; j < nk; ++j) {                                                         \
            const float wj = w[j];                                                                 \
            const float *vj = v + j * hd;                                                          \
            for (int d = 0; d < hd; ++d) acc[d] = acc[d] + wj * vj[d];                             \
        }                                                                                          \
    }                                                                                              \
    ATTR static void dot_f32_##SUF(const float *q, int G, const float *k, int64_t nk, int hd,      \
                                   float *s, int64_t lds) {                                        \
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

HC_FLOAT_KERNELS(scalar, )

static void cvt_f16_scalar(const uint16_t *h, int64_t n, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}

#if HC_X86
#define T_AVX2 __attribute__((target("avx2,f16c")))
#define T_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

HC_FLOAT_KERNELS(avx2, T_AVX2)
HC_FLOAT_KERNELS(avx512, T_AVX512)

/* 16-lane float dots with the fold 8, 4, 2, 1 of hc__fold16, in registers. Lanes past hd are
 * loaded as zeros: they add +0 to lanes that never hold -0, which leaves them unchanged. */
T_AVX2 static inline float fold8x2_avx2(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);                                         /* l + 8 */
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); /* l + 4 */
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));                                   /* l + 2 */
    b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));                               /* l + 1 */
    return _mm_cvtss_f32(b);
}

T_AVX2 static void dot_f32_avx2_x(const float *q, int G, const float *k, int64_t nk, int hd,
                                  float *s, int64_t lds) {
    if (hd % 16) { dot_f32_avx2(q, G, k, nk, hd, s, lds); return; }
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

T_AVX512 static void dot_f32_avx512_x(const float *q, int G, const float *k, int64_t nk, int hd,
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
            __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
            __m128 b = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            b = _mm_add_ps(b, _mm_movehl_ps(b, b));
            b = _mm_add_ss(b, _mm_shuffle_ps(b, b, 1));
            s[a * lds + j] = _mm_cvtss_f32(b);
        }
    }
}

T_AVX2 static inline int32_t hsum256_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* AVX2: sign-extend to int16 and multiply-add pairs into int32 (vpmaddwd): exact. */
T_AVX2 static void qk_i8_avx2(const int8_t *q, const int16_t *q16, const int32_t *qsum, int G,
                              const int8_t *k, int64_t nk, int hd, int32_t *D, int64_t ldd) {
    if (hd % 16) { qk_i8_scalar(q, q16, qsum, G, k, nk, hd, D, ldd); return; }
    for (int64_t j = 0; j < nk; ++j) {
        const int8_t *kj = k + j * hd;
        for (int a = 0; a < G; ++a) {
            const int16_t *qa = q16 + (int64_t)a * hd;
            __m256i acc = _mm256_setzero_si256();
            for (int d = 0; d < hd; d += 16) {
                __m256i kv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(kj + d)));
                __m256i qv = _mm256_loadu_si256((const __m256i *)(qa + d));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(kv, qv));
            }
            D[a * ldd + j] = hsum256_epi32(acc);
        }
    }
}

T_AVX2 static void pv_i8_avx2(float *acc, const float *w, const int8_t *v, int64_t nk, int hd) {
    int d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + d0), a1 = _mm256_loadu_ps(acc + d0 + 8);
        __m256 a2 = _mm256_loadu_ps(acc + d0 + 16), a3 = _mm256_loadu_ps(acc + d0 + 24);
        for (int64_t j = 0; j < nk; ++j) {
            const int8_t *vj = v + j * hd + d0;
            __m256 wj = _mm256_set1_ps(w[j]);
            __m256i b = _mm256_loadu_si256((const __m256i *)vj);
            __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
            __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            __m256 v2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            __m256 v3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(wj, v0));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(wj, v1));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(wj, v2));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(wj, v3));
        }
        _mm256_storeu_ps(acc + d0, a0); _mm256_storeu_ps(acc + d0 + 8, a1);
        _mm256_storeu_ps(acc + d0 + 16, a2); _mm256_storeu_ps(acc + d0 + 24, a3);
    }
    if (d0 < hd) {
        for (int64_t j = 0; j < nk; ++j) {
            const float wj = w[j];
            const int8_t *vj = v + j * hd;
            for (int d = d0; d < hd; ++d) acc[d] = acc[d] + wj * (float)vj[d];
        }
    }
}

T_AVX2 static void cvt_f16_avx2(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}

/* AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the key bytes are offset by 128
 * (b ^ 0x80) and 128 * sum(q) is subtracted: exact integer arithmetic (docs/numerics.md). */
T_AVX512 static inline __m512i dp_key(__m512i acc, const int8_t *kj, const int8_t *qa, int hd) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int d = 0; d < hd; d += 64) {
        int rem = hd - d;
        __mmask64 m = rem >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << rem) - 1);
        __m512i kx = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, kj + d), flip);
        __m512i qv = _mm512_maskz_loadu_epi8(m, qa + d); /* 0 past hd: no contribution */
        acc = _mm512_dpbusd_epi32(acc, kx, qv);
    }
    return acc;
}

/* Horizontal sums of four int32 vectors: returns (sum a0, sum a1, sum a2, sum a3). */
T_AVX512 static inline __m128i hsum4_epi32(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
    __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the key bytes are offset by 128
 * (b ^ 0x80) and 128 * sum(q) is subtracted: exact integer arithmetic (docs/numerics.md). Keys go
 * four at a time so one transposing reduction serves four dot products. */
T_AVX512 static void qk_i8_avx512(const int8_t *q, const int16_t *q16, const int32_t *qsum, int G,
                                  const int8_t *k, int64_t nk, int hd, int32_t *D, int64_t ldd) {
    (void)q16;
    for (int a = 0; a < G; ++a) {
        const int8_t *qa = q + (int64_t)a * hd;
        const __m128i corr = _mm_set1_epi32(128 * qsum[a]);
        int64_t j = 0;
        for (; j + 4 <= nk; j += 4) {
            const int8_t *kj = k + j * hd;
            __m512i a0 = dp_key(_mm512_setzero_si512(), kj, qa, hd);
            __m512i a1 = dp_key(_mm512_setzero_si512(), kj + hd, qa, hd);
            __m512i a2 = dp_key(_mm512_setzero_si512(), kj + 2 * hd, qa, hd);
            __m512i a3 = dp_key(_mm512_setzero_si512(), kj + 3 * hd, qa, hd);
            _mm_storeu_si128((__m128i *)(D + a * ldd + j), _mm_sub_epi32(hsum4_epi32(a0, a1, a2, a3), corr));
        }
        for (; j < nk; ++j)
            D[a * ldd + j] = _mm512_reduce_add_epi32(dp_key(_mm512_setzero_si512(), k + j * hd, qa, hd)) -
                             128 * qsum[a];
    }
}

T_AVX512 static void pv_i8_avx512(float *acc, const float *w, const int8_t *v, int64_t nk, int hd) {
    int d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) {
        __m512 a0 = _mm512_loadu_ps(acc + d0), a1 = _mm512_loadu_ps(acc + d0 + 16);
        __m512 a2 = _mm512_loadu_ps(acc + d0 + 32), a3 = _mm512_loadu_ps(acc + d0 + 48);
        for (int64_t j = 0; j < nk; ++j) {
            const int8_t *vj = v + j * hd + d0;
            __m512 wj = _mm512_set1_ps(w[j]);
            __m512 v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)vj)));
            __m512 v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vj + 16))));
            __m512 v2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vj + 32))));
            __m512 v3 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(vj + 48))));
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(wj, v0));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(wj, v1));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(wj, v2));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(wj, v3));
        }
        _mm512_storeu_ps(acc + d0, a0); _mm512_storeu_ps(acc + d0 + 16, a1);
        _mm512_storeu_ps(acc + d0 + 32, a2); _mm512_storeu_ps(acc + d0 + 48, a3);
    }
    for (; d0 + 16 <= hd; d0 += 16) {
        __m512 a0 = _mm512_loadu_ps(acc + d0);
        for (int64_t j = 0; j < nk; ++j) {
            __m512 v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                _mm_loadu_si128((const __m128i *)(v + j * hd + d0))));
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_set1_ps(w[j]), v0));
        }
        _mm512_storeu_ps(acc + d0, a0);
    }
    if (d0 < hd) {
        for (int64_t j = 0; j < nk; ++j) {
            const float wj = w[j];
            const int8_t *vj = v + j * hd;
            for (int d = d0; d < hd; ++d) acc[d] = acc[d] + wj * (float)vj[d];
        }
    }
}

T_AVX512 static void cvt_f16_avx512(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; ++i) out[i] = hc__f16_to_f32(h[i]);
}
#endif /* HC_X86 */

typedef struct {
    qk_fn qk;
    pv_i8_fn pv_i8;
    pv_f32_fn pv_f32;
    dot_fn dot;
    cvt_f16_fn cvt;
} kernels;

static kernels kernels_for(hc_isa isa) {
    kernels k = {qk_i8_scalar, pv_i8_scalar, pv_f32_scalar, dot_f32_scalar, cvt_f16_scalar};
#if HC_X86
    if (isa == HC_ISA_AVX2) {
        k.qk = qk_i8_avx2; k.pv_i8 = pv_i8_avx2; k.pv_f32 = pv_f32_avx2; k.dot = dot_f32_avx2_x;
        if (__builtin_cpu_supports("f16c")) k.cvt = cvt_f16_avx2;
    } else if (isa == HC_ISA_AVX512VNNI) {
        k.qk = qk_i8_avx512; k.pv_i8 = pv_i8_avx512; k.pv_f32 = pv_f32_avx512;
        k.dot = dot_f32_avx512_x; k.cvt = cvt_f16_avx512;
    }
#else
    (void)isa;
#endif
    return k;
}

int hc_attn_qk_i8(hc_isa isa, const int8_t *q, const int8_t *k, int64_t n, int hd, int32_t *out) {
    if (n < 0 || hd <= 0 || (int)isa < 0 || isa >= HC_ISA_COUNT) return HC_EINVAL;
    if (!(hc_isa_supported() & (1u << isa))) return HC_EUNSUPPORTED;
    int16_t *q16 = malloc(sizeof(int16_t) * (size_t)hd);
    if (!q16) return HC_ENOMEM;
    int32_t qsum = 0;
    for (int d = 0; d < hd; ++d) { q16[d] = q[d]; qsum += q[d]; }
    kernels kf = kernels_for(isa);
    for (int64_t j0 = 0; j0 < n; j0 += BLK) {
        int64_t nb = n - j0 < BLK ? n - j0 : BLK;
        kf.qk(q, q16, &qsum, 1, k + j0 * hd, nb, hd, out + j0, BLK);
    }
    free(q16);
    return HC_OK;
}

/* ---- the streaming driver -------------------------------------------------------------------- */

typedef struct {
    int8_t *qq;    /* G*hd int8 quantized queries            */
    int16_t *q16;  /* G*hd the same, widened                 */
    int32_t *qsum; /* G                                      */
    float *qf;     /* G*hd float queries (fp16 cache)        */
    float *qsc;    /* G    q_scale * 1/sqrt(hd)              */
    int32_t *D;    /* G*BLK                                  */
    float *s;      /* G*BLK scores, then probabilities       */
    float *w;      /* BLK  p * v_scale                       */
    float *ksc, *vsc; /* BLK K and V scales of the block, float */
    float *kf, *vf;/* BLK*hd converted fp16 block            */
    float *acc;    /* G*hd                                   */
    float *m, *l;  /* G                                      */
    void *mem;
} scratch;

static int scratch_alloc(scratch *S, int G, int hd) {
    size_t gh = (size_t)G * hd;
    /* 15 arrays, each rounded up to 64 bytes */
    size_t bytes = gh * (4 + 4 + 2 + 1) + 2 * (size_t)BLK * hd * 4 + 2 * (size_t)G * BLK * 4 +
                   3 * BLK * 4 + 5 * (size_t)G * 4 + 15 * 64;
    char *p = malloc(bytes);
    if (!p) return HC_ENOMEM;
    S->mem = p;
#define TAKE(field, n, T) do { S->field = (T *)p; p += (((n) * sizeof(T)) + 63) / 64 * 64; } while (0)
    TAKE(qf, gh, float); TAKE(acc, gh, float); TAKE(kf, (size_t)BLK * hd, float);
    TAKE(vf, (size_t)BLK * hd, float); TAKE(s, (size_t)G * BLK, float); TAKE(D, (size_t)G * BLK, int32_t);
    TAKE(w, BLK, float); TAKE(ksc, BLK, float); TAKE(vsc, BLK, float); TAKE(qsc, G, float); TAKE(m, G, float); TAKE(l, G, float);
    TAKE(qsum, G, int32_t); TAKE(q16, gh, int16_t); TAKE(qq, gh, int8_t);
#undef TAKE
    return HC_OK;
}

/* Online-softmax update of head a with the scores s[0..nb) of one block; returns alpha (the
 * factor the accumulator must be multiplied by) and turns s into probabilities. */
static inline int softmax_block(float *s, int64_t nb, float *m, float *l, float *alpha) {
    float mb = -INFINITY;
    for (int64_t j = 0; j < nb; ++j) mb = s[j] > mb ? s[j] : mb;
    if (!(mb <= FLT_MAX && mb >= -FLT_MAX)) return HC_ENONFINITE;
    float mnew = *m > mb ? *m : mb;
    float a = hc__exp(*m - mnew); /* m = -inf on the first block: exp(-inf) = 0 */
    for (int64_t j = 0; j < nb; ++j) s[j] = hc__exp(s[j] - mnew);
    float sum = *l * a;
    for (int64_t j = 0; j < nb; ++j) sum = sum + s[j];
    *l = sum;
    *m = mnew;
    *alpha = a;
    return HC_OK;
}

static int attn_run(int is_i8, const float *q, int64_t t, int n_heads, int n_kv_heads, int hd,
                    int64_t start, const void *k, const uint16_t *k_scale, const void *v,
                    const uint16_t *v_scale, int64_t capacity, float *out) {
    if (t < 0 || n_heads <= 0 || n_kv_heads <= 0 || hd <= 0 || hd > HC_ATTN_MAX_HEAD_DIM ||
        n_heads % n_kv_heads || start < 0 || capacity < 0)
        return HC_EINVAL;
    if (start + t > capacity) return HC_ECAPACITY;
    if (t == 0) return HC_OK;
    const int G = n_heads / n_kv_heads;
    const float c = (float)(1.0 / sqrt((double)hd));
    kernels kf = kernels_for(hc_isa_active());
    scratch S;
    if (scratch_alloc(&S, G, hd) != HC_OK) return HC_ENOMEM;
    int rc = HC_OK;
    for (int64_t i = 0; i < t && rc == HC_OK; ++i) {
        const int64_t nkeys = start + i + 1;
        for (int g = 0; g < n_kv_heads && rc == HC_OK; ++g) {
            const int64_t base = (int64_t)g * capacity;
            for (int a = 0; a < G; ++a) {
                const float *qa = q + (i * n_heads + (int64_t)g * G + a) * hd;
                float amax;
                if (amax_f32(qa, hd, &amax) != HC_OK) { rc = HC_ENONFINITE; break; }
                if (is_i8) {
                    float qs = amax / 127.0f;
                    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
                    int8_t *qq = S.qq + (int64_t)a * hd;
                    quant_codes(qa, hd, inv, qq);
                    int32_t sum = 0;
                    for (int d = 0; d < hd; ++d) { S.q16[a * hd + d] = qq[d]; sum += qq[d]; }
                    S.qsum[a] = sum;
                    S.qsc[a] = qs * c;
                } else {
                    memcpy(S.qf + (int64_t)a * hd, qa, sizeof(float) * hd);
                }
                S.m[a] = -INFINITY;
                S.l[a] = 0.0f;
                memset(S.acc + (int64_t)a * hd, 0, sizeof(float) * hd);
            }
            if (rc != HC_OK) break;
            for (int64_t j0 = 0; j0 < nkeys && rc == HC_OK; j0 += BLK) {
                const int64_t nb = nkeys - j0 < BLK ? nkeys - j0 : BLK;
                const int8_t *vb8 = NULL;
                if (is_i8) {
                    const int8_t *kb = (const int8_t *)k + (base + j0) * hd;
                    vb8 = (const int8_t *)v + (base + j0) * hd;
                    kf.qk(S.qq, S.q16, S.qsum, G, kb, nb, hd, S.D, BLK);
                    kf.cvt(k_scale + base + j0, nb, S.ksc);
                    kf.cvt(v_scale + base + j0, nb, S.vsc);
                    for (int a = 0; a < G; ++a)
                        for (int64_t j = 0; j < nb; ++j)
                            S.s[a * BLK + j] = ((float)S.D[a * BLK + j] * S.ksc[j]) * S.qsc[a];
                } else {
                    kf.cvt((const uint16_t *)k + (base + j0) * hd, nb * hd, S.kf);
                    kf.cvt((const uint16_t *)v + (base + j0) * hd, nb * hd, S.vf);
                    kf.dot(S.qf, G, S.kf, nb, hd, S.s, BLK);
                    for (int a = 0; a < G; ++a)
                        for (int64_t j = 0; j < nb; ++j) S.s[a * BLK + j] = S.s[a * BLK + j] * c;
                }
                for (int a = 0; a < G; ++a) {
                    float *sa = S.s + a * BLK, *acc = S.acc + (int64_t)a * hd, alpha;
                    if (softmax_block(sa, nb, S.m + a, S.l + a, &alpha) != HC_OK) {
                        rc = HC_ENONFINITE;
                        break;
                    }
                    for (int d = 0; d < hd; ++d) acc[d] = acc[d] * alpha;
                    if (is_i8) {
                        for (int64_t j = 0; j < nb; ++j)
                            S.w[j] = sa[j] * S.vsc[j];
                        kf.pv_i8(acc, S.w, vb8, nb, hd);
                    } else {
                        kf.pv_f32(acc, sa, S.vf, nb, hd);
                    }
                }
            }
            if (rc != HC_OK) break;
            for (int a = 0; a < G; ++a) {
                float *o = out + (i * n_heads + (int64_t)g * G + a) * hd;
                const float *acc = S.acc + (int64_t)a * hd, la = S.l[a];
                for (int d = 0; d < hd; ++d) o[d] = acc[d] / la;
            }
        }
    }
    free(S.mem);
    return rc;
}

int hc_attn_i8(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
               const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
               int64_t capacity, float *out) {
    return attn_run(1, q, t, n_heads, n_kv_heads, hd, start, k, k_scale, v, v_scale, capacity, out);
}

int hc_attn_f16(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                const uint16_t *k, const uint16_t *v, int64_t capacity, float *out) {
    return attn_run(0, q, t, n_heads, n_kv_heads, hd, start, k, NULL, v, NULL, capacity, out);
}
