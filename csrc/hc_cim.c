/* Compute-in-memory products over ROM tiles: the activation quantizer's entry (its rule and ISA
 * forms in hc_quant.h), scalar / AVX2 / AVX-VNNI / AVX-512 VNNI paths for int8 (per block, per
 * channel) and int4 (symmetric, asymmetric) weights.
 *
 * Numerics: docs/numerics.md.  Every path computes the same exact int32 block sums D and runs the
 * same float32 epilogue, in the same order, with separate multiplies and adds (the build uses
 * -ffp-contract=off; intrinsics below are never fused), so outputs are bit-identical across paths.
 *
 * Structure: cim_run() validates, builds the per-call side tables (block activation sums X and
 * per-block activation scales A), then splits row tiles over threads; each thread calls the ISA's
 * tile driver for its contiguous tile range, token chunk by token chunk.
 */
#include "hcemu.h"
#include "hc_quant.h"
#include "hc_split.h"
#include "hc_vecmath.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HC_X86 1
#define X86_FN(f) f
#else /* other architectures build the scalar path only; hc_isa_supported() reports just that */
#define HC_X86 0
#define X86_FN(f) NULL
#endif

#define TR 16                 /* rows per tile */
#define PF_CODES 8192         /* prefetch distance (bytes) in a tile's code stream */
#define PF_META 256           /* ... and in its scale stream */
#define MS_STREAMS 3          /* int8 row tiles read at once at M = 1 (tiles_ms_vnni) */
#define MS_MAX 8
#define PF_MS 1024            /* prefetch distance (bytes) in each of their code streams ... */
#define PF_MS_META 1024       /* ... and scale streams */

int hc_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---- validation ------------------------------------------------------------------------------ */
static inline int64_t tile_k_of(const hc_weights *w) { return w->group ? w->group : 32; }

static int block_check(const hc_weights *w) {
    if (w->bits != 4 && w->bits != 8) return HC_EINVAL;
    if (w->group != 32 || w->asymmetric || w->n < 1 || w->k < 1) return HC_EINVAL;
    if (w->super_k != 32 && w->super_k != 64 && w->super_k != 256) return HC_EINVAL;
    if ((w->sub_k != 16 && w->sub_k != 32) || w->super_k % w->sub_k || w->k % w->super_k) return HC_EINVAL;
    if (w->bias < 0 || w->bias > 63) return HC_EINVAL;
    if (w->n_row_tiles != (w->n + TR - 1) / TR || w->n_blocks != w->k / 32) return HC_EINVAL;
    if (w->scale_kind < 0 || w->scale_kind > 2 || w->offset_kind < 0 || w->offset_kind > 2) return HC_EINVAL;
    if ((w->offset_kind == 1) != (w->has_submins != 0) || (w->has_subscales != 0 && w->has_subscales != 1))
        return HC_EINVAL;
    if (w->scale_kind == 2 && w->has_subscales) return HC_EINVAL; /* float sub-scales only */
    if (w->scales || w->offsets) return HC_EINVAL;                 /* everything is in the records */
    if (w->lut && w->bits != 4) return HC_EINVAL;
    if (!(w->tensor_scale == w->tensor_scale) || w->tensor_scale <= 0.0f) return HC_EINVAL;
    return HC_OK;
}

int hc_weights_check(const hc_weights *w) {
    if (!w || !w->codes) return HC_EINVAL;
    if (w->block) return block_check(w);
    if (!w->scales) return HC_EINVAL;
    if (w->bits != 8 && w->bits != 4) return HC_EINVAL;
    if (w->group != 0 && w->group != 32 && w->group != 64 && w->group != 128) return HC_EINVAL;
    if (w->group == 0 && w->bits != 8) return HC_EINVAL;
    if (w->asymmetric && w->bits != 4) return HC_EINVAL;
    if ((w->offsets != NULL) != (w->asymmetric != 0)) return HC_EINVAL;
    if (w->n < 1 || w->k < 1) return HC_EINVAL;
    int64_t tk = tile_k_of(w);
    if (w->n_row_tiles != (w->n + TR - 1) / TR) return HC_EINVAL;
    if (w->group ? (w->k % tk || w->n_blocks != w->k / tk) : (w->n_blocks != (w->k + tk - 1) / tk))
        return HC_EINVAL;
    return HC_OK;
}

/* ---- activation quantizer (the rule and its per-ISA forms: hc_quant.h) ------------------------ */
#define QUANT_ACT(SUF, ATTR, ROW)                                                                     \
    ATTR static int quant_act_##SUF(const float *x, int64_t m, int64_t k, int64_t group, int8_t *q,   \
                                    float *scales) {                                                  \
        const int64_t ng = k / group;                                                                 \
        for (int64_t i = 0; i < m; i++)                                                               \
            for (int64_t g = 0; g < ng; g++) {                                                        \
                const int64_t at = i * k + g * group;                                                 \
                if (ROW(x + at, group, group, q + at, scales + i * ng + g, NULL)) return HC_ENONFINITE; \
            }                                                                                         \
        return HC_OK;                                                                                 \
    }

QUANT_ACT(serial, , hc__quant_row)
#if HC_X86
QUANT_ACT(avx2, __attribute__((target("avx2"))), hc__quant_row_avx2) /* also the AVX-VNNI path's */
QUANT_ACT(avx512, __attribute__((target("avx512f,avx512bw,avx512vl"))), hc__quant_row_avx512)
#endif

int hc_quantize_act(const float *x, int64_t m, int64_t k, int64_t group, int8_t *q, float *scales) {
    if (!x || !q || !scales || m < 0 || k < 1 || group < 1 || k % group) return HC_EINVAL;
#if HC_X86
    switch (hc_isa_active()) {
    case HC_ISA_AVX512VNNI: return quant_act_avx512(x, m, k, group, q, scales);
    case HC_ISA_AVX2: case HC_ISA_AVXVNNI: return quant_act_avx2(x, m, k, group, q, scales);
    default: break;
    }
#endif
    return quant_act_serial(x, m, k, group, q, scales);
}

/* ---- per-call context ------------------------------------------------------------------------ */
typedef struct {
    const hc_weights *w;
    const int8_t *q;   /* [m][ldq], zero padded to n_blocks * tile_k */
    int64_t ldq;
    const int32_t *X;  /* [m][n_blocks] block activation sums */
    const int32_t *XC; /* [m][n_blocks] corr * X: the sign-flip correction (128 int8, 8 int4, 0 asym) */
    const float *XF;   /* [m][n_blocks] (float)X */
    const float *A;    /* [m][n_blocks] activation scale of each block */
    float *y;          /* [m][n] */
    int32_t *dots;     /* optional [m][n_row_tiles*16][n_blocks] */
    int x_has_min;     /* some activation is -128 (the AVX2 int8 kernel's sign trick is exact without) */
} cim_ctx;

typedef void (*tiles_fn)(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc);

static inline const uint16_t *meta_ptr(const hc_weights *w, const uint16_t *base, int64_t t, int64_t b) {
    return w->group ? base + (t * w->n_blocks + b) * TR : base + t * TR;
}

static inline void store_dots(const cim_ctx *c, int64_t mi, int64_t t, int64_t b, const int32_t *d16) {
    const hc_weights *w = c->w;
    int32_t *p = c->dots + (mi * w->n_row_tiles * TR + t * TR) * w->n_blocks + b;
    for (int r = 0; r < TR; r++) p[r * w->n_blocks] = d16[r];
}

static inline void store_rows(const cim_ctx *c, int64_t t, int64_t m0, int64_t mc, const float *acc) {
    const hc_weights *w = c->w;
    int64_t rows = w->n - t * TR;
    if (rows > TR) rows = TR;
    for (int64_t i = 0; i < mc; i++)
        memcpy(c->y + (m0 + i) * w->n + t * TR, acc + i * TR, (size_t)rows * sizeof(float));
}

/* ---- scalar path ----------------------------------------------------------------------------- */
/* Portable C (the build adds no ISA flags), written so that compilers vectorize the 16 rows of a
 * line: the path on CPUs without AVX2 and on other architectures (aarch64: NEON). */
/* Float epilogue of one block for one token, 16 rows (docs/numerics.md order). */
static inline void epilogue_serial(float *acc, const int32_t *D, const float *sf, const float *of, int32_t X,
                                   float a) {
    for (int r = 0; r < TR; r++) {
        float t = (float)D[r] * sf[r];
        if (of) t = t + (float)X * of[r];
        t = t * a;
        acc[r] = acc[r] + t;
    }
}

/* Exact int32 dot products of the 16 rows of one block with one token's activations. */
static inline void dots_i8_serial(const uint8_t *tp, const int8_t *x, int64_t tk, int32_t *D) {
    for (int r = 0; r < TR; r++) D[r] = 0;
    for (int64_t kq = 0; kq < tk / 4; kq++) {
        const int8_t *ln = (const int8_t *)tp + 64 * kq;
        const int32_t x0 = x[4 * kq], x1 = x[4 * kq + 1], x2 = x[4 * kq + 2], x3 = x[4 * kq + 3];
        for (int r = 0; r < TR; r++)
            D[r] += ln[4 * r] * x0 + ln[4 * r + 1] * x1 + ln[4 * r + 2] * x2 + ln[4 * r + 3] * x3;
    }
}

/* int4: nibble values as stored ([0, 15]; symmetric codes are w + 8 after the caller's flip, and
 * the caller subtracts 8 X). */
static inline void dots_i4_serial(const uint8_t *tp, const int8_t *x, int64_t tk, int flip, int32_t *D) {
    for (int r = 0; r < TR; r++) D[r] = 0;
    for (int64_t kq = 0; kq < tk / 8; kq++) {
        const uint8_t *ln = tp + 64 * kq;
        const int8_t *xx = x + 8 * kq;
        for (int r = 0; r < TR; r++) {
            int32_t s = 0;
            for (int j = 0; j < 4; j++) {
                const int32_t byte = ln[4 * r + j] ^ flip;
                s += (byte & 15) * xx[j] + (byte >> 4) * xx[4 + j];
            }
            D[r] += s;
        }
    }
}

static void tiles_serial(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tk = tile_k_of(w), tb = TR * tk * w->bits / 8;
    const int flip = w->bits == 4 && !w->asymmetric ? 0x88 : 0;
    float acc[HC_CIM_M_CHUNK * TR], sf[TR], of[TR];
    int32_t D[TR];
    for (int64_t t = t0; t < t1; t++) {
        memset(acc, 0, sizeof(float) * TR * mc);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *tp = w->codes + (t * nb + b) * tb;
            const uint16_t *sp = meta_ptr(w, w->scales, t, b);
            const uint16_t *op = w->offsets ? meta_ptr(w, w->offsets, t, b) : NULL;
            for (int r = 0; r < TR; r++) {
                sf[r] = hc__f16_to_f32(sp[r]);
                if (op) of[r] = hc__f16_to_f32(op[r]);
            }
            for (int64_t i = 0; i < mc; i++) {
                const int64_t mi = m0 + i;
                const int8_t *x = c->q + mi * c->ldq + b * tk;
                if (w->bits == 8) {
                    dots_i8_serial(tp, x, tk, D);
                } else {
                    dots_i4_serial(tp, x, tk, flip, D);
                    if (flip)
                        for (int r = 0; r < TR; r++) D[r] -= c->XC[mi * nb + b];
                }
                if (c->dots) store_dots(c, mi, t, b, D);
                epilogue_serial(acc + i * TR, D, sf, op ? of : NULL, c->X[mi * nb + b], c->A[mi * nb + b]);
            }
        }
        store_rows(c, t, m0, mc, acc);
    }
}

/* ---- block formats (k-quants, Q5_0/Q5_1, MXFP4, NVFP4) ------------------------------------------
 * docs/numerics.md "Block formats".  Per row tile, block of 32 inputs and token, for each sub-block j
 * (1 or 2 per block, ascending): P_j = sum u * x (u in [0, 63]: exact, |P_j| <= 63 * 128 * 32),
 * D_j = P_j - bias * X_j; then, integer sub-scales: S = sum_j sc_j D_j (int32, exact: |S| < 2^24),
 * M = sum_j mn_j X_j (mn = 1 for offset_kind 2), and the float epilogue
 *   t = (float)S * d;  t = t + (float)M * o  (offset kinds; o = -dmin or m);  t = t * a;  acc += t
 * or, float sub-scales (NVFP4): t = (float)D_0 * s_0;  t = t + (float)D_1 * s_1;  t = t * a;  acc += t.
 * After the last block y = acc, times tensor_scale when it is not 1.  The vectorized tiles below do
 * the same operations in the same order (-ffp-contract=off keeps every float operation separate). */
static inline float e8m0_to_float(uint8_t e) {
    union { uint32_t u; float f; } o;
    o.u = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23; /* 2^(e - 128), GGUF's half scale */
    return o.f;
}

static inline float ue4m3_to_float(uint8_t x) {
    union { uint32_t u; float f; } o;
    const uint32_t e = (x >> 3) & 15, m = x & 7;
    if ((x & 0x7f) == 0x7f) return 0.0f;
    if (e == 0) { /* m * 2^-10: exact through an int -> float conversion and a power-of-two multiply */
        o.u = (127u - 10u) << 23;
        return (float)m * o.f;
    }
    o.u = (e + 127u - 11u) << 23; /* (8 + m) * 2^(e - 11) */
    return (float)(8 + m) * o.f;
}

/* The byte offsets inside one record (one row tile x one super-block; hcemu.layout.block_record):
 * scales at 0, then offsets (off), sub-scales (sc), sub-mins (mn), the code tiles (codes), and the
 * record's size (rb).  Every part is [units][16 rows]. */
typedef struct {
    int64_t off, sc, mn, codes, rb;
} blk_rec;

static inline __attribute__((always_inline)) blk_rec blk_rec_of(const int i8, const int nsub, const int sk, const int offk,
                                                                const int has_sc, const int has_mn, const int bps) {
    const int64_t units = (int64_t)bps * nsub; /* sub-blocks per super-block */
    blk_rec r;
    r.off = TR * (sk == 0 ? 2 : sk == 1 ? bps : units);
    r.sc = r.off + (offk == 1 ? 2 * TR : offk == 2 ? 2 * TR * bps : 0);
    r.mn = r.sc + (has_sc ? TR * units : 0);
    r.codes = r.mn + (has_mn ? TR * units : 0);
    r.rb = r.codes + bps * (TR * 32 * (i8 ? 8 : 4) / 8);
    return r;
}

static void tiles_blk_serial(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32 * w->bits / 8;
    const int nsub = 32 / w->sub_k, sw = w->sub_k, bps = w->super_k / 32;
    const int64_t nsup = w->k / w->super_k;
    const int fsc = w->scale_kind == 2, bias = w->bias;
    const blk_rec L = blk_rec_of(w->bits == 8, nsub, w->scale_kind, w->offset_kind, w->has_subscales, w->has_submins, bps);
    float acc[HC_CIM_M_CHUNK * TR];
    uint8_t U[TR * 32];
    float d[TR], o[TR], s2[2][TR];
    int32_t sc[2][TR], mn[2][TR];
    for (int64_t t = t0; t < t1; t++) {
        memset(acc, 0, sizeof(float) * TR * mc);
        for (int64_t b = 0; b < nb; b++) {
            const int bb = (int)(b % bps);
            const uint8_t *R = w->codes + (t * nsup + b / bps) * L.rb; /* this super-block's record */
            const uint8_t *tp = R + L.codes + bb * tb;
            if (w->bits == 8) {
                for (int kq = 0; kq < 8; kq++)
                    for (int r = 0; r < TR; r++)
                        for (int j = 0; j < 4; j++) U[r * 32 + 4 * kq + j] = tp[64 * kq + 4 * r + j];
            } else {
                for (int kq = 0; kq < 4; kq++)
                    for (int r = 0; r < TR; r++)
                        for (int j = 0; j < 4; j++) {
                            const uint8_t byte = tp[64 * kq + 4 * r + j];
                            U[r * 32 + 8 * kq + j] = byte & 15;
                            U[r * 32 + 8 * kq + 4 + j] = byte >> 4;
                        }
                if (w->lut)
                    for (int i = 0; i < TR * 32; i++) U[i] = w->lut[U[i]];
            }
            for (int r = 0; r < TR; r++) {
                uint16_t h;
                if (w->scale_kind == 0) {
                    memcpy(&h, R + 2 * r, 2);
                    d[r] = hc__f16_to_f32(h);
                } else if (w->scale_kind == 1) {
                    d[r] = e8m0_to_float(R[bb * TR + r]);
                }
                if (w->offset_kind) {
                    memcpy(&h, R + L.off + 2 * ((w->offset_kind == 2 ? bb * TR : 0) + r), 2);
                    o[r] = w->offset_kind == 1 ? -hc__f16_to_f32(h) : hc__f16_to_f32(h);
                }
                for (int j = 0; j < nsub; j++) {
                    const int64_t su = (bb * nsub + j) * TR + r; /* the sub-block's unit in the record */
                    if (fsc) s2[j][r] = ue4m3_to_float(R[su]);
                    sc[j][r] = w->has_subscales ? (int8_t)R[L.sc + su] : 1;
                    mn[j][r] = w->has_submins ? R[L.mn + su] : 1;
                }
            }
            for (int64_t i = 0; i < mc; i++) {
                const int64_t mi = m0 + i;
                const int8_t *x = c->q + mi * c->ldq + b * 32;
                int32_t X[2] = {0, 0}, S[TR], M[TR];
                float tf[TR] = {0};
                for (int j = 0; j < nsub; j++)
                    for (int e = 0; e < sw; e++) X[j] += x[j * sw + e];
                for (int r = 0; r < TR; r++) { S[r] = 0; M[r] = 0; }
                for (int j = 0; j < nsub; j++) {
                    int32_t D[TR];
                    for (int r = 0; r < TR; r++) {
                        int32_t p = 0;
                        for (int e = 0; e < sw; e++) p += (int32_t)U[r * 32 + j * sw + e] * x[j * sw + e];
                        D[r] = p - bias * X[j];
                    }
                    if (fsc) {
                        for (int r = 0; r < TR; r++) {
                            const float v = (float)D[r] * s2[j][r];
                            tf[r] = j ? tf[r] + v : v;
                            S[r] += D[r];
                        }
                    } else {
                        for (int r = 0; r < TR; r++) {
                            S[r] += sc[j][r] * D[r];
                            M[r] += mn[j][r] * X[j];
                        }
                    }
                }
                if (c->dots) store_dots(c, mi, t, b, S);
                const float a = c->A[mi * nb + b];
                float *ac = acc + i * TR;
                if (!fsc) {
                    for (int r = 0; r < TR; r++) {
                        float v = (float)S[r] * d[r];
                        if (w->offset_kind) v = v + (float)M[r] * o[r];
                        tf[r] = v;
                    }
                }
                for (int r = 0; r < TR; r++) ac[r] = ac[r] + tf[r] * a;
            }
        }
        if (w->tensor_scale != 1.0f)
            for (int64_t i = 0; i < TR * mc; i++) acc[i] = acc[i] * w->tensor_scale;
        store_rows(c, t, m0, mc, acc);
    }
}


#if HC_X86
/* ---- AVX2 path ------------------------------------------------------------------------------- */
/* F16C converts the fp16 scales (every AVX2 CPU has it; hc_isa_supported() checks). */
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define AVX2_MC 2 /* tokens per pass over a row tile's blocks (int sums and float accumulators in registers) */

enum { F_I8 = 0, F_I8CH = 1, F_I4 = 2, F_I4A = 3 };

typedef int32_t __attribute__((may_alias, aligned(1))) i32u; /* unaligned, aliasing 4-byte load */

static inline AVX2_TARGET __m256 half8_avx2(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline AVX2_TARGET __m256i bcast4_avx2(const int8_t *p) { return _mm256_set1_epi32(*(const i32u *)p); }

/* acc += vpdpbusd(u, s) in its VEX form (AVX-VNNI), as inline asm so that the AVX2 tile below can
 * be instantiated with it without an avxvnni target attribute; only the AVXVNNI path, which runs
 * where hc_isa_supported() found AVX-VNNI, executes it. */
static inline __attribute__((always_inline)) AVX2_TARGET __m256i dpbusd_vex(__m256i acc, __m256i u, __m256i s) {
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
    return acc;
}

/* One row tile for R tokens (R <= AVX2_MC).  A 32-byte half of a code line holds 8 rows x 4 inputs
 * (int8) or 8 rows x 8 inputs (int4), so vpmaddubsw + vpmaddwd(1) (or one vpdpbusd) leave one int32
 * per row, in row order, with no horizontal adds.
 *   int8: |w| (u8, <= 128) x sign(x, w) (s8) = w * x, exact when no activation is -128: each pair
 *         sum is then <= 2 * 128 * 127 < 2^15 (vpmaddubsw saturates).  Calls whose activations hold
 *         a -128 take tiles_i8x_avx2 below.
 *   int4: nibbles are in [0, 15] after the sign flip (w + 8), so a vpmaddubsw pair is <= 3840 in
 *         magnitude and 4 lines (8 pairs per int16 lane) sum to <= 30720 before widening.
 *   V (the AVXVNNI path): vpdpbusd sums u8 x s8 products in int32, exact for every input, on the
 *         VNNI path's operands (int8 flipped to w + 128, minus 128 X; int4 nibbles as above), with
 *         a second sum chain per token (odd lines; int4: the high nibbles) against its latency.
 * The float epilogue is the scalar path's, in its order (docs/numerics.md). */
static inline __attribute__((always_inline)) AVX2_TARGET void
tile_avx2(const cim_ctx *c, int64_t t, int64_t m0, const int R, const int F, const int V) {
    const hc_weights *w = c->w;
    const int i8 = F == F_I8 || F == F_I8CH, asym = F == F_I4A, pc = F == F_I8CH;
    const int64_t nb = w->n_blocks, tk = pc ? 32 : w->group, tb = i8 ? TR * tk : TR * tk / 2;
    const int lines = (int)(i8 ? tk / 4 : tk / 8); /* a multiple of 4 */
    const int64_t ldq = c->ldq;
    const __m256i ones = _mm256_set1_epi16(1), lo_mask = _mm256_set1_epi8(0x0f);
    const __m256i flip = _mm256_set1_epi8(F == F_I4 ? (char)0x88 : 0);
    const uint8_t *tile = w->codes + t * nb * tb;
    const int8_t *xq = c->q + m0 * ldq;
    const int32_t *XC = c->XC + m0 * nb;
    const float *XF = c->XF + m0 * nb, *A = c->A + m0 * nb;
    __m256 acc[AVX2_MC][2], d0 = _mm256_setzero_ps(), d1 = d0, o0 = d0, o1 = d0;
    for (int u = 0; u < R; u++) acc[u][0] = acc[u][1] = _mm256_setzero_ps();
    if (pc) {
        d0 = half8_avx2(w->scales + t * TR);
        d1 = half8_avx2(w->scales + t * TR + 8);
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *tp = tile + b * tb;
        for (int64_t pf = 0; pf < tb; pf += 64) _mm_prefetch((const char *)(tp + PF_CODES + pf), _MM_HINT_T0);
        if (!pc) {
            const uint16_t *sp = w->scales + (t * nb + b) * TR;
            _mm_prefetch((const char *)(sp + PF_META), _MM_HINT_T0);
            d0 = half8_avx2(sp);
            d1 = half8_avx2(sp + 8);
            if (asym) {
                const uint16_t *op = w->offsets + (t * nb + b) * TR;
                _mm_prefetch((const char *)(op + PF_META), _MM_HINT_T0);
                o0 = half8_avx2(op);
                o1 = half8_avx2(op + 8);
            }
        }
        __m256i D[AVX2_MC][2];
        for (int u = 0; u < R; u++) D[u][0] = D[u][1] = _mm256_setzero_si256();
        const int8_t *x = xq + b * tk;
        if (V) {
            const __m256i f80 = _mm256_set1_epi8((char)0x80);
            __m256i E[AVX2_MC][2];
            for (int u = 0; u < R; u++) E[u][0] = E[u][1] = _mm256_setzero_si256();
            for (int l = 0; l < lines; l++) {
                __m256i a[2], b2[2];
                for (int h = 0; h < 2; h++) {
                    __m256i raw = _mm256_loadu_si256((const __m256i *)(tp + 64 * l + 32 * h));
                    if (i8) {
                        a[h] = _mm256_xor_si256(raw, f80);
                    } else {
                        if (!asym) raw = _mm256_xor_si256(raw, flip);
                        a[h] = _mm256_and_si256(raw, lo_mask);
                        b2[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo_mask);
                    }
                }
                for (int u = 0; u < R; u++) {
                    if (i8) {
                        const __m256i xb = bcast4_avx2(x + u * ldq + 4 * l);
                        for (int h = 0; h < 2; h++) {
                            if (l & 1) E[u][h] = dpbusd_vex(E[u][h], a[h], xb);
                            else D[u][h] = dpbusd_vex(D[u][h], a[h], xb);
                        }
                    } else {
                        const __m256i xl = bcast4_avx2(x + u * ldq + 8 * l), xh = bcast4_avx2(x + u * ldq + 8 * l + 4);
                        for (int h = 0; h < 2; h++) {
                            D[u][h] = dpbusd_vex(D[u][h], a[h], xl);
                            E[u][h] = dpbusd_vex(E[u][h], b2[h], xh);
                        }
                    }
                }
            }
            for (int u = 0; u < R; u++)
                for (int h = 0; h < 2; h++) D[u][h] = _mm256_add_epi32(D[u][h], E[u][h]);
        } else if (i8) {
            for (int l = 0; l < lines; l++) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(tp + 64 * l));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(tp + 64 * l + 32));
                const __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);
                for (int u = 0; u < R; u++) {
                    const __m256i xb = bcast4_avx2(x + u * ldq + 4 * l);
                    D[u][0] = _mm256_add_epi32(D[u][0],
                                               _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones));
                    D[u][1] = _mm256_add_epi32(D[u][1],
                                               _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones));
                }
            }
        } else {
            for (int l0 = 0; l0 < lines; l0 += 4) {
                __m256i S[AVX2_MC][2];
                for (int u = 0; u < R; u++) S[u][0] = S[u][1] = _mm256_setzero_si256();
#pragma GCC unroll 1 /* unrolled, GCC reassociates the int16 sums of the 4 lines and spills them */
                for (int l = l0; l < l0 + 4; l++) {
                    __m256i lo[2], hi[2];
                    for (int h = 0; h < 2; h++) {
                        __m256i raw = _mm256_loadu_si256((const __m256i *)(tp + 64 * l + 32 * h));
                        if (!asym) raw = _mm256_xor_si256(raw, flip);
                        lo[h] = _mm256_and_si256(raw, lo_mask);
                        hi[h] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo_mask);
                    }
                    for (int u = 0; u < R; u++) {
                        const __m256i xl = bcast4_avx2(x + u * ldq + 8 * l), xh = bcast4_avx2(x + u * ldq + 8 * l + 4);
                        for (int h = 0; h < 2; h++)
                            S[u][h] = _mm256_add_epi16(S[u][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], xl),
                                                                                 _mm256_maddubs_epi16(hi[h], xh)));
                    }
                }
                for (int u = 0; u < R; u++)
                    for (int h = 0; h < 2; h++) D[u][h] = _mm256_add_epi32(D[u][h], _mm256_madd_epi16(S[u][h], ones));
            }
        }
        for (int u = 0; u < R; u++) {
            __m256i Dv0 = D[u][0], Dv1 = D[u][1];
            if (F == F_I4 || (V && i8)) { /* undo the flip: + 8 per int4 nibble, + 128 per int8 code */
                const __m256i corr = _mm256_set1_epi32(XC[u * nb + b]);
                Dv0 = _mm256_sub_epi32(Dv0, corr);
                Dv1 = _mm256_sub_epi32(Dv1, corr);
            }
            if (c->dots) {
                int32_t tmp[TR];
                _mm256_storeu_si256((__m256i *)tmp, Dv0);
                _mm256_storeu_si256((__m256i *)(tmp + 8), Dv1);
                store_dots(c, m0 + u, t, b, tmp);
            }
            __m256 t0 = _mm256_mul_ps(_mm256_cvtepi32_ps(Dv0), d0), t1 = _mm256_mul_ps(_mm256_cvtepi32_ps(Dv1), d1);
            if (asym) {
                const __m256 xf = _mm256_set1_ps(XF[u * nb + b]);
                t0 = _mm256_add_ps(t0, _mm256_mul_ps(xf, o0));
                t1 = _mm256_add_ps(t1, _mm256_mul_ps(xf, o1));
            }
            const __m256 av = _mm256_set1_ps(A[u * nb + b]);
            acc[u][0] = _mm256_add_ps(acc[u][0], _mm256_mul_ps(t0, av));
            acc[u][1] = _mm256_add_ps(acc[u][1], _mm256_mul_ps(t1, av));
        }
    }
    float out[AVX2_MC * TR];
    for (int u = 0; u < R; u++) {
        _mm256_storeu_ps(out + u * TR, acc[u][0]);
        _mm256_storeu_ps(out + u * TR + 8, acc[u][1]);
    }
    store_rows(c, t, m0, R, out);
}

/* int8 calls whose activations hold a -128: sign-extend the weights to int16 and use vpmaddwd (exact
 * for every int8 pair).  A 16-byte quarter line (4 rows x 4 inputs) leaves 2 int32 per row, which
 * one vphaddd per 8 rows folds. */
static AVX2_TARGET void tiles_i8x_avx2(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tk = tile_k_of(w), tb = TR * tk;
    const int lines = (int)(tk / 4);
    const __m256i perm = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t i = m0; i < m0 + mc; i++) {
            __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *tp = w->codes + (t * nb + b) * tb;
                for (int64_t pf = 0; pf < tb; pf += 64) _mm_prefetch((const char *)(tp + PF_CODES + pf), _MM_HINT_T0);
                const uint16_t *sp = meta_ptr(w, w->scales, t, b);
                const int8_t *x = c->q + i * c->ldq + b * tk;
                __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                                _mm256_setzero_si256()};
                for (int l = 0; l < lines; l++) {
                    const __m256i av = _mm256_cvtepi8_epi16(_mm_set1_epi32(*(const i32u *)(x + 4 * l)));
                    for (int j = 0; j < 4; j++)
                        s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(
                            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(tp + 64 * l + 16 * j))), av));
                }
                const __m256i D0 = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(s[0], s[1]), perm);
                const __m256i D1 = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(s[2], s[3]), perm);
                if (c->dots) {
                    int32_t tmp[TR];
                    _mm256_storeu_si256((__m256i *)tmp, D0);
                    _mm256_storeu_si256((__m256i *)(tmp + 8), D1);
                    store_dots(c, i, t, b, tmp);
                }
                const __m256 av = _mm256_set1_ps(c->A[i * nb + b]);
                acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(D0), half8_avx2(sp)), av));
                acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(D1), half8_avx2(sp + 8)), av));
            }
            float out[TR];
            _mm256_storeu_ps(out, acc0);
            _mm256_storeu_ps(out + 8, acc1);
            store_rows(c, t, i, 1, out);
        }
}

#define AVX2_DRIVER(NAME, F, V)                                                                         \
    static AVX2_TARGET void NAME(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {    \
        if (!V && (F == F_I8 || F == F_I8CH) && c->x_has_min) {                                         \
            tiles_i8x_avx2(c, t0, t1, m0, mc);                                                          \
            return;                                                                                     \
        }                                                                                               \
        for (int64_t t = t0; t < t1; t++)                                                               \
            for (int64_t i = m0; i < m0 + mc; i += AVX2_MC) {                                           \
                if (m0 + mc - i >= 2) tile_avx2(c, t, i, 2, F, V);                                      \
                else tile_avx2(c, t, i, 1, F, V);                                                       \
            }                                                                                           \
    }

AVX2_DRIVER(tiles_i8_avx2, F_I8, 0)
AVX2_DRIVER(tiles_i8ch_avx2, F_I8CH, 0)
AVX2_DRIVER(tiles_i4_avx2, F_I4, 0)
AVX2_DRIVER(tiles_i4a_avx2, F_I4A, 0)
AVX2_DRIVER(tiles_i8_avxvnni, F_I8, 1)
AVX2_DRIVER(tiles_i8ch_avxvnni, F_I8CH, 1)
AVX2_DRIVER(tiles_i4_avxvnni, F_I4, 1)
AVX2_DRIVER(tiles_i4a_avxvnni, F_I4A, 1)

/* ---- AVX-512 VNNI path ----------------------------------------------------------------------- */
/* Loop order: row tile -> chunk of up to 8 tokens -> block.  The chunk's float accumulators and
 * int32 block sums stay in registers; each 64-byte weight line is loaded once per chunk and feeds
 * one vpdpbusd per token (16 rows x 4 inputs).  The function is instantiated for every (format,
 * token count) pair so that all register arrays are fully unrolled. */
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define VNNI_MC 8

/* acc += dpbusd(w, broadcast of the 4 activation bytes at p), with the broadcast folded into the
 * instruction's memory operand ({1to16}); GCC does not fold _mm512_set1_epi32 into vpdpbusd. */
static inline __attribute__((always_inline)) VNNI_TARGET __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const i32u *)p));
    return acc;
}

static inline __attribute__((always_inline)) VNNI_TARGET void
tile_vnni(const cim_ctx *c, int64_t t, int64_t m0, const int R, const int F, const int DOTS, const int G32) {
    const hc_weights *w = c->w;
    const int i8 = F == F_I8 || F == F_I8CH, asym = F == F_I4A, pc = F == F_I8CH;
    /* G32: the tile width is known to be 32 at compile time (fully unrolled block loop) */
    const int64_t nb = w->n_blocks, tk = (pc || G32) ? 32 : w->group, tb = i8 ? TR * tk : TR * tk / 2;
    const int lines = (int)(i8 ? tk / 4 : tk / 8); /* a multiple of 4 */
    const int64_t ldq = c->ldq;
    const __m512i flip = _mm512_set1_epi8(i8 ? (char)0x80 : (asym ? 0 : (char)0x88));
    const __m512i lo_mask = _mm512_set1_epi8(0x0f);
    const uint8_t *tile = w->codes + t * nb * tb;
    const int8_t *xq = c->q + m0 * ldq;
    const int32_t *XC = c->XC + m0 * nb;
    const float *XF = c->XF + m0 * nb, *A = c->A + m0 * nb;
    __m512 acc[VNNI_MC], d, off = _mm512_setzero_ps();
    for (int u = 0; u < R; u++) acc[u] = _mm512_setzero_ps();
    if (pc) d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w->scales + t * TR)));
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *tp = tile + b * tb;
        for (int64_t pf = 0; pf < tb; pf += 64) _mm_prefetch((const char *)(tp + PF_CODES + pf), _MM_HINT_T0);
        if (!pc) {
            const uint16_t *sp = w->scales + (t * nb + b) * TR;
            _mm_prefetch((const char *)(sp + PF_META), _MM_HINT_T0);
            d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sp));
            if (asym) {
                const uint16_t *op = w->offsets + (t * nb + b) * TR;
                _mm_prefetch((const char *)(op + PF_META), _MM_HINT_T0);
                off = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)op));
            }
        }
        /* two independent sum chains per token when few tokens (dpbusd latency would bound M=1) */
        __m512i D[VNNI_MC], E[VNNI_MC], G[VNNI_MC], H[VNNI_MC];
        const int two = R <= 4, four = i8 && R <= 2;
        for (int u = 0; u < R; u++) D[u] = E[u] = G[u] = H[u] = _mm512_setzero_si512();
        const int8_t *x = xq + b * tk;
        for (int l0 = 0; l0 < lines; l0 += 4) {
#pragma GCC unroll 4
            for (int l = l0; l < l0 + 4; l++) {
                __m512i raw = _mm512_loadu_si512(tp + 64 * l);
                if (!asym) raw = _mm512_xor_si512(raw, flip);
                if (i8) {
                    for (int u = 0; u < R; u++) {
                        const int8_t *p = x + u * ldq + 4 * l;
                        if (four && (l & 3) == 2) G[u] = dpbusd_bcast(G[u], raw, p);
                        else if (four && (l & 3) == 3) H[u] = dpbusd_bcast(H[u], raw, p);
                        else if (two && (l & 1)) E[u] = dpbusd_bcast(E[u], raw, p);
                        else D[u] = dpbusd_bcast(D[u], raw, p);
                    }
                } else {
                    __m512i lo = _mm512_and_si512(raw, lo_mask);
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo_mask);
                    for (int u = 0; u < R; u++) {
                        const int8_t *p = x + u * ldq + 8 * l;
                        D[u] = dpbusd_bcast(D[u], lo, p);
                        if (two) E[u] = dpbusd_bcast(E[u], hi, p + 4);
                        else D[u] = dpbusd_bcast(D[u], hi, p + 4);
                    }
                }
            }
        }
        if (four)
            for (int u = 0; u < R; u++) {
                D[u] = _mm512_add_epi32(D[u], G[u]);
                E[u] = _mm512_add_epi32(E[u], H[u]);
            }
        if (two)
            for (int u = 0; u < R; u++) D[u] = _mm512_add_epi32(D[u], E[u]);
        for (int u = 0; u < R; u++) {
            __m512i Dv = asym ? D[u] : _mm512_sub_epi32(D[u], _mm512_set1_epi32(XC[u * nb + b]));
            if (DOTS) {
                int32_t tmp[TR];
                _mm512_storeu_si512(tmp, Dv);
                store_dots(c, m0 + u, t, b, tmp);
            }
            __m512 tv = _mm512_mul_ps(_mm512_cvtepi32_ps(Dv), d);
            if (asym) tv = _mm512_add_ps(tv, _mm512_mul_ps(_mm512_set1_ps(XF[u * nb + b]), off));
            tv = _mm512_mul_ps(tv, _mm512_set1_ps(A[u * nb + b]));
            acc[u] = _mm512_add_ps(acc[u], tv);
        }
    }
    int64_t rows = w->n - t * TR;
    __mmask16 mask = rows >= TR ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1);
    for (int u = 0; u < R; u++) _mm512_mask_storeu_ps(c->y + (m0 + u) * w->n + t * TR, mask, acc[u]);
}

/* int8, one token (M = 1), tile width 32: S row tiles, one from each of S contiguous runs of the
 * thread's tile range, advance block by block together, so that the kernel reads S code streams (and
 * S scale streams) at once.  Each tile keeps its own float accumulator and block order, so the
 * results are tile_vnni's bit for bit.  Measured against the plain read (docs/kernels.md): one
 * stream 0.72-0.93 with 4 KiB pages, 0.93-0.99 with 2 MiB pages; three streams 0.92-1.03 and
 * 0.92-0.97 (two about as good with 2 MiB pages, worse with 4 KiB; four fall to 0.8). */
static inline __attribute__((always_inline)) VNNI_TARGET void
tiles_ms_vnni(const cim_ctx *c, const int64_t *ts, int64_t m0, const int S, const int pc) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *xq = c->q + m0 * c->ldq;
    const int32_t *XC = c->XC + m0 * nb;
    const float *A = c->A + m0 * nb;
    const uint8_t *tile[MS_MAX];
    __m512 acc[MS_MAX], d[MS_MAX];
    for (int s = 0; s < S; s++) {
        tile[s] = w->codes + ts[s] * nb * tb;
        acc[s] = _mm512_setzero_ps();
        if (pc) d[s] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w->scales + ts[s] * TR)));
    }
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *x = xq + b * 32;
        const __m512i xc = _mm512_set1_epi32(XC[b]);
        const __m512 av = _mm512_set1_ps(A[b]);
        for (int s = 0; s < S; s++) {
            const uint8_t *tp = tile[s] + b * tb;
            for (int pf = 0; pf < tb; pf += 64) _mm_prefetch((const char *)(tp + PF_MS + pf), _MM_HINT_T0);
            if (!pc) {
                const uint16_t *sp = w->scales + (ts[s] * nb + b) * TR;
                _mm_prefetch((const char *)(sp + PF_MS_META), _MM_HINT_T0);
                d[s] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sp));
            }
            __m512i D = _mm512_setzero_si512(), E = _mm512_setzero_si512(); /* two sum chains */
#pragma GCC unroll 8
            for (int l = 0; l < 8; l += 2) {
                D = dpbusd_bcast(D, _mm512_xor_si512(_mm512_loadu_si512(tp + 64 * l), flip), x + 4 * l);
                E = dpbusd_bcast(E, _mm512_xor_si512(_mm512_loadu_si512(tp + 64 * l + 64), flip), x + 4 * l + 4);
            }
            const __m512i Dv = _mm512_sub_epi32(_mm512_add_epi32(D, E), xc);
            const __m512 tv = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(Dv), d[s]), av);
            acc[s] = _mm512_add_ps(acc[s], tv);
        }
    }
    for (int s = 0; s < S; s++) {
        int64_t rows = w->n - ts[s] * TR;
        __mmask16 mask = rows >= TR ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1);
        _mm512_mask_storeu_ps(c->y + m0 * w->n + ts[s] * TR, mask, acc[s]);
    }
}

#define VNNI_CASES(F, DOTS, G32)                                                                        \
    switch (r) {                                                                                        \
    case 1: tile_vnni(c, t, i, 1, F, DOTS, G32); break; case 2: tile_vnni(c, t, i, 2, F, DOTS, G32); break; \
    case 3: tile_vnni(c, t, i, 3, F, DOTS, G32); break; case 4: tile_vnni(c, t, i, 4, F, DOTS, G32); break; \
    case 5: tile_vnni(c, t, i, 5, F, DOTS, G32); break; case 6: tile_vnni(c, t, i, 6, F, DOTS, G32); break; \
    case 7: tile_vnni(c, t, i, 7, F, DOTS, G32); break; default: tile_vnni(c, t, i, 8, F, DOTS, G32); break; \
    }

/* The dots hook and tile widths other than 32 take the generic (runtime tile width) instances. */
#define VNNI_DRIVER(NAME, F)                                                                            \
    static VNNI_TARGET void NAME(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {    \
        const int g32 = c->w->group == 32 || F == F_I8CH;                                               \
        if (MS_STREAMS > 1 && mc == 1 && (F == F_I8 || F == F_I8CH) && g32 && !c->dots) {               \
            const int64_t L = (t1 - t0) / MS_STREAMS;                                                   \
            for (int64_t j = 0; j < L; j++) {                                                           \
                int64_t ts[MS_MAX];                                                                     \
                for (int s = 0; s < MS_STREAMS; s++) ts[s] = t0 + s * L + j;                            \
                tiles_ms_vnni(c, ts, m0, MS_STREAMS, F == F_I8CH);                                      \
            }                                                                                           \
            t0 += L * MS_STREAMS; /* the last (t1 - t0) % MS_STREAMS tiles one by one */                \
        }                                                                                               \
        for (int64_t t = t0; t < t1; t++)                                                               \
            for (int64_t i = m0; i < m0 + mc; i += VNNI_MC) {                                           \
                int r = (int)(m0 + mc - i < VNNI_MC ? m0 + mc - i : VNNI_MC);                           \
                if (c->dots) VNNI_CASES(F, 1, 0)                                                        \
                else if (g32) VNNI_CASES(F, 0, 1)                                                       \
                else VNNI_CASES(F, 0, 0)                                                                \
            }                                                                                           \
    }

VNNI_DRIVER(tiles_i8_vnni, F_I8)
VNNI_DRIVER(tiles_i8ch_vnni, F_I8CH)
VNNI_DRIVER(tiles_i4_vnni, F_I4)
VNNI_DRIVER(tiles_i4a_vnni, F_I4A)

/* Block formats, vectorized.  Both slot layouts give 8 "quads" per tile: quad q holds, for every row,
 * the 4 codes of inputs 4q..4q+3 (int8 slots: line q; nibble slots: the low (q even) or high (q odd)
 * nibbles of line q/2), so a product of the unsigned codes u in [0, 63] with the int8 activations
 * leaves one int32 per row and quad: vpmaddubsw (pair sums <= 2 * 63 * 128, exact) + vpmaddwd(1) on
 * AVX2 (8 rows per register; the AVX-VNNI path runs it too), vpdpbusd on AVX-512 (16 rows).  The
 * integer sums and the float epilogue are the scalar body's, operation for operation. */

/* The format's structure as compile-time constants (loops unroll, U stays in registers, no per-tile
 * branches): one instance per combination the block kinds use, and a generic one for any other. */
#define BLK_SK(w) (((w)->super_k == 64) | (((w)->super_k == 256) << 1))
#define BLK_SHAPE(w) (((w)->bits == 8) | ((32 / (w)->sub_k == 2) << 1) | ((w)->scale_kind << 2) | \
                      ((w)->offset_kind << 4) | (((w)->has_subscales != 0) << 6) | (((w)->has_submins != 0) << 7) | \
                      (BLK_SK(w) << 8))
#define BLK_SHAPE_OF(i8, nsub, sk, offk, sc, mn, bps) ((i8) | (((nsub) == 2) << 1) | ((sk) << 2) | ((offk) << 4) | \
                                                      ((sc) << 6) | ((mn) << 7) | ((((bps) == 2) | (((bps) == 8) << 1)) << 8))
#define BLK_CASE(fn, V, i8, nsub, sk, offk, sc, mn, bps)                   \
    case BLK_SHAPE_OF(i8, nsub, sk, offk, sc, mn, bps):                    \
        fn(c, t0, t1, m0, mc, i8, nsub, sk, offk, sc, mn, bps, V); break;
#define BLK_DISPATCH(fn, V)                                                                            \
    switch (BLK_SHAPE(c->w)) {                                                                         \
        BLK_CASE(fn, V, 0, 2, 0, 1, 1, 1, 8) /* Q2_K */                                               \
        BLK_CASE(fn, V, 0, 2, 0, 0, 1, 0, 8) /* Q3_K */                                               \
        BLK_CASE(fn, V, 0, 1, 0, 1, 1, 1, 8) /* Q4_K */                                               \
        BLK_CASE(fn, V, 1, 1, 0, 1, 1, 1, 8) /* Q5_K */                                               \
        BLK_CASE(fn, V, 1, 2, 0, 0, 1, 0, 8) /* Q6_K */                                               \
        BLK_CASE(fn, V, 1, 1, 0, 0, 0, 0, 1) /* Q5_0 */                                               \
        BLK_CASE(fn, V, 1, 1, 0, 2, 0, 0, 1) /* Q5_1 */                                               \
        BLK_CASE(fn, V, 0, 1, 1, 0, 0, 0, 1) /* MXFP4 */                                              \
        BLK_CASE(fn, V, 0, 2, 2, 0, 0, 0, 2) /* NVFP4 */                                              \
    default:                                                                                           \
        fn(c, t0, t1, m0, mc, c->w->bits == 8, 32 / c->w->sub_k, c->w->scale_kind, c->w->offset_kind,  \
           c->w->has_subscales != 0, c->w->has_submins != 0, (int)(c->w->super_k / 32), V);              \
    }

/* M = 1 without the dots hook: S row tiles, one from each of S contiguous runs of the thread's tile
 * range, advance block by block together, each with its own accumulator and block order (the results
 * are the per-tile loop's bit for bit); the last (t1 - t0) % S tiles one by one.  S = BLK_TILES(bps):
 * one tile (one record stream) for the 256-weight super-blocks, whose large records keep the memory
 * system busy alone (measured on the 2-core development VM (AMD EPYC, AVX-512): two tiles, two
 * streams, gave 0.80-0.90 of the read, one 0.90-1.0), and two for the small super-blocks (Q5_0,
 * Q5_1, MXFP4, NVFP4: 32 or 64 weights), where the second tile's independent work is worth more
 * (one tile: 0.66-0.86 of the read, two 0.85-0.98). */
#ifndef BLK_MS
#define BLK_MS 2 /* the most row tiles a one-token body takes at once */
#endif
#ifndef BLK_TILES
#define BLK_TILES(bps) ((bps) >= 8 ? 1 : BLK_MS)
#endif
#ifndef PF_REC
#define PF_REC 4096 /* prefetch distance (bytes) in each row tile's record stream at M = 1 */
#endif
/* Software prefetch of the one-token bodies' streams: the record at R (rb bytes), PF_REC bytes ahead
 * (one stream per row tile: codes and every level of scales). */
static inline __attribute__((always_inline)) void blk_prefetch_rec(const uint8_t *R, const int64_t rb) {
    for (int64_t pf = 0; pf < rb; pf += 64) _mm_prefetch((const char *)(R + PF_REC + pf), _MM_HINT_T0);
}

#define BLK_M1(fn, S, ...)                                                                             \
    do {                                                                                               \
        const int S_ = (S);                                                                            \
        const int64_t L_ = (t1 - t0) / S_;                                                             \
        for (int64_t j_ = 0; j_ < L_; j_++) {                                                          \
            int64_t ts_[BLK_MS];                                                                       \
            for (int s_ = 0; s_ < S_; s_++) ts_[s_] = t0 + s_ * L_ + j_;                               \
            fn(c, ts_, S_, m0, xs, __VA_ARGS__);                                                       \
        }                                                                                              \
        for (int64_t t_ = t0 + L_ * S_; t_ < t1; t_++) fn(c, &t_, 1, m0, xs, __VA_ARGS__);             \
    } while (0)

/* X_j of every sub-block of tokens m0..m0+mc-1: xs[(i * nb + b) * 2 + j]. */
static void blk_xsums(const cim_ctx *c, int64_t m0, int64_t mc, int32_t *xs) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks;
    const int nsub = 32 / w->sub_k, sw = w->sub_k;
    for (int64_t i = 0; i < mc; i++)
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *x = c->q + (m0 + i) * c->ldq + b * 32;
            for (int j = 0; j < 2; j++) {
                int32_t sum = 0;
                if (j < nsub)
                    for (int e = 0; e < sw; e++) sum += x[j * sw + e];
                xs[(i * nb + b) * 2 + j] = sum;
            }
        }
}


/* 8 rows' e8m0 scale bytes at p -> float 2^(e - 128) (exact, as e8m0_to_float). */
static inline AVX2_TARGET __m256 e8m0_avx2(const uint8_t *p) {
    const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    const __m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
    const __m256i nrm = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
    const __m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
    return _mm256_castsi256_ps(_mm256_blendv_epi8(nrm, sub, small));
}

/* 8 rows' ue4m3 scale bytes at p -> float, as ue4m3_to_float, in integer operations and one
 * permute: a byte with e > 0 is the float of biased exponent e + 119 and mantissa bits m << 20, i.e.
 * (1 + m/8) 2^(e - 8) = (8 + m) 2^(e - 11); e = 0 gives m 2^-10, one of 8 floats (vpermps on m);
 * 0x7F -> 0.  Every value is exact (the bits are built, nothing is rounded). */
static inline AVX2_TARGET __m256 ue4m3_avx2(const uint8_t *p) {
    const __m256 sub = _mm256_setr_ps(0.0f, 0x1p-10f, 0x1p-9f, 0x1.8p-9f, 0x1p-8f, 0x1.4p-8f, 0x1.8p-8f, 0x1.cp-8f);
    const __m256i x7 = _mm256_and_si256(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)), _mm256_set1_epi32(0x7f));
    const __m256i nrm = _mm256_add_epi32(_mm256_slli_epi32(x7, 20), _mm256_set1_epi32(119 << 23));
    const __m256i ez = _mm256_cmpeq_epi32(_mm256_and_si256(x7, _mm256_set1_epi32(0x78)), _mm256_setzero_si256());
    const __m256 v = _mm256_blendv_ps(_mm256_castsi256_ps(nrm), _mm256_permutevar8x32_ps(sub, x7), _mm256_castsi256_ps(ez));
    const __m256i nan = _mm256_cmpeq_epi32(x7, _mm256_set1_epi32(0x7f));
    return _mm256_andnot_ps(_mm256_castsi256_ps(nan), v);
}

static inline AVX2_TARGET __m256 neg_half8_avx2(const uint16_t *p) { return _mm256_xor_ps(half8_avx2(p), _mm256_set1_ps(-0.0f)); }

/* One token, S row tiles (ts[0..S-1]) together; the body of tiles_blk_avx2_t for mc = 1 with the
 * super-block's scales converted once, the code lines read and consumed quad pair by quad pair
 * (V: vpdpbusd in two chains, else vpmaddubsw pairs as there), every sum and float operation the
 * same as there. */
static inline __attribute__((always_inline)) AVX2_TARGET void
tiles1_blk_avx2(const cim_ctx *c, const int64_t *ts, const int S, int64_t m0, const int32_t *xs, const int i8,
                const int nsub, const int sk, const int offk, const int has_sc, const int has_mn, const int bps,
                const int V) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32 * (i8 ? 8 : 4) / 8, nsup = nb / bps;
    const blk_rec L = blk_rec_of(i8, nsub, sk, offk, has_sc, has_mn, bps);
    const int qps = 8 / nsub, fsc = sk == 2;
    const __m256i ones = _mm256_set1_epi16(1), lo_mask = _mm256_set1_epi8(0x0f);
    const __m256i lut = w->lut ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w->lut))
                               : _mm256_setzero_si256();
    const int8_t *xq = c->q + m0 * c->ldq;
    const float *A = c->A + m0 * nb;
    __m256 acc[BLK_MS][2], d[BLK_MS][2], o[BLK_MS][2];
    for (int s = 0; s < BLK_MS; s++)
        for (int h = 0; h < 2; h++) acc[s][h] = d[s][h] = o[s][h] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsup; sb++) {
        const uint8_t *R[BLK_MS] = {0}; /* each tile's record of this super-block */
        _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
            R[s] = w->codes + (ts[s] * nsup + sb) * L.rb;
            blk_prefetch_rec(R[s], L.rb);
            for (int h = 0; h < 2; h++) {
                if (sk == 0) d[s][h] = half8_avx2((const uint16_t *)R[s] + 8 * h);
                if (offk == 1) o[s][h] = neg_half8_avx2((const uint16_t *)(R[s] + L.off) + 8 * h);
            }
        }
        for (int bb = 0; bb < bps; bb++) {
            const int64_t b = sb * bps + bb;
            const int8_t *x = xq + b * 32;
            const int32_t *X = xs + b * 2;
            const __m256 av = _mm256_set1_ps(A[b]);
            _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
                const uint8_t *tp = R[s] + L.codes + bb * tb;
                const int64_t u0 = bb * nsub * TR; /* this block's first sub-block unit in the record */
                if (sk == 1) {
                    d[s][0] = e8m0_avx2(R[s] + bb * TR);
                    d[s][1] = e8m0_avx2(R[s] + bb * TR + 8);
                }
                if (offk == 2) {
                    o[s][0] = half8_avx2((const uint16_t *)(R[s] + L.off) + bb * TR);
                    o[s][1] = half8_avx2((const uint16_t *)(R[s] + L.off) + bb * TR + 8);
                }
                __m256i Si[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, Mi[2] = {Si[0], Si[1]};
                __m256 tf[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int j = 0; j < nsub; j++) {
                    const int64_t su = u0 + j * TR;
                    __m256i P[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, P2[2] = {P[0], P[1]};
                    for (int q = j * qps; q < (j + 1) * qps; q += 2) {
                        const __m256i xb = bcast4_avx2(x + 4 * q), xc = bcast4_avx2(x + 4 * q + 4);
                        for (int h = 0; h < 2; h++) {
                            __m256i ua, ub;
                            if (i8) {
                                ua = _mm256_loadu_si256((const __m256i *)(tp + 64 * q + 32 * h));
                                ub = _mm256_loadu_si256((const __m256i *)(tp + 64 * q + 64 + 32 * h));
                            } else {
                                const __m256i raw = _mm256_loadu_si256((const __m256i *)(tp + 32 * q + 32 * h));
                                ua = _mm256_and_si256(raw, lo_mask);
                                if (V && !w->lut) /* as tiles1_blk_vnni: 16 u in place, sum / 16 below */
                                    ub = _mm256_andnot_si256(lo_mask, raw);
                                else
                                    ub = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo_mask);
                                if (w->lut) {
                                    ua = _mm256_shuffle_epi8(lut, ua);
                                    ub = _mm256_shuffle_epi8(lut, ub);
                                }
                            }
                            if (V) {
                                P[h] = dpbusd_vex(P[h], ua, xb);
                                P2[h] = dpbusd_vex(P2[h], ub, xc);
                            } else {
                                P[h] = _mm256_add_epi32(P[h], _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(ua, xb),
                                                                                                  _mm256_maddubs_epi16(ub, xc)),
                                                                                 ones));
                            }
                        }
                    }
                    const __m256i bx = _mm256_set1_epi32(w->bias * X[j]);
                    const __m256i xj = _mm256_set1_epi32(has_mn ? (X[j] & 0xffff) : X[j]); /* as tiles1_blk_vnni */
                    for (int h = 0; h < 2; h++) {
                        const __m256i p2 = V && !i8 && !w->lut ? _mm256_srai_epi32(P2[h], 4) : P2[h];
                        const __m256i D = _mm256_sub_epi32(V ? _mm256_add_epi32(P[h], p2) : P[h], bx);
                        if (fsc) {
                            const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(D), ue4m3_avx2(R[s] + su + 8 * h));
                            tf[h] = j ? _mm256_add_ps(tf[h], v) : v;
                        } else {
                            Si[h] = _mm256_add_epi32(Si[h], has_sc ? _mm256_mullo_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                                                                            (const __m128i *)(R[s] + L.sc + su + 8 * h))), D)
                                                                   : D);
                            if (offk)
                                Mi[h] = _mm256_add_epi32(Mi[h], has_mn ? _mm256_madd_epi16(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                                                                                (const __m128i *)(R[s] + L.mn + su + 8 * h))), xj)
                                                                       : xj);
                        }
                    }
                }
                for (int h = 0; h < 2; h++) {
                    __m256 v = tf[h];
                    if (!fsc) {
                        v = _mm256_mul_ps(_mm256_cvtepi32_ps(Si[h]), d[s][h]);
                        if (offk) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(Mi[h]), o[s][h]));
                    }
                    acc[s][h] = _mm256_add_ps(acc[s][h], _mm256_mul_ps(v, av));
                }
            }
        }
    }
    _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
        float out[TR];
        for (int h = 0; h < 2; h++) {
            __m256 a = acc[s][h];
            if (w->tensor_scale != 1.0f) a = _mm256_mul_ps(a, _mm256_set1_ps(w->tensor_scale));
            _mm256_storeu_ps(out + 8 * h, a);
        }
        store_rows(c, ts[s], m0, 1, out);
    }
}

#define BLK_XS_STACK 4096
static inline __attribute__((always_inline)) AVX2_TARGET void
tiles_blk_avx2_t(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc, const int i8, const int nsub,
                 const int sk, const int offk, const int has_sc, const int has_mn, const int bps, const int V) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32 * (i8 ? 8 : 4) / 8;
    const int qps = 8 / nsub; /* quads per sub-block; bps: blocks per super-block */
    const int64_t nsup = w->k / w->super_k;
    const int fsc = sk == 2;
    const blk_rec L = blk_rec_of(i8, nsub, sk, offk, has_sc, has_mn, bps);
    const __m256i ones = _mm256_set1_epi16(1), lo_mask = _mm256_set1_epi8(0x0f);
    const __m256i lut = w->lut ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w->lut))
                               : _mm256_setzero_si256();
    int32_t xs_stack[BLK_XS_STACK];
    int32_t *xs = mc * nb * 2 <= BLK_XS_STACK ? xs_stack : malloc(sizeof(int32_t) * mc * nb * 2);
    if (!xs) { /* out of memory for the side table: the scalar body needs none (same results) */
        tiles_blk_serial(c, t0, t1, m0, mc);
        return;
    }
    blk_xsums(c, m0, mc, xs);
    if (mc == 1 && !c->dots) {
        BLK_M1(tiles1_blk_avx2, BLK_TILES(bps), i8, nsub, sk, offk, has_sc, has_mn, bps, V);
        if (xs != xs_stack) free(xs);
        return;
    }
    float acc[HC_CIM_M_CHUNK * TR];
    for (int64_t t = t0; t < t1; t++) {
        memset(acc, 0, sizeof(float) * TR * mc);
        for (int64_t b = 0; b < nb; b++) {
            const int bb = (int)(b % bps);
            const uint8_t *R = w->codes + (t * nsup + b / bps) * L.rb; /* this super-block's record */
            const uint8_t *tp = R + L.codes + bb * tb;
            if (bb == 0)
                for (int64_t pf = 0; pf < L.rb; pf += 64) _mm_prefetch((const char *)(R + PF_CODES + pf), _MM_HINT_T0);
            __m256i U[8][2];
            if (i8) {
                for (int q = 0; q < 8; q++)
                    for (int h = 0; h < 2; h++) U[q][h] = _mm256_loadu_si256((const __m256i *)(tp + 64 * q + 32 * h));
            } else {
                for (int l = 0; l < 4; l++)
                    for (int h = 0; h < 2; h++) {
                        const __m256i raw = _mm256_loadu_si256((const __m256i *)(tp + 64 * l + 32 * h));
                        __m256i lo = _mm256_and_si256(raw, lo_mask), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo_mask);
                        if (w->lut) {
                            lo = _mm256_shuffle_epi8(lut, lo);
                            hi = _mm256_shuffle_epi8(lut, hi);
                        }
                        U[2 * l][h] = lo;
                        U[2 * l + 1][h] = hi;
                    }
            }
            /* per-row scales of this tile (exact conversions, as the scalar path's) */
            __m256 d[2], o[2], s2[2][2];
            __m256i sc[2][2], mn[2][2];
            for (int h = 0; h < 2; h++) {
                if (sk == 0) {
                    d[h] = half8_avx2((const uint16_t *)R + 8 * h);
                } else if (sk == 1) {
                    d[h] = e8m0_avx2(R + bb * TR + 8 * h);
                } else {
                    d[h] = _mm256_setzero_ps();
                }
                if (offk == 1)
                    o[h] = neg_half8_avx2((const uint16_t *)(R + L.off) + 8 * h);
                else if (offk == 2)
                    o[h] = half8_avx2((const uint16_t *)(R + L.off) + bb * TR + 8 * h);
                else
                    o[h] = _mm256_setzero_ps();
                for (int j = 0; j < nsub; j++) {
                    const int64_t su = (bb * nsub + j) * TR + 8 * h; /* the unit in the record */
                    if (fsc) s2[j][h] = ue4m3_avx2(R + su);
                    sc[j][h] = has_sc ? _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(R + L.sc + su)))
                                      : _mm256_set1_epi32(1);
                    mn[j][h] = has_mn ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(R + L.mn + su)))
                                      : _mm256_set1_epi32(1);
                }
            }
            for (int64_t i = 0; i < mc; i++) {
                const int64_t mi = m0 + i;
                const int8_t *x = c->q + mi * c->ldq + b * 32;
                const int32_t *X = xs + (i * nb + b) * 2;
                __m256i S[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, M[2] = {S[0], S[1]};
                __m256 tf[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int j = 0; j < nsub; j++) {
                    __m256i P[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                    for (int q = j * qps; q < (j + 1) * qps; q += 2) { /* two quads' int16 pairs add exactly */
                        const __m256i xb = bcast4_avx2(x + 4 * q), xc = bcast4_avx2(x + 4 * q + 4);
                        for (int h = 0; h < 2; h++)
                            P[h] = _mm256_add_epi32(P[h], _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(U[q][h], xb),
                                                                                              _mm256_maddubs_epi16(U[q + 1][h], xc)),
                                                                             ones));
                    }
                    const __m256i bx = _mm256_set1_epi32(w->bias * X[j]), xj = _mm256_set1_epi32(X[j]);
                    for (int h = 0; h < 2; h++) {
                        const __m256i D = _mm256_sub_epi32(P[h], bx);
                        if (fsc) {
                            const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(D), s2[j][h]);
                            tf[h] = j ? _mm256_add_ps(tf[h], v) : v;
                            S[h] = _mm256_add_epi32(S[h], D);
                        } else {
                            S[h] = _mm256_add_epi32(S[h], has_sc ? _mm256_mullo_epi32(sc[j][h], D) : D);
                            if (offk) M[h] = _mm256_add_epi32(M[h], has_mn ? _mm256_mullo_epi32(mn[j][h], xj) : xj);
                        }
                    }
                }
                if (c->dots) {
                    int32_t tmp[TR];
                    _mm256_storeu_si256((__m256i *)tmp, S[0]);
                    _mm256_storeu_si256((__m256i *)(tmp + 8), S[1]);
                    store_dots(c, mi, t, b, tmp);
                }
                const __m256 av = _mm256_set1_ps(c->A[mi * nb + b]);
                for (int h = 0; h < 2; h++) {
                    __m256 v = tf[h];
                    if (!fsc) {
                        v = _mm256_mul_ps(_mm256_cvtepi32_ps(S[h]), d[h]);
                        if (offk) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(M[h]), o[h]));
                    }
                    float *ac = acc + i * TR + 8 * h;
                    _mm256_storeu_ps(ac, _mm256_add_ps(_mm256_loadu_ps(ac), _mm256_mul_ps(v, av)));
                }
            }
        }
        if (w->tensor_scale != 1.0f)
            for (int64_t i = 0; i < TR * mc; i++) acc[i] = acc[i] * w->tensor_scale;
        store_rows(c, t, m0, mc, acc);
    }
    if (xs != xs_stack) free(xs);
}

static AVX2_TARGET void tiles_blk_avx2(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    BLK_DISPATCH(tiles_blk_avx2_t, 0)
}

/* the AVX-VNNI path: the same body, vpdpbusd (VEX) at M = 1 */
static AVX2_TARGET void tiles_blk_avxvnni(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    BLK_DISPATCH(tiles_blk_avx2_t, 1)
}

/* AVX-512 VNNI: one 64-byte quad is 16 rows x 4 codes, so one vpdpbusd per quad and token covers
 * the whole tile; scales and the epilogue in one register of 16 rows. */
static inline VNNI_TARGET __m512 e8m0_512(const uint8_t *p) { /* 16 rows, as e8m0_avx2 */
    const __m512i e = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    const __mmask16 small = _mm512_cmplt_epi32_mask(e, _mm512_set1_epi32(2));
    const __m512i nrm = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __m512i sub = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(small, nrm, sub));
}

static inline VNNI_TARGET __m512 ue4m3_512(const uint8_t *p) { /* 16 rows, as ue4m3_avx2 */
    const __m512i x8 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    const __m512i e = _mm512_and_si512(_mm512_srli_epi32(x8, 3), _mm512_set1_epi32(15));
    const __m512i m = _mm512_and_si512(x8, _mm512_set1_epi32(7));
    const __mmask16 ez = _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512());
    const __m512i sig = _mm512_mask_blend_epi32(ez, _mm512_add_epi32(m, _mm512_set1_epi32(8)), m);
    const __m512i ex = _mm512_mask_blend_epi32(ez, _mm512_add_epi32(e, _mm512_set1_epi32(127 - 11)), _mm512_set1_epi32(127 - 10));
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(sig), _mm512_castsi512_ps(_mm512_slli_epi32(ex, 23)));
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(_mm512_and_si512(x8, _mm512_set1_epi32(0x7f)), _mm512_set1_epi32(0x7f));
    return _mm512_maskz_mov_ps((__mmask16)~nan, v);
}

static inline VNNI_TARGET __m512 half16_512(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* One token, S row tiles together: tiles_blk_vnni_t's body for mc = 1, as tiles1_blk_avx2 (the
 * super-block's scales converted once, each 64-byte line unpacked and consumed at once, two
 * vpdpbusd chains per sub-block); the same sums and float operations in the same order. */
static inline __attribute__((always_inline)) VNNI_TARGET void
tiles1_blk_vnni(const cim_ctx *c, const int64_t *ts, const int S, int64_t m0, const int32_t *xs, const int i8,
                const int nsub, const int sk, const int offk, const int has_sc, const int has_mn, const int bps) {
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32 * (i8 ? 8 : 4) / 8, nsup = nb / bps;
    const blk_rec L = blk_rec_of(i8, nsub, sk, offk, has_sc, has_mn, bps);
    const int qps = 8 / nsub, fsc = sk == 2;
    const __m512i lo_mask = _mm512_set1_epi8(0x0f);
    const __m512i lut = w->lut ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)w->lut)) : _mm512_setzero_si512();
    const int8_t *xq = c->q + m0 * c->ldq;
    const float *A = c->A + m0 * nb;
    __m512 acc[BLK_MS], d[BLK_MS], o[BLK_MS];
    for (int s = 0; s < BLK_MS; s++) acc[s] = d[s] = o[s] = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsup; sb++) {
        const uint8_t *R[BLK_MS] = {0}; /* each tile's record of this super-block */
        _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
            R[s] = w->codes + (ts[s] * nsup + sb) * L.rb;
            blk_prefetch_rec(R[s], L.rb);
            if (sk == 0) d[s] = half16_512((const uint16_t *)R[s]);
            if (offk == 1)
                o[s] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(half16_512((const uint16_t *)(R[s] + L.off))),
                                                            _mm512_set1_epi32((int)0x80000000u)));
        }
        for (int bb = 0; bb < bps; bb++) {
            const int64_t b = sb * bps + bb;
            const int8_t *x = xq + b * 32;
            const int32_t *X = xs + b * 2;
            const __m512 av = _mm512_set1_ps(A[b]);
            _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
                const uint8_t *tp = R[s] + L.codes + bb * tb;
                const int64_t u0 = bb * nsub * TR; /* this block's first sub-block unit in the record */
                if (sk == 1) d[s] = e8m0_512(R[s] + bb * TR);
                if (offk == 2) o[s] = half16_512((const uint16_t *)(R[s] + L.off) + bb * TR);
                __m512i Si = _mm512_setzero_si512(), Mi = _mm512_setzero_si512();
                __m512 tf = _mm512_setzero_ps();
                for (int j = 0; j < nsub; j++) {
                    const int64_t su = u0 + j * TR;
                    __m512i P = _mm512_setzero_si512(), P2 = _mm512_setzero_si512(); /* two chains (exact) */
                    for (int q = j * qps; q < (j + 1) * qps; q += 2) {
                        __m512i ua, ub;
                        if (i8) {
                            ua = _mm512_loadu_si512(tp + 64 * q);
                            ub = _mm512_loadu_si512(tp + 64 * q + 64);
                        } else {
                            const __m512i raw = _mm512_loadu_si512(tp + 32 * q);
                            ua = _mm512_and_si512(raw, lo_mask);
                            if (w->lut) {
                                ua = _mm512_shuffle_epi8(lut, ua);
                                ub = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo_mask));
                            } else { /* the high nibbles in place: 16 u, summed below and divided by 16 (exact) */
                                ub = _mm512_andnot_si512(lo_mask, raw);
                            }
                        }
                        P = dpbusd_bcast(P, ua, x + 4 * q);
                        P2 = dpbusd_bcast(P2, ub, x + 4 * q + 4);
                    }
                    if (!i8 && !w->lut) P2 = _mm512_srai_epi32(P2, 4);
                    const __m512i D = _mm512_sub_epi32(_mm512_add_epi32(P, P2), _mm512_set1_epi32(w->bias * X[j]));
                    if (fsc) {
                        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(D), ue4m3_512(R[s] + su));
                        tf = j ? _mm512_add_ps(tf, v) : v;
                    } else {
                        Si = _mm512_add_epi32(Si, has_sc ? _mm512_mullo_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                                                                  (const __m128i *)(R[s] + L.sc + su))), D)
                                                         : D);
                        if (offk) { /* mn X by vpmaddwd: mn in [0, 255] zero-extended, |X_j| <= 32 * 128 (exact) */
                            const __m512i xj = _mm512_set1_epi32(has_mn ? (X[j] & 0xffff) : X[j]);
                            Mi = _mm512_add_epi32(Mi, has_mn ? _mm512_madd_epi16(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                                                                     (const __m128i *)(R[s] + L.mn + su))), xj)
                                                             : xj);
                        }
                    }
                }
                __m512 v = tf;
                if (!fsc) {
                    v = _mm512_mul_ps(_mm512_cvtepi32_ps(Si), d[s]);
                    if (offk) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(Mi), o[s]));
                }
                acc[s] = _mm512_add_ps(acc[s], _mm512_mul_ps(v, av));
            }
        }
    }
    _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {
        __m512 a = acc[s];
        if (w->tensor_scale != 1.0f) a = _mm512_mul_ps(a, _mm512_set1_ps(w->tensor_scale));
        const int64_t rows = w->n - ts[s] * TR;
        const __mmask16 mask = rows >= TR ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1);
        _mm512_mask_storeu_ps(c->y + m0 * w->n + ts[s] * TR, mask, a);
    }
}

static inline __attribute__((always_inline)) VNNI_TARGET void
tiles_blk_vnni_t(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc, const int i8, const int nsub,
                 const int sk, const int offk, const int has_sc, const int has_mn, const int bps, const int V) {
    (void)V;
    const hc_weights *w = c->w;
    const int64_t nb = w->n_blocks, tb = TR * 32 * (i8 ? 8 : 4) / 8;
    const int qps = 8 / nsub;
    const int64_t nsup = w->k / w->super_k;
    const int fsc = sk == 2;
    const blk_rec L = blk_rec_of(i8, nsub, sk, offk, has_sc, has_mn, bps);
    const __m512i lo_mask = _mm512_set1_epi8(0x0f);
    const __m512i lut = w->lut ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)w->lut)) : _mm512_setzero_si512();
    int32_t xs_stack[BLK_XS_STACK];
    int32_t *xs = mc * nb * 2 <= BLK_XS_STACK ? xs_stack : malloc(sizeof(int32_t) * mc * nb * 2);
    if (!xs) {
        tiles_blk_serial(c, t0, t1, m0, mc);
        return;
    }
    blk_xsums(c, m0, mc, xs);
    if (mc == 1 && !c->dots) {
        BLK_M1(tiles1_blk_vnni, BLK_TILES(bps), i8, nsub, sk, offk, has_sc, has_mn, bps);
        if (xs != xs_stack) free(xs);
        return;
    }
    __m512 acc[HC_CIM_M_CHUNK];
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t i = 0; i < mc; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const int bb = (int)(b % bps);
            const uint8_t *R = w->codes + (t * nsup + b / bps) * L.rb; /* this super-block's record */
            const uint8_t *tp = R + L.codes + bb * tb;
            if (bb == 0)
                for (int64_t pf = 0; pf < L.rb; pf += 64) _mm_prefetch((const char *)(R + PF_CODES + pf), _MM_HINT_T0);
            __m512i U[8];
            if (i8) {
                for (int q = 0; q < 8; q++) U[q] = _mm512_loadu_si512(tp + 64 * q);
            } else {
                for (int l = 0; l < 4; l++) {
                    const __m512i raw = _mm512_loadu_si512(tp + 64 * l);
                    __m512i lo = _mm512_and_si512(raw, lo_mask), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo_mask);
                    if (w->lut) {
                        lo = _mm512_shuffle_epi8(lut, lo);
                        hi = _mm512_shuffle_epi8(lut, hi);
                    }
                    U[2 * l] = lo;
                    U[2 * l + 1] = hi;
                }
            }
            __m512 d = _mm512_setzero_ps(), o = _mm512_setzero_ps(), s2[2];
            __m512i sc[2], mn[2];
            if (sk == 0) {
                d = half16_512((const uint16_t *)R);
            } else if (sk == 1) {
                d = e8m0_512(R + bb * TR);
            }
            if (offk == 1)
                o = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(half16_512((const uint16_t *)(R + L.off))),
                                                         _mm512_set1_epi32((int)0x80000000u)));
            else if (offk == 2)
                o = half16_512((const uint16_t *)(R + L.off) + bb * TR);
            for (int j = 0; j < nsub; j++) {
                const int64_t su = (bb * nsub + j) * TR; /* the unit in the record */
                if (fsc) s2[j] = ue4m3_512(R + su);
                sc[j] = has_sc ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(R + L.sc + su))) : _mm512_set1_epi32(1);
                mn[j] = has_mn ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(R + L.mn + su))) : _mm512_set1_epi32(1);
            }
            for (int64_t i = 0; i < mc; i++) {
                const int64_t mi = m0 + i;
                const int8_t *x = c->q + mi * c->ldq + b * 32;
                const int32_t *X = xs + (i * nb + b) * 2;
                __m512i S = _mm512_setzero_si512(), M = _mm512_setzero_si512();
                __m512 tf = _mm512_setzero_ps();
                for (int j = 0; j < nsub; j++) {
                    __m512i P = _mm512_setzero_si512(), P2 = _mm512_setzero_si512(); /* two chains (exact) */
                    for (int q = j * qps; q < (j + 1) * qps; q += 2) {
                        P = _mm512_dpbusd_epi32(P, U[q], _mm512_set1_epi32(*(const i32u *)(x + 4 * q)));
                        P2 = _mm512_dpbusd_epi32(P2, U[q + 1], _mm512_set1_epi32(*(const i32u *)(x + 4 * q + 4)));
                    }
                    P = _mm512_add_epi32(P, P2);
                    const __m512i D = _mm512_sub_epi32(P, _mm512_set1_epi32(w->bias * X[j]));
                    if (fsc) {
                        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(D), s2[j]);
                        tf = j ? _mm512_add_ps(tf, v) : v;
                        S = _mm512_add_epi32(S, D);
                    } else {
                        S = _mm512_add_epi32(S, has_sc ? _mm512_mullo_epi32(sc[j], D) : D);
                        if (offk) {
                            const __m512i xj = _mm512_set1_epi32(X[j]);
                            M = _mm512_add_epi32(M, has_mn ? _mm512_mullo_epi32(mn[j], xj) : xj);
                        }
                    }
                }
                if (c->dots) {
                    int32_t tmp[TR];
                    _mm512_storeu_si512(tmp, S);
                    store_dots(c, mi, t, b, tmp);
                }
                __m512 v = tf;
                if (!fsc) {
                    v = _mm512_mul_ps(_mm512_cvtepi32_ps(S), d);
                    if (offk) v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(M), o));
                }
                acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(v, _mm512_set1_ps(c->A[mi * nb + b])));
            }
        }
        float out[HC_CIM_M_CHUNK * TR];
        for (int64_t i = 0; i < mc; i++) {
            __m512 a = acc[i];
            if (w->tensor_scale != 1.0f) a = _mm512_mul_ps(a, _mm512_set1_ps(w->tensor_scale));
            _mm512_storeu_ps(out + i * TR, a);
        }
        store_rows(c, t, m0, mc, out);
    }
    if (xs != xs_stack) free(xs);
}

/* the slot width and sub-blocks per tile as compile-time constants (the quad loops unroll, U stays in registers) */
static VNNI_TARGET void tiles_blk_vnni(const cim_ctx *c, int64_t t0, int64_t t1, int64_t m0, int64_t mc) {
    BLK_DISPATCH(tiles_blk_vnni_t, 0)
}

#endif /* HC_X86 */

/* ---- driver ---------------------------------------------------------------------------------- */
int hc_cim_group_ok(const hc_weights *w, int64_t act_group) {
    return act_group >= 1 && w->k % act_group == 0 && (act_group == w->k || act_group % tile_k_of(w) == 0);
}

static int cim_run(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m, int64_t act_group,
                   float *y, int32_t *dots, int n_threads, int bits, int per_channel, int asym, hc_isa isa,
                   tiles_fn fn) {
    if (!(hc_isa_supported() & (1u << isa))) return HC_EUNSUPPORTED;
    int rc = hc_weights_check(w);
    if (rc) return rc;
    if (bits == 0 ? !w->block
                  : (w->block || w->bits != bits || (w->group == 0) != per_channel || (w->asymmetric != 0) != asym))
        return HC_EINVAL; /* bits == 0: the block-format path */
    if (m < 1 || !q || !act_scales || !y || n_threads < 1 || n_threads > HC_MAX_THREADS) return HC_EINVAL;
    const int64_t k = w->k, tk = tile_k_of(w), nb = w->n_blocks, kp = nb * tk, nt = w->n_row_tiles;
    if (!hc_cim_group_ok(w, act_group)) return HC_EINVAL;
    const int64_t n_ag = k / act_group;

    size_t side = (size_t)m * nb;
    size_t bytes = side * (2 * sizeof(int32_t) + 2 * sizeof(float)) + (kp != k ? (size_t)m * kp : 0) + 64;
    _Alignas(64) char stack_scratch[16384]; /* one token's side tables without a malloc */
    char *scratch = bytes <= sizeof(stack_scratch) ? stack_scratch : malloc(bytes);
    if (!scratch) return HC_ENOMEM;
    int32_t *X = (int32_t *)scratch;
    int32_t *XC = X + side;
    float *XF = (float *)(XC + side);
    float *A = XF + side;
    const int32_t corr = bits == 8 ? 128 : (asym ? 0 : 8);
    const int8_t *qa = q;
    if (kp != k) { /* per-channel with k not a multiple of 32: zero-pad the activations */
        int8_t *qp = (int8_t *)(A + side);
        for (int64_t i = 0; i < m; i++) {
            memcpy(qp + i * kp, q + i * k, (size_t)k);
            memset(qp + i * kp + k, 0, (size_t)(kp - k));
        }
        qa = qp;
    }
    int has_min = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *x = qa + i * kp + b * tk;
            int32_t s = 0;
            for (int64_t j = 0; j < tk; j++) {
                s += x[j];
                has_min |= x[j] == -128;
            }
            X[i * nb + b] = s;
            XC[i * nb + b] = corr * s;
            XF[i * nb + b] = (float)s;
            A[i * nb + b] = act_scales[i * n_ag + (b * tk) / act_group];
        }
    cim_ctx c = {w, qa, kp, X, XC, XF, A, y, dots, has_min};

    /* weight bytes (codes, fp16 scales and offsets) of one row tile */
    const int64_t row_bytes = nb * (TR * tk * w->bits / 8) + (per_channel ? 1 : nb) * TR * 2 * (asym ? 2 : 1);
    int threads = n_threads < nt ? n_threads : (int)nt;
    /* the dots hook (tests) keeps every thread, so that the split stays tested */
    if (!dots) threads = hc__threads_for_bytes(threads, nt * row_bytes);
    (void)threads; /* unused without OpenMP */
#ifdef _OPENMP
    if (threads == 2 && nt < ((int64_t)1 << 31)) {
        const int64_t chunk = HC_SPLIT2_BYTES / row_bytes > 2 * MS_STREAMS ? HC_SPLIT2_BYTES / row_bytes : 2 * MS_STREAMS;
        uint64_t range = (uint64_t)nt << 32;
#pragma omp parallel num_threads(2)
        {
            const int top = omp_get_thread_num() == 1;
            int64_t t0, t1;
            while (hc__claim2(&range, top, chunk, &t0, &t1))
                for (int64_t m0 = 0; m0 < m; m0 += HC_CIM_M_CHUNK)
                    fn(&c, t0, t1, m0, m - m0 < HC_CIM_M_CHUNK ? m - m0 : HC_CIM_M_CHUNK);
        }
    } else if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            int64_t t0 = nt * tid / nth, t1 = nt * (tid + 1) / nth;
            for (int64_t m0 = 0; m0 < m; m0 += HC_CIM_M_CHUNK)
                fn(&c, t0, t1, m0, m - m0 < HC_CIM_M_CHUNK ? m - m0 : HC_CIM_M_CHUNK);
        }
    } else
#endif
    {
        for (int64_t m0 = 0; m0 < m; m0 += HC_CIM_M_CHUNK)
            fn(&c, 0, nt, m0, m - m0 < HC_CIM_M_CHUNK ? m - m0 : HC_CIM_M_CHUNK);
    }
    if (scratch != stack_scratch) free(scratch);
    return HC_OK;
}

#define DEFINE_PATH(name, bits, pc, asym, isa, fn)                                                      \
    int name(const hc_weights *w, const int8_t *q, const float *as, int64_t m, int64_t ag, float *y,    \
             int32_t *dots, int n_threads) {                                                           \
        return cim_run(w, q, as, m, ag, y, dots, n_threads, bits, pc, asym, isa, fn);                  \
    }

DEFINE_PATH(hc_gemm_i8_serial, 8, 0, 0, HC_ISA_SCALAR, tiles_serial)
DEFINE_PATH(hc_gemm_i8_avx2, 8, 0, 0, HC_ISA_AVX2, X86_FN(tiles_i8_avx2))
DEFINE_PATH(hc_gemm_i8_avxvnni, 8, 0, 0, HC_ISA_AVXVNNI, X86_FN(tiles_i8_avxvnni))
DEFINE_PATH(hc_gemm_i8_avx512vnni, 8, 0, 0, HC_ISA_AVX512VNNI, X86_FN(tiles_i8_vnni))
DEFINE_PATH(hc_gemm_i8ch_serial, 8, 1, 0, HC_ISA_SCALAR, tiles_serial)
DEFINE_PATH(hc_gemm_i8ch_avx2, 8, 1, 0, HC_ISA_AVX2, X86_FN(tiles_i8ch_avx2))
DEFINE_PATH(hc_gemm_i8ch_avxvnni, 8, 1, 0, HC_ISA_AVXVNNI, X86_FN(tiles_i8ch_avxvnni))
DEFINE_PATH(hc_gemm_i8ch_avx512vnni, 8, 1, 0, HC_ISA_AVX512VNNI, X86_FN(tiles_i8ch_vnni))
DEFINE_PATH(hc_gemm_i4_serial, 4, 0, 0, HC_ISA_SCALAR, tiles_serial)
DEFINE_PATH(hc_gemm_i4_avx2, 4, 0, 0, HC_ISA_AVX2, X86_FN(tiles_i4_avx2))
DEFINE_PATH(hc_gemm_i4_avxvnni, 4, 0, 0, HC_ISA_AVXVNNI, X86_FN(tiles_i4_avxvnni))
DEFINE_PATH(hc_gemm_i4_avx512vnni, 4, 0, 0, HC_ISA_AVX512VNNI, X86_FN(tiles_i4_vnni))
DEFINE_PATH(hc_gemm_i4a_serial, 4, 0, 1, HC_ISA_SCALAR, tiles_serial)
DEFINE_PATH(hc_gemm_i4a_avx2, 4, 0, 1, HC_ISA_AVX2, X86_FN(tiles_i4a_avx2))
DEFINE_PATH(hc_gemm_i4a_avxvnni, 4, 0, 1, HC_ISA_AVXVNNI, X86_FN(tiles_i4a_avxvnni))
DEFINE_PATH(hc_gemm_i4a_avx512vnni, 4, 0, 1, HC_ISA_AVX512VNNI, X86_FN(tiles_i4a_vnni))
DEFINE_PATH(hc_gemm_blk_serial, 0, 0, 0, HC_ISA_SCALAR, tiles_blk_serial)
DEFINE_PATH(hc_gemm_blk_avx2, 0, 0, 0, HC_ISA_AVX2, X86_FN(tiles_blk_avx2))
DEFINE_PATH(hc_gemm_blk_avxvnni, 0, 0, 0, HC_ISA_AVXVNNI, X86_FN(tiles_blk_avxvnni))
DEFINE_PATH(hc_gemm_blk_avx512vnni, 0, 0, 0, HC_ISA_AVX512VNNI, X86_FN(tiles_blk_vnni))

hc_cim_fn hc_cim_kernel(const hc_weights *w, hc_isa isa) {
    static const hc_cim_fn table[4][HC_ISA_COUNT] = {
        {hc_gemm_i8_serial, hc_gemm_i8_avx2, hc_gemm_i8_avxvnni, hc_gemm_i8_avx512vnni},
        {hc_gemm_i8ch_serial, hc_gemm_i8ch_avx2, hc_gemm_i8ch_avxvnni, hc_gemm_i8ch_avx512vnni},
        {hc_gemm_i4_serial, hc_gemm_i4_avx2, hc_gemm_i4_avxvnni, hc_gemm_i4_avx512vnni},
        {hc_gemm_i4a_serial, hc_gemm_i4a_avx2, hc_gemm_i4a_avxvnni, hc_gemm_i4a_avx512vnni},
    };
    static const hc_cim_fn blk[HC_ISA_COUNT] = {hc_gemm_blk_serial, hc_gemm_blk_avx2, hc_gemm_blk_avxvnni,
                                                hc_gemm_blk_avx512vnni};
    if (!w || (int)isa < 0 || isa >= HC_ISA_COUNT) return NULL;
    if (w->block) return blk[isa];
    int f;
    if (w->bits == 8) f = w->group ? 0 : 1;
    else if (w->bits == 4) f = w->asymmetric ? 3 : 2;
    else return NULL;
    return table[f][isa];
}

int hc_cim_matmul(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m, int64_t act_group,
                  float *y, int n_threads) {
    hc_cim_fn fn = hc_cim_kernel(w, hc_isa_active());
    if (!fn) return HC_EINVAL;
    return fn(w, q, act_scales, m, act_group, y, NULL, n_threads);
}

int hc_cim_linear(const hc_weights *w, const float *x, int64_t m, int64_t act_group, float *y, int n_threads) {
    int rc = hc_weights_check(w);
    if (rc) return rc;
    if (!x || m < 1 || act_group < 1 || w->k % act_group) return HC_EINVAL;
    const int64_t k = w->k;
    const size_t need = (size_t)m * k + (size_t)m * (k / act_group) * sizeof(float) + 64;
    _Alignas(64) char stack_buf[32768]; /* one token of up to ~28k inputs without a malloc */
    char *buf = need <= sizeof(stack_buf) ? stack_buf : malloc(need);
    if (!buf) return HC_ENOMEM;
    float *scales = (float *)buf;
    int8_t *q = (int8_t *)(scales + m * (k / act_group));
    rc = hc_quantize_act(x, m, k, act_group, q, scales);
    if (rc == HC_OK) rc = hc_cim_matmul(w, q, scales, m, act_group, y, n_threads);
    if (buf != stack_buf) free(buf);
    return rc;
}
