/* The chip's vector unit: float32 RMSNorm, RoPE, SiLU-gate product, residual add, and the exp
 * and fp16 conversions shared with attention.  Plain C: the compiler vectorizes the element loops
 * (RMSNorm and SiLU also for the active ISA's vector width, chosen at run time);
 * the reduction order is fixed by hand (16 lanes), so every build gives the same bits.
 * Rules: docs/numerics.md "Vector unit". */
#include <math.h>
#include <stdlib.h>

#include "hcemu.h"
#include "hc_vecmath.h"

float hc_exp_f32(float x) { return hc__exp(x); }
uint16_t hc_f32_to_f16(float x) { return hc__f32_to_f16(x); }
float hc_f16_to_f32(uint16_t h) { return hc__f16_to_f32(h); }

void hc_f32_to_f16_array(const float *x, int64_t n, uint16_t *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = hc__f32_to_f16(x[i]);
}

void hc_exp_f32_array(const float *x, int64_t n, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = hc__exp(x[i]);
}

/* The element loops of RMSNorm and SiLU, compiled once per ISA target so the compiler can use
 * that target's vector width; the arithmetic is elementwise or in the fixed 16-lane order, so all
 * variants give the same bits.  No FMA: -ffp-contract=off holds inside target functions too. */
#define HC_VEC_KERNELS(SUF, ATTR)                                                                  \
    ATTR static void rmsnorm_rows_##SUF(const float *x, const float *w, int64_t m, int64_t d,      \
                                        float eps, float *y) {                                     \
        const float fd = (float)d;                                                                 \
        for (int64_t i = 0; i < m; ++i) {                                                          \
            const float *xi = x + i * d;                                                           \
            float *yi = y + i * d;                                                                 \
            float ss = hc__dot16(xi, xi, d);                                                       \
            float r = 1.0f / sqrtf(ss / fd + eps);                                                 \
            /* out may be x: every element is read before it is written, at the same index */     \
            _Pragma("GCC ivdep") for (int64_t j = 0; j < d; ++j) yi[j] = (xi[j] * r) * w[j];       \
        }                                                                                          \
    }                                                                                              \
    ATTR static void silu_mul_##SUF(const float *g, const float *u, int64_t n, float *y) {         \
        _Pragma("GCC ivdep") for (int64_t i = 0; i < n; ++i) {                                     \
            float gi = g[i];                                                                       \
            float e = hc__exp(-gi);                                                                \
            y[i] = (gi / (1.0f + e)) * u[i];                                                       \
        }                                                                                          \
    }                                                                                              \
    ATTR static void gelu_mul_##SUF(const float *g, const float *u, int64_t n, float *y) {         \
        _Pragma("GCC ivdep") for (int64_t i = 0; i < n; ++i) y[i] = hc__gelu(g[i]) * u[i];         \
    }                                                                                              \
    ATTR static void softcap_##SUF(float *x, int64_t n, float cap, float icap) {                   \
        _Pragma("GCC ivdep") for (int64_t i = 0; i < n; ++i) x[i] = hc__tanh(x[i] * icap) * cap;  \
    }

HC_VEC_KERNELS(scalar, )
#if defined(__x86_64__) || defined(__i386__)
HC_VEC_KERNELS(avx2, __attribute__((target("avx2"))))
HC_VEC_KERNELS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))))
#define HC_VEC_DISPATCH(name, ...)                                                                 \
    do {                                                                                           \
        hc_isa isa_ = hc_isa_active();                                                             \
        if (isa_ == HC_ISA_AVX512VNNI) name##_avx512(__VA_ARGS__);                                 \
        else if (isa_ == HC_ISA_AVX2 || isa_ == HC_ISA_AVXVNNI) name##_avx2(__VA_ARGS__);          \
        else name##_scalar(__VA_ARGS__);                                                           \
    } while (0)
#else
#define HC_VEC_DISPATCH(name, ...) name##_scalar(__VA_ARGS__)
#endif

int hc_rmsnorm_f32(const float *x, const float *w, int64_t m, int64_t d, float eps, float *y) {
    if (m < 0 || d <= 0) return HC_EINVAL;
    HC_VEC_DISPATCH(rmsnorm_rows, x, w, m, d, eps, y);
    return HC_OK;
}

int hc_rope_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                int64_t hd, float *y) {
    return hc_rope_style_f32(x, cos_t, sin_t, t, heads, hd, 0, y);
}

int hc_rope_style_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                      int64_t hd, int neox, float *y) {
    if (t < 0 || heads < 0 || hd <= 0 || hd % 2) return HC_EINVAL;
    const int64_t half = hd / 2;
    /* pair j is (x[a], x[a + off]): a = 2j, off = 1 (consecutive), or a = j, off = hd/2 (NeoX) */
    const int64_t step = neox ? 1 : 2, off = neox ? half : 1;
    for (int64_t i = 0; i < t; ++i) {
        const float *c = cos_t + i * half, *s = sin_t + i * half;
        for (int64_t h = 0; h < heads; ++h) {
            const float *xh = x + (i * heads + h) * hd;
            float *yh = y + (i * heads + h) * hd;
#pragma GCC ivdep
            for (int64_t j = 0; j < half; ++j) {
                float x0 = xh[j * step], x1 = xh[j * step + off];
                yh[j * step] = x0 * c[j] - x1 * s[j];
                yh[j * step + off] = x0 * s[j] + x1 * c[j];
            }
        }
    }
    return HC_OK;
}

int hc_silu_mul_f32(const float *g, const float *u, int64_t n, float *y) {
    if (n < 0) return HC_EINVAL;
    HC_VEC_DISPATCH(silu_mul, g, u, n, y);
    return HC_OK;
}

int hc_add_f32(float *x, const float *y, int64_t n) {
    if (n < 0) return HC_EINVAL;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] + y[i];
    return HC_OK;
}

int hc_gelu_mul_f32(const float *g, const float *u, int64_t n, float *y) {
    if (n < 0) return HC_EINVAL;
    HC_VEC_DISPATCH(gelu_mul, g, u, n, y);
    return HC_OK;
}

int hc_add_rows_f32(float *x, const float *b, int64_t m, int64_t n) {
    if (m < 0 || n < 0) return HC_EINVAL;
    for (int64_t i = 0; i < m; ++i) {
        float *xi = x + i * n;
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) xi[j] = xi[j] + b[j];
    }
    return HC_OK;
}

int hc_scale_f32(float *x, float s, int64_t n) {
    if (n < 0) return HC_EINVAL;
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) x[i] = x[i] * s;
    return HC_OK;
}

int hc_softcap_f32(float *x, float cap, int64_t n) {
    if (n < 0 || !(cap > 0.0f)) return HC_EINVAL;
    const float icap = 1.0f / cap;
    HC_VEC_DISPATCH(softcap, x, n, cap, icap);
    return HC_OK;
}

/* ---- mixture of experts: routing and the weighted sum (docs/numerics.md "Mixture of experts") ---- */

int hc_moe_route_f32(const float *logits, int64_t t, int64_t n_experts, int k, int norm, float scale,
                     int32_t *sel, float *w) {
    if (t < 0 || n_experts < 1 || k < 1 || k > n_experts || !(scale > 0.0f)) return HC_EINVAL;
    float *e = malloc((size_t)n_experts * sizeof(float));
    if (!e) return HC_ENOMEM;
    int rc = HC_OK;
    for (int64_t i = 0; i < t && rc == HC_OK; ++i) {
        const float *l = logits + i * n_experts;
        int32_t *si = sel + i * k;
        float *wi = w + i * k;
        if (hc__absmax_bits(l, n_experts) >= 0x7f800000u) {
            rc = HC_ENONFINITE;
            break;
        }
        float m = l[0];
        for (int64_t j = 1; j < n_experts; ++j) m = l[j] > m ? l[j] : m;
        for (int64_t j = 0; j < n_experts; ++j) e[j] = hc__exp(l[j] - m);
        float acc[HC_LANES] = {0};
        int64_t j = 0;
        for (; j + HC_LANES <= n_experts; j += HC_LANES)
            for (int q = 0; q < HC_LANES; ++q) acc[q] = acc[q] + e[j + q];
        for (int q = 0; j + q < n_experts; ++q) acc[q] = acc[q] + e[j + q];
        const float sum = hc__fold16(acc);
        /* top-k on the logits: the largest not yet taken, the lower index on ties */
        for (int s = 0; s < k; ++s) {
            int64_t best = -1;
            for (int64_t c = 0; c < n_experts; ++c) {
                int taken = 0;
                for (int r = 0; r < s; ++r) taken |= si[r] == (int32_t)c;
                if (!taken && (best < 0 || l[c] > l[best])) best = c;
            }
            si[s] = (int32_t)best;
            wi[s] = e[best] / sum;
        }
        if (norm) {
            float ws = wi[0];
            for (int s = 1; s < k; ++s) ws = ws + wi[s];
            for (int s = 0; s < k; ++s) wi[s] = wi[s] / ws;
        }
        if (scale != 1.0f)
            for (int s = 0; s < k; ++s) wi[s] = wi[s] * scale;
    }
    free(e);
    return rc;
}

int hc_axpy_rows_f32(float *y, const float *x, const float *w, int64_t m, int64_t n) {
    if (m < 0 || n < 0) return HC_EINVAL;
    for (int64_t i = 0; i < m; ++i) {
        float *yi = y + i * n;
        const float *xi = x + i * n;
        const float wi = w[i];
#pragma GCC ivdep
        for (int64_t j = 0; j < n; ++j) yi[j] = yi[j] + xi[j] * wi;
    }
    return HC_OK;
}

int hc_sigmoid_f32(float *x, int64_t n) {
    if (n < 0) return HC_EINVAL;
    for (int64_t i = 0; i < n; ++i) x[i] = 1.0f / (1.0f + hc__exp(-x[i]));
    return HC_OK;
}
