/* The activation quantizer (not public API), shared by the CIM products (hc_cim.c: activations per
 * group) and the attention unit (hc_attn.c: queries per (token, head)).  The rule is written down in
 * docs/numerics.md "Activations":
 *   amax = max|x|,  inv = amax > 0 ? 127/amax : 0,  scale = amax/127,
 *   q = clamp(rne(x * inv), -127, 127),  0 where x * inv is NaN (0 * inf: subnormal amax).
 * hc__quant_row states it in C (the scalar path, and other architectures, whose compilers vectorize
 * its loops: elementwise or a max, so any vector width gives the same bits); hc__quant_row_avx2
 * (also the AVX-VNNI path's) and hc__quant_row_avx512 are the same rule in intrinsics.  The KV
 * store's rule (hc_attn.c) shares the code step, hc__quant_code. */
#ifndef HC_QUANT_H
#define HC_QUANT_H

#include <stdint.h>
#include <string.h>

#include "hc_vecmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

/* One code: clamp(rne(v), -127, 127) of v = x * inv, which must not be NaN.  rne is the
 * (v + 1.5*2^23) - 1.5*2^23 idiom, exact round-half-to-even for |v| <= 2^22 under strict IEEE
 * evaluation (no fast-math, no contraction); +-inf stays +-inf and is clamped to +-127. */
static inline __attribute__((always_inline)) int32_t hc__quant_code(float x, float inv) {
    float v = (x * inv + 0x1.8p23f) - 0x1.8p23f;
    v = v > 127.0f ? 127.0f : v;
    v = v < -127.0f ? -127.0f : v;
    return (int32_t)v;
}

/* The row's scalars from amax = max|x| as bits (hc__absmax_bits): 1 when x held NaN or infinity,
 * else 0 with *scale = amax/127 and *inv = amax > 0 ? 127/amax : 0. */
static inline __attribute__((always_inline)) int hc__quant_scale(uint32_t amax_bits, float *scale, float *inv) {
    if (amax_bits >= 0x7f800000u) return 1;
    const float amax = hc__u2f(amax_bits);
    *inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *scale = amax / 127.0f;
    return 0;
}

/* Quantize the n floats at x into codes q[0, n), zeros into q[n, npad); *scale = amax/127 and, when
 * sum is not NULL, *sum = the sum of the codes.  Returns 1 (writing nothing) when x holds NaN or
 * infinity, else 0.  The forms per ISA below do the same. */
static inline __attribute__((always_inline)) int hc__quant_row(const float *x, int64_t n, int64_t npad,
                                                              int8_t *q, float *scale, int32_t *sum) {
    float inv;
    if (hc__quant_scale(hc__absmax_bits(x, n), scale, &inv)) return 1;
    int32_t s = 0;
    if (inv <= 0x1.fffffep127f) { /* the loop free of NaN vectorizes with its sum */
        for (int64_t j = 0; j < n; ++j) {
            const int8_t code = (int8_t)hc__quant_code(x[j], inv);
            q[j] = code;
            s += code;
        }
    } else { /* 127/amax overflowed: x * inv is +-inf for x != 0 (code +-127), NaN for x = 0 (code 0) */
        for (int64_t j = 0; j < n; ++j) {
            const int8_t code = x[j] == 0.0f ? 0 : (int8_t)hc__quant_code(x[j], inv);
            q[j] = code;
            s += code;
        }
    }
    for (int64_t j = n; j < npad; ++j) q[j] = 0;
    if (sum) *sum = s;
    return 0;
}

#if defined(__x86_64__) || defined(__i386__)
/* hc__quant_row on 8 lanes: amax on the bits, rne by rounding instruction (the same
 * round-half-to-even), the clamp as max(min(v, 127), -127) (NaN becomes 127), then a NaN v (before
 * the clamp) masked to code 0.  The tail of n mod 8 inputs goes through a zero-padded vector. */
static inline __attribute__((always_inline, target("avx2"))) __m256i
hc__quant8_avx2(__m256 x, __m256 inv) {
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    __m256 v = _mm256_mul_ps(x, inv);
    const __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
    v = _mm256_and_ps(_mm256_max_ps(_mm256_min_ps(v, hi), lo), ordered);
    return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

static inline __attribute__((always_inline, target("avx2"))) int
hc__quant_row_avx2(const float *x, int64_t n, int64_t npad, int8_t *q, float *scale, int32_t *sum) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    const int64_t full = n & ~(int64_t)7;
    float tail[8] = {0};
    for (int64_t j = full; j < n; ++j) tail[j - full] = x[j];
    const __m256 xt = _mm256_loadu_ps(tail);
    __m256i mx = _mm256_and_si256(_mm256_castps_si256(xt), absmask);
    for (int64_t j = 0; j < full; j += 8)
        mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + j)), absmask));
    __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(1, 0, 3, 2)));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, _MM_SHUFFLE(2, 3, 0, 1)));
    float inv1;
    if (hc__quant_scale((uint32_t)_mm_cvtsi128_si32(m4), scale, &inv1)) return 1;
    const __m256 inv = _mm256_set1_ps(inv1);
    __m256i s = _mm256_setzero_si256();
    for (int64_t j = 0; j < full; j += 8) {
        const __m256i code = hc__quant8_avx2(_mm256_loadu_ps(x + j), inv);
        const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64((__m128i *)(q + j), _mm_packs_epi16(c16, c16));
        s = _mm256_add_epi32(s, code);
    }
    if (full < n) {
        const __m256i code = hc__quant8_avx2(xt, inv); /* padding lanes: code 0 */
        const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
        int8_t codes[16];
        _mm_storeu_si128((__m128i *)codes, _mm_packs_epi16(c16, c16));
        memcpy(q + full, codes, (size_t)(n - full));
        s = _mm256_add_epi32(s, code);
    }
    for (int64_t j = n; j < npad; ++j) q[j] = 0;
    if (sum) {
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        *sum = _mm_cvtsi128_si32(s4);
    }
    return 0;
}

/* hc__quant_row on 16 lanes: amax on the bits, rne by the same idiom, the clamp as max(-127, v)
 * then min(127, .) (both keep a NaN v, as the ternaries do), a NaN code masked to 0.  The tails
 * (past the last full 16 inputs, up to npad) use masked loads and stores. */
static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) __m512i
hc__quant16_avx512(__m512 x, __m512 inv) {
    const __m512 magic = _mm512_set1_ps(0x1.8p23f), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    __m512 v = _mm512_mul_ps(x, inv);
    v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
    v = _mm512_min_ps(hi, _mm512_max_ps(lo, v));
    return _mm512_maskz_cvttps_epi32(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
}

static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl"))) int
hc__quant_row_avx512(const float *x, int64_t n, int64_t npad, int8_t *q, float *scale, int32_t *sum) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const int64_t full = n & ~(int64_t)15;
    const __mmask16 live = (__mmask16)((1u << (n - full)) - 1u);
    __m512i mx = _mm512_and_si512(_mm512_maskz_loadu_epi32(live, x + full), absmask);
    for (int64_t j = 0; j < full; j += 16)
        mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_loadu_si512(x + j), absmask));
    float inv1;
    if (hc__quant_scale(_mm512_reduce_max_epu32(mx), scale, &inv1)) return 1;
    const __m512 inv = _mm512_set1_ps(inv1);
    __m512i s = _mm512_setzero_si512();
    for (int64_t j = 0; j < full; j += 16) {
        const __m512i code = hc__quant16_avx512(_mm512_loadu_ps(x + j), inv);
        _mm_storeu_si128((__m128i *)(q + j), _mm512_cvtepi32_epi8(code));
        s = _mm512_add_epi32(s, code);
    }
    for (int64_t j = full; j < npad; j += 16) { /* lanes past n load 0: code 0 */
        const int64_t left = n - j, room = npad - j;
        const __mmask16 in = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
        const __mmask16 out = room >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << room) - 1u);
        const __m512i code = hc__quant16_avx512(_mm512_maskz_loadu_ps(in, x + j), inv);
        _mm512_mask_cvtepi32_storeu_epi8(q + j, out, code);
        s = _mm512_add_epi32(s, code);
    }
    if (sum) *sum = _mm512_reduce_add_epi32(s);
    return 0;
}
#endif

#endif
