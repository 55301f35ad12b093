/*
 * hcemu.h — the public C interface of hcemu's kernels.
 *
 * Other simulators compile against this header (directory: `hcemu.get_include()`) and link the
 * sources in csrc/.  Everything here is plain C11: pointers, sizes and status codes.  The numerics
 * (formats, tile layout, nibble order, rounding, float evaluation order) are specified in
 * docs/numerics.md; every path (scalar, AVX2, AVX-VNNI, AVX-512 VNNI) gives bit-identical results.
 *
 * Naming: hc_<op>_<format>_<isa>; the un-suffixed hc_<op>_<format> dispatches on the active ISA.
 */
#ifndef HCEMU_H
#define HCEMU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes: 0 = ok, negative = error (mapped to Python exceptions by hcemu._core.check) */
#define HC_OK 0
#define HC_EINVAL -1       /* an argument is out of range (sizes, group, threads) */
#define HC_ENOMEM -2       /* an allocation failed */
#define HC_EUNSUPPORTED -3 /* the requested ISA path is not supported by this CPU */
#define HC_ENONFINITE -4   /* a float input held NaN or infinity */
#define HC_ECAPACITY -5    /* a fixed-capacity buffer (KV cache) is full */
#define HC_EREMOTE -6      /* a remote expert (expert parallelism) failed */

/* ---- run-time ISA selection ------------------------------------------------------------------ */
typedef enum {
    HC_ISA_SCALAR = 0,
    HC_ISA_AVX2 = 1,
    HC_ISA_AVXVNNI = 2, /* AVX2 with the VEX-encoded vpdpbusd (Alder Lake and later client CPUs, Zen 5) */
    HC_ISA_AVX512VNNI = 3,
    HC_ISA_COUNT = 4
} hc_isa;

/* Bit mask (1 << hc_isa) of the paths this CPU and OS can run. Scalar is always present; AVX2 needs
 * AVX2, FMA and F16C; AVXVNNI needs those and AVX-VNNI; AVX512VNNI needs AVX-512 F, BW, VL and VNNI.
 * Paths are numbered in order of preference: the default is the highest supported. */
unsigned hc_isa_supported(void);
/* The path kernels dispatch to now (the best supported one unless set). */
hc_isa hc_isa_active(void);
/* Choose a path; HC_EUNSUPPORTED when this machine cannot run it. */
int hc_isa_set(hc_isa isa);
/* "scalar", "avx2", "avxvnni", "avx512vnni". */
const char *hc_isa_name(hc_isa isa);


/* ==== vector unit (csrc/hc_vec.c) — float32, one rounding per operation, no FMA ================
 * Exact rules: docs/numerics.md "Vector unit".  All arrays C-contiguous.  Every path gives
 * bit-identical results (the reduction orders are fixed, not left to the compiler).            */

/* The vector unit's exp: Cody-Waite reduction + degree-6 polynomial (Cephes expf), float32.
 * x < -87 -> 0, x > 88 -> +inf, NaN -> NaN.  Accurate to about 2 ulp elsewhere. */
float hc_exp_f32(float x);
/* IEEE binary16 <-> binary32; f32->f16 rounds to nearest even, overflows to +-inf, NaN -> quiet NaN. */
uint16_t hc_f32_to_f16(float x);
float hc_f16_to_f32(uint16_t h);
void hc_f32_to_f16_array(const float *x, int64_t n, uint16_t *out);
void hc_exp_f32_array(const float *x, int64_t n, float *out);

/* y[i,:] = (x[i,:] * r_i) * w[:],  r_i = 1 / sqrt(ss_i / d + eps),  ss_i = sum of x^2 over 16
 * interleaved lanes (lane l takes columns j = l mod 16 in ascending order), lanes folded 8,4,2,1.
 * x, y: (m, d); w: (d,).  y may alias x. */
int hc_rmsnorm_f32(const float *x, const float *w, int64_t m, int64_t d, float eps, float *y);
/* RoPE on consecutive pairs: for token i, head h, pair j (0 <= j < hd/2):
 *   y[2j] = x[2j]*c - x[2j+1]*s,  y[2j+1] = x[2j]*s + x[2j+1]*c,  c = cos[i,j], s = sin[i,j].
 * x, y: (t, heads, hd); cos, sin: (t, hd/2).  hd even.  y may alias x. */
int hc_rope_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                int64_t hd, float *y);
/* RoPE with a choice of pairs: neox == 0 as hc_rope_f32; neox != 0 rotates (x[j], x[j + hd/2]):
 *   y[j] = x[j]*c - x[j+hd/2]*s,  y[j+hd/2] = x[j]*s + x[j+hd/2]*c. */
int hc_rope_style_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                      int64_t hd, int neox, float *y);
/* y = (g / (1 + exp(-g))) * u, elementwise over n values; y may alias g or u. */
int hc_silu_mul_f32(const float *g, const float *u, int64_t n, float *y);
/* y = gelu(g) * u, GELU's tanh approximation in the unit's float32 (docs/numerics.md "Vector unit"):
 * v = ((g*g)*g)*0.044715f + g; t = tanh(v * 0.7978846f); gelu = (0.5f*g) * (1 + t), with
 * tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2|z|).  y may alias g or u. */
int hc_gelu_mul_f32(const float *g, const float *u, int64_t n, float *y);
/* x += y over n values (the residual add). */
int hc_add_f32(float *x, const float *y, int64_t n);
/* x[i, :] += b over m rows of n values (biases). */
int hc_add_rows_f32(float *x, const float *b, int64_t m, int64_t n);
/* x *= s over n values (embedding scaling). */
int hc_scale_f32(float *x, float s, int64_t n);
/* Soft-capping x = tanh(x * (1/cap)) * cap over n values (1/cap rounded to float32 once); cap > 0. */
int hc_softcap_f32(float *x, float cap, int64_t n);
/* Mixture-of-experts routing of t tokens, logits (t, n_experts) float32: per token the k largest
 * logits in descending order, the lower expert first on ties -> sel (t, k); their probabilities
 * exp(l - m) / s (m the largest logit, s the 16-lane sum of exp(l - m) over every expert) -> w (t, k);
 * norm != 0: w_i = w_i / (w_0 + w_1 + ...) summed in slot order; scale != 1: w_i = w_i * scale.
 * HC_ENONFINITE for a non-finite logit. */
int hc_moe_route_f32(const float *logits, int64_t t, int64_t n_experts, int k, int norm, float scale,
                     int32_t *sel, float *w);
/* y[i, :] = y[i, :] + x[i, :] * w[i] over m rows of n values (an expert's weighted output). */
int hc_axpy_rows_f32(float *y, const float *x, const float *w, int64_t m, int64_t n);
/* x = 1 / (1 + exp(-x)) over n values (the shared expert's gate). */
int hc_sigmoid_f32(float *x, int64_t n);

/* ==== SRAM KV cache and streaming attention (csrc/hc_attn.c) ==================================
 * Exact rules: docs/numerics.md "KV cache" and "Attention".
 *
 * One layer's cache is stored KV-head major so each head's keys stream contiguously:
 *   int8: codes (n_kv_heads, capacity, hd) int8, scales (n_kv_heads, capacity) fp16 bits;
 *   fp16: values (n_kv_heads, capacity, hd) fp16 bits.  K and V have separate arrays.
 * Token positions index the `capacity` axis.                                                    */

/* Quantize x (t, n_kv_heads, hd) float32 into positions [pos, pos+t): per (token, kv head)
 * amax = max|x|, s = fp16(amax/127), q = clamp(rne(x * (1/s)), -127, 127) (0 when s == 0).
 * HC_ENONFINITE on NaN/inf input or when amax/127 overflows fp16; HC_ECAPACITY past capacity. */
int hc_kv_store_i8(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos, int64_t capacity,
                   int8_t *codes, uint16_t *scales);
/* Store x (t, n_kv_heads, hd) float32 as fp16 (round to nearest even) into [pos, pos+t). */
int hc_kv_store_f16(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos,
                    int64_t capacity, uint16_t *values);

/* Causal grouped-query attention over one layer's cache, streamed in blocks of HC_ATTN_BLOCK keys
 * with an online softmax.  q: (t, n_heads, hd) float32 (RoPE applied); query i sits at position
 * start+i and attends keys [0, start+i]; head h reads kv head h / (n_heads / n_kv_heads).
 * out: (t, n_heads*hd) float32.  Requires start + t <= capacity.  HC_ENONFINITE for non-finite q
 * or scores.  Dispatches on hc_isa_active(); all paths give bit-identical outputs.  Scratch: a
 * per-thread buffer kept between calls (up to 4 MiB, freed when the thread ends).             */
#define HC_ATTN_BLOCK 64
#define HC_ATTN_MAX_HEAD_DIM 65536 /* keeps every q.k sum (|D| <= 127*128*hd) inside int32 */
int hc_attn_i8(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
               const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
               int64_t capacity, float *out);
int hc_attn_f16(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                const uint16_t *k, const uint16_t *v, int64_t capacity, float *out);
/* Attention variants (docs/numerics.md "Attention"): scale > 0 replaces c = 1/sqrt(hd) (0: that
 * default); softcap > 0 caps every score s -> tanh(s * (1/softcap)) * softcap before the softmax;
 * window > 0 restricts the query at position p to keys [max(0, p - window + 1), p], streamed in
 * blocks of HC_ATTN_BLOCK from that first key.  opts == NULL: none of them (hc_attn_i8/f16). */
typedef struct {
    float scale;
    float softcap;
    int64_t window;
} hc_attn_opts;
int hc_attn_i8_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                    const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
                    int64_t capacity, const hc_attn_opts *opts, float *out);
int hc_attn_f16_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                     const uint16_t *k, const uint16_t *v, int64_t capacity, const hc_attn_opts *opts,
                     float *out);
/* Keys that t queries at positions [start, start+t) attend together: the sum over p of min(p + 1, window)
 * (window 0: p + 1, every earlier key and its own) — hcemu.events.attended_keys, for the event counts. */
int64_t hc_attended_keys(int64_t t, int64_t start, int64_t window);
/* Debug/test entry: exact int32 dot products D[j] = sum_d q[d] * k[j, d] for n keys of hd int8
 * values, on the given ISA path (HC_EUNSUPPORTED when this CPU lacks it). */
int hc_attn_qk_i8(hc_isa isa, const int8_t *q, const int8_t *k, int64_t n, int hd, int32_t *out);

/* ---- compute-in-memory products (csrc/hc_cim.c) ----------------------------------------------
 *
 * A weight matrix of n output rows x k inputs lies in ROM tiles as docs/numerics.md and
 * hcemu/layout.py define (hcemu.layout.PackedWeights):
 *   codes   uint8  [n_row_tiles][n_blocks][tile_bytes]   tile_bytes = 16 * tile_k * bits / 8
 *           int8: bytes [tile_k/4][row 0..15][4 inputs]; int4: [tile_k/8][row 0..15][4], low
 *           nibble input 8kq+j, high nibble input 8kq+4+j.
 *   scales  fp16   [n_row_tiles][n_blocks][16] (block formats) or [n_row_tiles][16] (per channel)
 *   offsets fp16   like scales (asymmetric int4 only, else NULL)
 * n_row_tiles = ceil(n / 16); n_blocks = k / group, or ceil(k / 32) per channel (tile_k = 32).
 *
 * Activations: q int8 [m][k] row-major (codes in [-128, 127] are all exact), act_scales float32
 * [m][k / act_group]; act_group must divide k and be a multiple of tile_k or equal k.
 * Output: y float32 [m][n] row-major.  Any m >= 1 is accepted: tokens are processed in chunks of
 * HC_CIM_M_CHUNK (each weight line is loaded once per chunk and reused for all its tokens); every
 * token's result is independent of the chunking.
 * n_threads (1..HC_MAX_THREADS) splits the row tiles into contiguous ranges, one per thread
 * (OpenMP when built with it, else serial; two threads claim 1 MiB chunks from opposite ends, so
 * that one that starts late leaves its share to the other); the results do not depend on n_threads.  At most one
 * thread runs per HC_CIM_BYTES_PER_THREAD of weights (codes and scales): waking a sleeping OpenMP
 * worker (hcemu sets OMP_WAIT_POLICY=PASSIVE) costs about 50 us on the 2-core development VM, the time to
 * stream ~2 MiB, so smaller products run faster on fewer threads.  The dots hook is exempt.
 * All functions return HC_OK or a negative status (HC_EINVAL for bad sizes/groups/threads,
 * HC_ENOMEM, HC_EUNSUPPORTED for an ISA path this CPU lacks, HC_ENONFINITE for NaN/inf input).
 */
#define HC_CIM_M_CHUNK 64
#define HC_MAX_THREADS 256
#define HC_CIM_BYTES_PER_THREAD (4 << 20)

typedef struct {
    int bits;                /* 8 or 4 */
    int group;               /* 32, 64, 128; 0 = one scale per output row (int8 only, tile_k 32) */
    int asymmetric;          /* int4 only: codes in [0,15], w = q*d + m */
    int64_t n, k;            /* logical matrix size (output rows, inputs) */
    int64_t n_row_tiles;     /* ceil(n / 16) */
    int64_t n_blocks;        /* k / group, or ceil(k / 32) per channel */
    const uint8_t *codes;    /* [n_row_tiles][n_blocks][tile_bytes] */
    const uint16_t *scales;  /* fp16 bits, [n_row_tiles][n_blocks][16] or [n_row_tiles][16] */
    const uint16_t *offsets; /* fp16 bits like scales, asymmetric only; NULL otherwise */
    /* ---- block formats (k-quants, Q5_0/Q5_1, MXFP4, NVFP4; docs/numerics.md "Block formats").
     * block = 1: bits is the code slot (4: nibbles as int4, 8: bytes as int8), group = 32 (tile_k),
     * asymmetric = 0; the stored codes are unsigned and the kernels multiply u = code (or lut[code])
     * by the activations, then subtract bias * X.  codes points to the records
     * [n_row_tiles][k / super_k][record bytes] (hcemu.layout): per row tile and super-block its
     * scales, offsets, sub-scales, sub-mins (each [units per super-block][16]) and the super-block's
     * super_k / 32 code tiles, in that order; scales and offsets are NULL. */
    int block;                  /* 0: the integer formats above */
    int super_k, sub_k;         /* super-block (32, 64, 256) and sub-block (16, 32) widths */
    int bias;                   /* v = u - bias; u in [0, 63] */
    int scale_kind;             /* 0: fp16 d per super-block; 1: e8m0 byte per block of 32;
                                   2: ue4m3 byte per sub-block */
    int offset_kind;            /* 0: none; 1: fp16 dmin per super-block (w -= dmin * mn);
                                   2: fp16 m per block of 32 (w += m) */
    const uint8_t *lut;         /* 16 entries, nibble -> u (FP4 kinds), or NULL: u = the stored code */
    int has_subscales;          /* int8 sub-scales per sub-block in the records (else sc = 1) */
    int has_submins;            /* uint8 sub-mins per sub-block (offset_kind 1) */
    float tensor_scale;         /* y = acc * tensor_scale when != 1 (NVFP4) */
} hc_weights;

/* HC_OK when the descriptor is self-consistent (format, sizes, pointers); HC_EINVAL otherwise. */
int hc_weights_check(const hc_weights *w);

/* 1 when activations quantized in groups of `act_group` inputs can feed w's products (act_group divides
 * w->k and is either the whole row or a multiple of w's 32/64/128-input tile), else 0. The CIM entry
 * points refuse other groups with HC_EINVAL; hc_decoder_check applies the same rule to every product. */
int hc_cim_group_ok(const hc_weights *w, int64_t act_group);

/* Quantize activations x float32 [m][k] to q int8 [m][k] and scales float32 [m][k/group], one
 * scale per group of `group` inputs (group divides k), by the rule of docs/numerics.md.
 * HC_ENONFINITE (outputs unspecified) if x holds NaN or infinity. */
int hc_quantize_act(const float *x, int64_t m, int64_t k, int64_t group, int8_t *q, float *scales);

/* y[m][n] = the CIM product of int8 activations (q, act_scales) with the ROM matrix w, through the
 * active ISA path (hc_isa_active()).  Dispatches on w's format. */
int hc_cim_matmul(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                  int64_t act_group, float *y, int n_threads);

/* Fused: quantize x float32 [m][k] per act_group (hc_quantize_act) and multiply (hc_cim_matmul). */
int hc_cim_linear(const hc_weights *w, const float *x, int64_t m, int64_t act_group, float *y,
                  int n_threads);

/* The same product through one named path, for tests and benchmarks.  If dots is not NULL it
 * also receives the exact integer block sums D[m][n_row_tiles*16][n_blocks] (int32, padding rows
 * included) of docs/numerics.md.  Formats: i8 = int8 per block, i8ch = int8 per channel,
 * i4 = symmetric int4 per block, i4a = asymmetric int4 per block; the format must match w. */
typedef int (*hc_cim_fn)(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                         int64_t act_group, float *y, int32_t *dots, int n_threads);
int hc_gemm_i8_serial(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8_avx2(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8_avxvnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8_avx512vnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8ch_serial(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8ch_avx2(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8ch_avxvnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i8ch_avx512vnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4_serial(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4_avx2(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4_avxvnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4_avx512vnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4a_serial(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4a_avx2(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4a_avxvnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_i4a_avx512vnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
/* Block formats (w->block = 1); dots receives S = sum_j sc_j D_j per block of 32 (NVFP4: sum_j D_j). */
int hc_gemm_blk_serial(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_blk_avx2(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_blk_avxvnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);
int hc_gemm_blk_avx512vnni(const hc_weights *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t *, int);

/* The path for w's format and ISA `isa` (NULL for a bad format); HC_EUNSUPPORTED comes from the
 * call if the CPU lacks the ISA. */
hc_cim_fn hc_cim_kernel(const hc_weights *w, hc_isa isa);

/* 1 when built with OpenMP. */
int hc_openmp(void);

/* ==== LoRA adapters in SRAM (csrc/hc_lora.c) ===================================================
 * One adapted matrix W (n x k) of rank r: the side path adds B (A x) to the ROM product's output.
 * Exact rules: docs/numerics.md "LoRA adapters".  int8 (fp16 = 0): A (r x k) and B (n x r) are
 * int8 matrices in the CIM tile layout (hc_weights, block of 32 inputs where the width allows,
 * else one scale per row), the adapter scale folded into B's scales; A takes the ROM product's
 * int8 activations, its output is re-quantized with one scale per token (group r) for B.
 * fp16 (fp16 = 1): A, B hold fp16 values (given here as the exactly equal float32 numbers, row-major
 * (r, k) and (n, r)); both products are 16-lane float32 dots (the vector unit's order) of the
 * float32 activations x.                                                                         */
#define HC_ADAPTER_BLOCK 32
/* int8 B of rank r < HC_ADAPTER_BLOCK may be held as one zero-padded block of HC_ADAPTER_BLOCK inputs
 * (b->k == 32): the same codes and the same one scale per row, through the faster block kernels;
 * A x is then zero-padded to 32 values before it is quantized (amax and codes unchanged). */
typedef struct {
    int64_t n, k, rank;
    int fp16;
    const hc_weights *a, *b;  /* int8 form */
    const float *a32, *b32;   /* fp16 form */
} hc_adapter;

#define HC_ADAPTERS_MAX 8
/* The adapters applied to one matrix, in this order (n = 0: none). */
typedef struct {
    int n;
    const hc_adapter *a[HC_ADAPTERS_MAX];
} hc_adapter_slot;

int hc_adapter_check(const hc_adapter *ad);
/* y[i*ldy + j] += (B (A x_i))_j for m tokens, j < n.  int8 form: q int8 (m, k) with act_scales
 * (m, k / act_group), the ROM product's activations (x unused, may be NULL); fp16 form: x float32
 * (m, k) (q, act_scales unused).  Single-threaded; HC_EINVAL for bad sizes, HC_ENONFINITE when the
 * intermediate A x is not finite. */
int hc_adapter_apply(const hc_adapter *ad, const int8_t *q, const float *act_scales, int64_t act_group,
                     const float *x, int64_t m, float *y, int64_t ldy);
/* Every adapter of the slot in order (slot NULL: nothing). */
int hc_adapter_slot_apply(const hc_adapter_slot *slot, const int8_t *q, const float *act_scales,
                          int64_t act_group, const float *x, int64_t m, float *y, int64_t ldy);
/* ==== the benchmarks' bandwidth peer (csrc/hc_bench.c) — not a chip kernel ====================
 * A plain streaming read of nbytes at p (several interleaved streams, software prefetch), split
 * over n_threads as the CIM products split their bytes (at most one thread per
 * HC_CIM_BYTES_PER_THREAD; two threads from opposite ends).  Returns a checksum so that it cannot
 * be elided. */
uint64_t hc_stream_read(const uint8_t *p, int64_t nbytes, int n_threads);

/* ==== decoder layers (csrc/hc_chip.c) ==========================================================
 * The transformer layers of a decoder as one compiled pass: for t tokens at positions
 * [start, start+t) every layer runs rmsnorm -> quantize -> CIM q|k|v (+ biases) (-> q/k norms) ->
 * RoPE -> KV store -> attention -> CIM o (-> post-norm) (+ residual) -> rmsnorm -> quantize ->
 * CIM gate|up -> act(gate)*up -> CIM down (-> post-norm) (+ residual), each step one call of the
 * kernel above, in the order of the interpreted chip (hcemu.chip.Chip), so the values are
 * bit-identical to it.  A mixture-of-experts layer replaces the FFN by: CIM router -> routing ->
 * per fired expert (ascending) its gate|up, act, down on the rows routed to it -> weighted sum in
 * routing order (+ the shared expert, gated).  The caller owns every array.                     */
typedef struct {
    const float *attn_norm, *ffn_norm; /* (d_model,) */
    const hc_weights *wq, *wk, *wv;    /* wk == wv == NULL: wq holds q, k, v stacked (q_dim + 2 kv_dim rows) */
    const hc_weights *wo;              /* (d_model x q_dim) */
    const hc_weights *wg, *wu;         /* wu == NULL: wg holds gate, up stacked (2 d_ff rows) */
    const hc_weights *wd;              /* (d_model x d_ff) */
    /* this layer's KV cache (layout of hc_kv_store_*): int8 codes + fp16 scales, or fp16 values */
    int8_t *k_codes, *v_codes;
    uint16_t *k_scales, *v_scales;
    uint16_t *k16, *v16;
    /* block kinds beyond Llama (NULL / 0: absent); docs/chip.md "Block kinds" */
    const float *bq, *bk, *bv;                   /* Q/K/V biases (q_dim), (kv_dim), (kv_dim) */
    const float *q_norm, *k_norm;                /* RMSNorm of q and k: (head_dim) per head, or whole */
    const float *attn_post_norm, *ffn_post_norm; /* RMSNorm of the attention / FFN output (d_model) */
    const float *rope_cos, *rope_sin;            /* this layer's RoPE tables; NULL: the decoder's */
    int64_t window;                              /* sliding window in keys; 0: full causal */
    /* mixture of experts (the decoder's n_experts > 0): wg/wu/wd are then the shared expert's, or NULL */
    const hc_weights *router;                    /* (n_experts x d_model) */
    const hc_weights *const *exp_gate;           /* [n_experts]: gate, or gate|up stacked when exp_up is NULL */
    const hc_weights *const *exp_up;             /* [n_experts], or NULL */
    const hc_weights *const *exp_down;           /* [n_experts] (d_model x d_ff_expert) */
    const hc_weights *shared_gate;               /* (1 x d_model): the shared expert's sigmoid gate, or NULL */
} hc_layer;

typedef struct {
    int64_t n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff;
    float norm_eps;
    int64_t act_group_d, act_group_q, act_group_f; /* activation groups of d_model, q_dim, d_ff inputs */
    int kv_int8;                                   /* 1: int8 KV cache, 0: fp16 */
    int64_t kv_capacity;                           /* token slots per layer */
    const float *rope_cos, *rope_sin;              /* (kv_capacity, head_dim / 2) */
    const hc_layer *layers;                        /* [n_layers] */
    /* block kinds beyond Llama (0: Llama's) */
    int rope_neox;                                 /* 1: RoPE pairs (j, j + hd/2) */
    int ffn_gelu;                                  /* 1: GeGLU (tanh GELU), 0: SwiGLU */
    int qk_norm_full;                              /* 1: q_norm/k_norm span the whole q/k, 0: one head */
    float attn_scale, attn_softcap;                /* score scale (0: 1/sqrt(hd)); soft-cap (0: none) */
    /* mixture of experts (0: dense FFN layers) */
    int64_t n_experts, n_experts_used, d_ff_expert, d_ff_shared;
    int64_t act_group_fe, act_group_fs;            /* activation groups of the experts' and shared down inputs */
    int expert_norm;                               /* renormalize the top-k weights */
    float expert_scale;                            /* routing weights times this */
    int32_t *routes;                               /* out: (t, n_layers, n_experts_used) experts per token */
    /* LoRA adapters: NULL, or [n_layers * 7] slots in the order q, k, v, o, gate, up, down; each
     * slot's adapters are added to its matrix's product (docs/chip.md "LoRA adapters") */
    const hc_adapter_slot *adapters;
    /* expert parallelism: an expert whose exp_gate and exp_down are NULL is held by another die;
     * remote_expert(remote_ctx, layer, e, h, n, out) receives the n rows of the layer's normalized FFN
     * input routed to it (h (n, d_model) float32, the layer's own index) and writes the expert's output
     * into out (n, d_model); nonzero fails the pass with that status.  NULL: every expert is held here. */
    int (*remote_expert)(void *ctx, int64_t layer, int64_t expert, const float *h, int64_t n, float *out);
    void *remote_ctx;
} hc_decoder;

enum {
    HC_DEC_RMSNORM, HC_DEC_QUANTIZE, HC_DEC_CIM_QKV, HC_DEC_ROPE, HC_DEC_KV_STORE, HC_DEC_ATTENTION,
    HC_DEC_CIM_O, HC_DEC_CIM_GATE_UP, HC_DEC_SILU_MUL, HC_DEC_CIM_DOWN, HC_DEC_ADD, HC_DEC_ADAPTER,
    HC_DEC_OP_COUNT
};
/* Optional per-call record: where a failure happened, and (profile != 0) seconds and calls per op. */
typedef struct {
    int profile;
    int64_t failed_layer, failed_op; /* -1 when the call succeeded */
    double seconds;                  /* whole calls (kernels plus the glue between them) ... */
    int64_t calls;                   /* ... and how many */
    double op_seconds[HC_DEC_OP_COUNT];
    int64_t op_calls[HC_DEC_OP_COUNT];
} hc_decoder_trace;

const char *hc_decoder_op_name(int op);
/* HC_OK when the description is self-consistent (sizes, groups, matrix shapes, pointers). */
int hc_decoder_check(const hc_decoder *m);
/* x float32 (t, d_model) is the residual stream, updated in place.  K/V of the t tokens are
 * stored at [start, start+t) of every layer.  HC_ECAPACITY if start + t > kv_capacity; other
 * statuses as the kernels return them (the trace names the layer and op). */
int hc_decoder_layers(const hc_decoder *m, float *x, int64_t t, int64_t start, int n_threads,
                      hc_decoder_trace *trace);

#ifdef __cplusplus
}
#endif
#endif /* HCEMU_H */
