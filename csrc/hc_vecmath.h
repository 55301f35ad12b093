/* Private inline helpers of the vector unit (not public API), shared by hc_vec.c, hc_attn.c,
 * hc_quant.h and hc_cim.c (whose scalar path converts the fp16 scales with hc__f16_to_f32).
 * The float rules are written down in docs/numerics.md "Vector unit"; hcemu/vector_ref.py mirrors
 * them operation for operation, so the constants are hex literals exactly representable in float32. */
#ifndef HC_VECMATH_H
#define HC_VECMATH_H

#include <stdint.h>
#include <string.h>

static inline uint32_t hc__f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float hc__u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* max |x| over n floats, as bits: for non-negative floats the uint32 order is the float order, and
 * inf/NaN have the largest patterns (>= 0x7f800000).  Inlined into each ISA's copy of its caller,
 * whose target the loop is vectorized for. */
static inline __attribute__((always_inline)) uint32_t hc__absmax_bits(const float *x, int64_t n) {
    uint32_t mx = 0;
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = hc__f2u(x[i]) & 0x7fffffffu;
        mx = u > mx ? u : mx;
    }
    return mx;
}

/* exp(x) in float32: n = rne(x*log2e) (by the 1.5*2^23 trick), r = (x - n*C1) - n*C2,
 * p = ((((((P0*r + P1)*r + P2)*r + P3)*r + P4)*r + P5)*r*r + r) + 1, y = p * 2^n.
 * Branch-free selects so loops over it vectorize. */
static inline float hc__exp(float x) {
    const float log2e = 0x1.715476p+0f, magic = 12582912.0f;
    const float c1 = 0x1.63p-1f, c2 = -0x1.bd0106p-13f;
    /* range tests on the bits (integer compares keep the loop free of FP-compare control flow,
     * so compilers vectorize it): x < -87, x > 88, NaN */
    const uint32_t ux = hc__f2u(x), ax = ux & 0x7fffffffu;
    const uint32_t is_nan = (uint32_t)0 - (uint32_t)(ax > 0x7f800000u);             /* all-ones masks */
    const uint32_t neg = (uint32_t)0 - (ux >> 31);
    const uint32_t lo = neg & ((uint32_t)0 - (uint32_t)(ax > 0x42ae0000u)) & ~is_nan; /* 87.0f */
    const uint32_t hi = ~neg & ((uint32_t)0 - (uint32_t)(ax > 0x42b00000u)) & ~is_nan; /* 88.0f */
    const uint32_t keep = ~(lo | hi | is_nan);
    float xc = hc__u2f((ux & keep) | (0xc2ae0000u & lo) | (0x42b00000u & hi)); /* NaN -> 0 */
    float n = (xc * log2e + magic) - magic;
    float r = xc - n * c1;
    r = r - n * c2;
    float z = r * r;
    float p = 0x1.a0d2cep-13f;
    p = p * r + 0x1.6e879cp-10f;
    p = p * r + 0x1.111210p-7f;
    p = p * r + 0x1.555382p-5f;
    p = p * r + 0x1.555554p-3f;
    p = p * r + 0.5f;
    p = p * z + r;
    p = p + 1.0f;
    float y = p * hc__u2f((uint32_t)((int32_t)n + 127) << 23);
    return hc__u2f((hc__f2u(y) & keep) | (0x7f800000u & hi) | (ux & is_nan)); /* lo -> 0 */
}

/* float32 -> binary16, round to nearest even (F. Giesen's float_to_half_fast3_rtne). */
static inline uint16_t hc__f32_to_f16(float f) {
    uint32_t x = hc__f2u(f);
    uint32_t sign = x & 0x80000000u;
    uint16_t o;
    x ^= sign;
    if (x >= (uint32_t)(127 + 16) << 23) {          /* >= 65536, inf or NaN */
        o = (x > 0x7f800000u) ? 0x7e00 : 0x7c00;
    } else if (x < (uint32_t)113 << 23) {           /* below 2^-14: subnormal half (or zero) */
        const uint32_t magic = (uint32_t)((127 - 15) + (23 - 10) + 1) << 23;
        float g = hc__u2f(x) + hc__u2f(magic);    /* the FPU rounds to nearest even here */
        o = (uint16_t)(hc__f2u(g) - magic);
    } else {
        uint32_t mant_odd = (x >> 13) & 1;
        x += ((uint32_t)(15 - 127) << 23) + 0xfff;
        x += mant_odd;
        o = (uint16_t)(x >> 13);                   /* a carry into exponent 31 gives inf: correct */
    }
    return (uint16_t)(o | (sign >> 16));
}

static inline float hc__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        float f = (float)m * 0x1p-24f;              /* exact: m < 2^10 */
        return hc__u2f(hc__f2u(f) | sign);
    }
    if (e == 31) return hc__u2f(sign | 0x7f800000u | (m << 13));
    return hc__u2f(sign | ((e + 112) << 23) | (m << 13));
}

/* 16-lane float32 dot product / sum of squares in the fixed order of docs/numerics.md:
 * lane l accumulates elements j = l mod 16 in ascending j, then lanes fold 8, 4, 2, 1. */
#define HC_LANES 16
static inline float hc__fold16(float *acc) {
    for (int w = 8; w >= 1; w >>= 1)
        for (int l = 0; l < w; ++l) acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

static inline float hc__dot16(const float *a, const float *b, int64_t n) {
    float acc[HC_LANES] = {0};
    int64_t j = 0;
    for (; j + HC_LANES <= n; j += HC_LANES)
        for (int l = 0; l < HC_LANES; ++l) acc[l] = acc[l] + a[j + l] * b[j + l];
    for (int l = 0; j + l < n; ++l) acc[l] = acc[l] + a[j + l] * b[j + l];
    return hc__fold16(acc);
}

#endif
