/*
 * hc_chip.c — the transformer layers of a decoder as one compiled pass.
 *
 * Runs, for t tokens at positions [start, start+t), every layer's dataflow through the same kernels
 * and in the same order as the interpreted chip (hcemu/chip/chip.py, Chip._layers_interpreted):
 *   h = rmsnorm(x); (q8, s) = quantize(h); q|k|v = CIM(q8, s) [+ biases] [q, k = rmsnorm(q), rmsnorm(k)];
 *   rope(q), rope(k); store k, v in the SRAM KV cache; a = attention(q); o = CIM_linear(a)
 *   [o = rmsnorm(o)]; x += o; h = rmsnorm(x); (q8, s) = quantize(h); g|u = CIM(q8, s);
 *   g = act(g) * u; o = CIM_linear(g) [o = rmsnorm(o)]; x += o.
 * (bracketed steps: the block kinds a layer has, docs/chip.md "Block kinds").
 * Each operation is one call of the kernel the interpreted path calls, so values are bit-identical
 * to it.  What this adds is only that no Python runs between the kernels (at decode a SmolLM2 step is
 * about 450 kernel calls, and the interpreter between them cost 15-20% of the step).
 * Documented in docs/chip.md.
 */
#include "hcemu.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *hc_decoder_op_name(int op) {
    static const char *names[HC_DEC_OP_COUNT] = {"rmsnorm", "quantize", "cim_qkv", "rope", "kv_store",
                                                 "attention", "cim_o", "cim_gate_up", "silu_mul",
                                                 "cim_down", "add", "adapter"};
    return op >= 0 && op < HC_DEC_OP_COUNT ? names[op] : "?";
}

/* Copy columns [c0, c0+cols) of y (t, ld) into dst (t, cols). */
/* The adapter slot of layer i's matrix mat (0..6: q, k, v, o, gate, up, down), or NULL when none. */
static const hc_adapter_slot *slot_of(const hc_decoder *m, int64_t i, int mat) {
    const hc_adapter_slot *s = m->adapters ? &m->adapters[i * 7 + mat] : NULL;
    return s && s->n > 0 ? s : NULL;
}

static void take_cols(const float *y, int64_t t, int64_t ld, int64_t c0, int64_t cols, float *dst) {
    for (int64_t i = 0; i < t; i++) memcpy(dst + i * cols, y + i * ld + c0, (size_t)cols * sizeof(float));
}

/* A gated FFN's matrices fit widths d -> f -> d (gate|up stacked when wu is NULL). */
static int ffn_fits(const hc_weights *wg, const hc_weights *wu, const hc_weights *wd, int64_t d, int64_t f) {
    if (wd->n != d || wd->k != f) return 0;
    return wu ? (wg->n == f && wu->n == f && wg->k == d && wu->k == d) : (wg->n == 2 * f && wg->k == d);
}

static int ffn_groups_ok(const hc_weights *wg, const hc_weights *wu, const hc_weights *wd, int64_t ga_in,
                         int64_t ga_down) {
    return hc_cim_group_ok(wg, ga_in) && (!wu || hc_cim_group_ok(wu, ga_in)) && hc_cim_group_ok(wd, ga_down);
}

int hc_decoder_check(const hc_decoder *m) {
    if (!m || !m->layers || !m->rope_cos || !m->rope_sin) return HC_EINVAL;
    if (m->n_layers < 1 || m->d_model < 1 || m->n_heads < 1 || m->n_kv_heads < 1 || m->head_dim < 2 ||
        (m->head_dim & 1) || m->d_ff < 1 || m->n_heads % m->n_kv_heads || m->kv_capacity < 1 ||
        m->head_dim > HC_ATTN_MAX_HEAD_DIM)
        return HC_EINVAL;
    const int64_t d = m->d_model, qd = m->n_heads * m->head_dim, kvd = m->n_kv_heads * m->head_dim,
                  f = m->d_ff;
    if (m->act_group_d < 1 || d % m->act_group_d || m->act_group_q < 1 || qd % m->act_group_q ||
        m->act_group_f < 1 || f % m->act_group_f)
        return HC_EINVAL;
    const int moe = m->n_experts > 0;
    if (moe && (m->n_experts_used < 1 || m->n_experts_used > m->n_experts || m->d_ff_expert < 1 ||
                m->d_ff_shared < 0 || m->act_group_fe < 1 || m->d_ff_expert % m->act_group_fe ||
                (m->d_ff_shared && (m->act_group_fs < 1 || m->d_ff_shared % m->act_group_fs)) ||
                !(m->expert_scale > 0.0f) || !m->routes))
        return HC_EINVAL;
    for (int64_t i = 0; i < m->n_layers; i++) {
        const hc_layer *L = &m->layers[i];
        if (!L->attn_norm || !L->ffn_norm || !L->wq || !L->wo) return HC_EINVAL;
        const int fused_qkv = !L->wk && !L->wv;
        if (!fused_qkv && (!L->wk || !L->wv)) return HC_EINVAL;
        if (fused_qkv ? (L->wq->n != qd + 2 * kvd || L->wq->k != d)
                      : (L->wq->n != qd || L->wk->n != kvd || L->wv->n != kvd || L->wq->k != d ||
                         L->wk->k != d || L->wv->k != d))
            return HC_EINVAL;
        if (L->wo->n != d || L->wo->k != qd) return HC_EINVAL;
        /* every product's activation group fits its weights' tiles (as the CIM entry points require) */
        if (!hc_cim_group_ok(L->wq, m->act_group_d) || (L->wk && !hc_cim_group_ok(L->wk, m->act_group_d)) ||
            (L->wv && !hc_cim_group_ok(L->wv, m->act_group_d)) || !hc_cim_group_ok(L->wo, m->act_group_q))
            return HC_EINVAL;
        if (!moe) {
            if (!L->wg || !L->wd || !ffn_fits(L->wg, L->wu, L->wd, d, f) || !ffn_groups_ok(L->wg, L->wu, L->wd,
                                                                                          m->act_group_d, m->act_group_f))
                return HC_EINVAL;
        } else {
            if (!L->router || L->router->n != m->n_experts || L->router->k != d || !L->exp_gate || !L->exp_down)
                return HC_EINVAL;
            if (!hc_cim_group_ok(L->router, m->act_group_d)) return HC_EINVAL;
            for (int64_t e = 0; e < m->n_experts; e++) {
                if (!L->exp_gate[e] && !L->exp_down[e] && (!L->exp_up || !L->exp_up[e]) && m->remote_expert)
                    continue; /* held by another die */
                if (!L->exp_gate[e] || !L->exp_down[e] ||
                    !ffn_fits(L->exp_gate[e], L->exp_up ? L->exp_up[e] : NULL, L->exp_down[e], d, m->d_ff_expert) ||
                    !ffn_groups_ok(L->exp_gate[e], L->exp_up ? L->exp_up[e] : NULL, L->exp_down[e], m->act_group_d,
                                   m->act_group_fe))
                    return HC_EINVAL;
            }
            if (m->d_ff_shared ? (!L->wg || !L->wd || !ffn_fits(L->wg, L->wu, L->wd, d, m->d_ff_shared) ||
                                  !ffn_groups_ok(L->wg, L->wu, L->wd, m->act_group_d, m->act_group_fs))
                               : (L->wg || L->wu || L->wd || L->shared_gate))
                return HC_EINVAL;
            if (L->shared_gate && (L->shared_gate->n != 1 || L->shared_gate->k != d ||
                                   !hc_cim_group_ok(L->shared_gate, m->act_group_d)))
                return HC_EINVAL;
        }
        if (m->adapters) { /* no adapters on a mixture of experts' FFN (experts or shared expert) */
            const int64_t n_out[7] = {qd, kvd, kvd, d, f, f, d}, n_in[7] = {d, d, d, qd, d, d, f};
            for (int mat = 0; mat < 7; mat++) {
                const hc_adapter_slot *s = &m->adapters[i * 7 + mat];
                if (s->n < 0 || s->n > HC_ADAPTERS_MAX || (moe && mat >= 4 && s->n)) return HC_EINVAL;
                for (int j = 0; j < s->n; j++)
                    if (hc_adapter_check(s->a[j]) || s->a[j]->n != n_out[mat] || s->a[j]->k != n_in[mat])
                        return HC_EINVAL;
            }
        }
        if (m->kv_int8 ? (!L->k_codes || !L->v_codes || !L->k_scales || !L->v_scales) : (!L->k16 || !L->v16))
            return HC_EINVAL;
        if ((!L->bq) != (!L->bk) || (!L->bq) != (!L->bv) || (!L->q_norm) != (!L->k_norm) ||
            (!L->rope_cos) != (!L->rope_sin) || L->window < 0)
            return HC_EINVAL;
    }
    if (!(m->attn_scale >= 0.0f) || !(m->attn_softcap >= 0.0f)) return HC_EINVAL;
    return HC_OK;
}

/* Run one kernel call as op `op` of layer `layer_`: time it when profiling; on failure record where
 * and do `on_fail` (goto a cleanup label, or return). */
#define HC_TIMED(op, call, layer_, on_fail)                                                              \
    do {                                                                                                 \
        double t0_ = prof ? now_s() : 0.0;                                                               \
        rc = (call);                                                                                     \
        if (prof) {                                                                                      \
            trace->op_seconds[op] += now_s() - t0_;                                                      \
            trace->op_calls[op] += 1;                                                                    \
        }                                                                                                \
        if (rc) {                                                                                        \
            if (trace) {                                                                                 \
                trace->failed_layer = layer_;                                                            \
                trace->failed_op = op;                                                                   \
            }                                                                                            \
            on_fail;                                                                                     \
        }                                                                                                \
    } while (0)
#define TIMED(op, call) HC_TIMED(op, call, i, goto done)

#define STEP(op, call) HC_TIMED(op, call, layer, return rc)

/* The adapter slots of a dense layer's FFN (NULL: none): x is the FFN's float input (m, d); q8, sc
 * scratch for the down product's quantized input (m, f), (m, f / group). */
typedef struct {
    const hc_adapter_slot *gate, *up, *down;
    const float *x;
    int8_t *q8;
    float *sc;
} hc_ffn_adapters;

/* Gated FFN of m rows of quantized input (q8, sc): o = W_d (act(W_g x) * (W_u x)), width f.
 * Scratch: gu (m, 2f), g (m, f), u (m, f). */
static int gated_ffn(const hc_decoder *M, const hc_weights *wg, const hc_weights *wu, const hc_weights *wd,
                     const int8_t *q8, const float *sc, int64_t m, int64_t f, int64_t group, float *gu, float *gs,
                     float *us, float *o, const hc_ffn_adapters *ad, int n_threads, int prof,
                     hc_decoder_trace *trace, int64_t layer) {
    float *g = gs, *u = us;
    int rc;
    if (!wu) { /* gate and up stacked in one matrix */
        STEP(HC_DEC_CIM_GATE_UP, hc_cim_matmul(wg, q8, sc, m, M->act_group_d, gu, n_threads));
        if (ad && ad->gate)
            STEP(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad->gate, q8, sc, M->act_group_d, ad->x, m, gu, 2 * f));
        if (ad && ad->up)
            STEP(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad->up, q8, sc, M->act_group_d, ad->x, m, gu + f, 2 * f));
        if (m == 1) {
            g = gu;
            u = gu + f;
        } else {
            take_cols(gu, m, 2 * f, 0, f, g);
            take_cols(gu, m, 2 * f, f, f, u);
        }
    } else {
        STEP(HC_DEC_CIM_GATE_UP, hc_cim_matmul(wg, q8, sc, m, M->act_group_d, g, n_threads));
        STEP(HC_DEC_CIM_GATE_UP, hc_cim_matmul(wu, q8, sc, m, M->act_group_d, u, n_threads));
        if (ad && ad->gate) STEP(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad->gate, q8, sc, M->act_group_d, ad->x, m, g, f));
        if (ad && ad->up) STEP(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad->up, q8, sc, M->act_group_d, ad->x, m, u, f));
    }
    STEP(HC_DEC_SILU_MUL, M->ffn_gelu ? hc_gelu_mul_f32(g, u, m * f, g) : hc_silu_mul_f32(g, u, m * f, g));
    if (ad && ad->down) { /* quantize once for the ROM product and the adapters (= hc_cim_linear) */
        STEP(HC_DEC_QUANTIZE, hc_quantize_act(g, m, f, group, ad->q8, ad->sc));
        STEP(HC_DEC_CIM_DOWN, hc_cim_matmul(wd, ad->q8, ad->sc, m, group, o, n_threads));
        STEP(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad->down, ad->q8, ad->sc, group, g, m, o, wd->n));
    } else {
        STEP(HC_DEC_CIM_DOWN, hc_cim_linear(wd, g, m, group, o, n_threads));
    }
    return HC_OK;
}

/* Mixture-of-experts FFN of t rows of quantized input (q8 (t, d), sc (t, d / act_group_d)) into
 * o (t, d); token r's experts go to routes[r * stride .. + k].  Same steps and order as
 * Chip._moe_interpreted. */
static int moe_ffn(const hc_decoder *M, const hc_layer *L, const float *h, const int8_t *q8, const float *sc,
                   int64_t t, float *o, int32_t *routes_out, int64_t stride, int n_threads, int prof, hc_decoder_trace *trace,
                   int64_t layer) {
    const int64_t d = M->d_model, E = M->n_experts, k = M->n_experts_used, fe = M->d_ff_expert,
                  fs = M->d_ff_shared, ng = d / M->act_group_d, fw = fe > fs ? fe : fs;
    /* scratch (floats): logits (t,E), w (t,k), wcol (t), gsc (t,ng), gu (t,2fw), g (t,fw), u (t,fw),
     * ye (t,d), ys (k,t,d), shared out (t,d), gh (t,d); ints: rows, slots (t); bytes: gq8 (t,d) */
    const size_t nf = (size_t)t * (size_t)(E + k + 1 + ng + 4 * fw + d + k * d + d + d);
    char *buf = malloc(nf * sizeof(float) + 2 * (size_t)t * sizeof(int64_t) + (size_t)(t * k) * sizeof(int32_t) +
                       (size_t)t * (size_t)d + 64);
    if (!buf) return HC_ENOMEM;
    /* the int64 arrays first: malloc's alignment holds for them whatever the float count (odd or even) */
    int64_t *rows = (int64_t *)buf, *slots = rows + t;
    float *logits = (float *)(slots + t), *w = logits + t * E, *wcol = w + t * k, *gsc = wcol + t, *gu = gsc + t * ng,
          *gs = gu + t * 2 * fw, *us = gs + t * fw, *ye = us + t * fw, *ys = ye + t * d, *so = ys + k * t * d;
    float *gh = so + t * d;
    int32_t *routes = (int32_t *)(gh + t * d);
    int8_t *gq8 = (int8_t *)(routes + t * k);
    int rc = HC_OK;
#define MSTEP(op, call) HC_TIMED(op, call, layer, goto out)
    MSTEP(HC_DEC_CIM_GATE_UP, hc_cim_matmul(L->router, q8, sc, t, M->act_group_d, logits, n_threads));
    MSTEP(HC_DEC_ADD, hc_moe_route_f32(logits, t, E, (int)k, M->expert_norm, M->expert_scale, routes, w));
    for (int64_t r = 0; r < t; r++) memcpy(routes_out + r * stride, routes + r * k, (size_t)k * sizeof(int32_t));
    for (int64_t e = 0; e < E; e++) {
        int64_t n = 0;
        for (int64_t r = 0; r < t; r++)
            for (int64_t j = 0; j < k; j++)
                if (routes[r * k + j] == (int32_t)e) {
                    rows[n] = r;
                    slots[n++] = j;
                }
        if (!n) continue;
        if (!L->exp_gate[e]) { /* held by another die: its rows of h go there, its output comes back */
            for (int64_t a = 0; a < n; a++) memcpy(gh + a * d, h + rows[a] * d, (size_t)d * sizeof(float));
            if (M->remote_expert(M->remote_ctx, layer, e, gh, n, ye)) {
                rc = HC_EREMOTE;
                goto out;
            }
            for (int64_t a = 0; a < n; a++)
                memcpy(ys + (slots[a] * t + rows[a]) * d, ye + a * d, (size_t)d * sizeof(float));
            continue;
        }
        for (int64_t a = 0; a < n; a++) {
            memcpy(gq8 + a * d, q8 + rows[a] * d, (size_t)d);
            memcpy(gsc + a * ng, sc + rows[a] * ng, (size_t)ng * sizeof(float));
        }
        rc = gated_ffn(M, L->exp_gate[e], L->exp_up ? L->exp_up[e] : NULL, L->exp_down[e], gq8, gsc, n, fe,
                       M->act_group_fe, gu, gs, us, ye, NULL, n_threads, prof, trace, layer);
        if (rc) goto out;
        for (int64_t a = 0; a < n; a++)
            memcpy(ys + (slots[a] * t + rows[a]) * d, ye + a * d, (size_t)d * sizeof(float));
    }
    memset(o, 0, (size_t)(t * d) * sizeof(float));
    for (int64_t j = 0; j < k; j++) {
        for (int64_t r = 0; r < t; r++) wcol[r] = w[r * k + j];
        MSTEP(HC_DEC_ADD, hc_axpy_rows_f32(o, ys + j * t * d, wcol, t, d));
    }
    if (fs) {
        rc = gated_ffn(M, L->wg, L->wu, L->wd, q8, sc, t, fs, M->act_group_fs, gu, gs, us, so, NULL, n_threads, prof,
                       trace, layer);
        if (rc) goto out;
        if (L->shared_gate) {
            MSTEP(HC_DEC_CIM_GATE_UP, hc_cim_matmul(L->shared_gate, q8, sc, t, M->act_group_d, wcol, n_threads));
            MSTEP(HC_DEC_SILU_MUL, hc_sigmoid_f32(wcol, t));
            MSTEP(HC_DEC_ADD, hc_axpy_rows_f32(o, so, wcol, t, d));
        } else {
            MSTEP(HC_DEC_ADD, hc_add_f32(o, so, t * d));
        }
    }
#undef MSTEP
out:
    free(buf);
    return rc;
}

int hc_decoder_layers(const hc_decoder *m, float *x, int64_t t, int64_t start, int n_threads,
                      hc_decoder_trace *trace) {
    int rc = hc_decoder_check(m);
    if (trace) trace->failed_layer = trace->failed_op = -1;
    if (rc) return rc;
    if (!x || t < 1 || start < 0 || n_threads < 1 || n_threads > HC_MAX_THREADS) return HC_EINVAL;
    if (start + t > m->kv_capacity) return HC_ECAPACITY;
    const int prof = trace && trace->profile;
    const double t_call = prof ? now_s() : 0.0;
    const int64_t d = m->d_model, H = m->n_heads, Hkv = m->n_kv_heads, hd = m->head_dim, f = m->d_ff;
    const int64_t qd = H * hd, kvd = Hkv * hd, widest = d > qd ? (d > f ? d : f) : (qd > f ? qd : f);
    /* scratch (floats): h (t,d), qkv (t,qd+2kvd), q (t,qd), k (t,kvd), v (t,kvd), att (t,qd),
     * o (t,d), gu (t,2f), g (t,f), u (t,f), act scales (t,widest); then int8 codes (t, widest) */
    const size_t nf = (size_t)t * (size_t)(d + qd + 2 * kvd + qd + 2 * kvd + qd + d + 2 * f + 2 * f + widest);
    char *buf = malloc(nf * sizeof(float) + (size_t)t * (size_t)widest + 64);
    if (!buf) return HC_ENOMEM;
    float *h = (float *)buf, *qkv = h + t * d, *qs = qkv + t * (qd + 2 * kvd), *ks = qs + t * qd,
          *vs = ks + t * kvd, *att = vs + t * kvd, *o = att + t * qd, *gu = o + t * d, *gs = gu + t * 2 * f,
          *us = gs + t * f, *sc = us + t * f;
    int8_t *q8 = (int8_t *)(sc + t * d);
    int64_t i = 0;
    for (i = 0; i < m->n_layers; i++) {
        const hc_layer *L = &m->layers[i];
        float *q = qs, *k = ks, *v = vs;
        const float *cos_t = (L->rope_cos ? L->rope_cos : m->rope_cos) + start * (hd / 2),
                    *sin_t = (L->rope_sin ? L->rope_sin : m->rope_sin) + start * (hd / 2);
        const hc_attn_opts opts = {m->attn_scale, m->attn_softcap, L->window};
        const hc_adapter_slot *aq = slot_of(m, i, 0), *ak = slot_of(m, i, 1), *av = slot_of(m, i, 2),
                              *ao = slot_of(m, i, 3);
        const hc_ffn_adapters fad = {slot_of(m, i, 4), slot_of(m, i, 5), slot_of(m, i, 6), h, q8, sc};
        /* attention block */
        TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(x, L->attn_norm, t, d, m->norm_eps, h));
        TIMED(HC_DEC_QUANTIZE, hc_quantize_act(h, t, d, m->act_group_d, q8, sc));
        if (!L->wk) { /* q, k, v stacked in one matrix */
            TIMED(HC_DEC_CIM_QKV, hc_cim_matmul(L->wq, q8, sc, t, m->act_group_d, qkv, n_threads));
            const int64_t ld = qd + 2 * kvd;
            if (aq) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(aq, q8, sc, m->act_group_d, h, t, qkv, ld));
            if (ak) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ak, q8, sc, m->act_group_d, h, t, qkv + qd, ld));
            if (av) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(av, q8, sc, m->act_group_d, h, t, qkv + qd + kvd, ld));
            if (t == 1) { /* one token: q, k, v are contiguous pieces of the product's row */
                q = qkv;
                k = qkv + qd;
                v = qkv + qd + kvd;
            } else {
                take_cols(qkv, t, qd + 2 * kvd, 0, qd, q);
                take_cols(qkv, t, qd + 2 * kvd, qd, kvd, k);
                take_cols(qkv, t, qd + 2 * kvd, qd + kvd, kvd, v);
            }
        } else {
            TIMED(HC_DEC_CIM_QKV, hc_cim_matmul(L->wq, q8, sc, t, m->act_group_d, q, n_threads));
            TIMED(HC_DEC_CIM_QKV, hc_cim_matmul(L->wk, q8, sc, t, m->act_group_d, k, n_threads));
            TIMED(HC_DEC_CIM_QKV, hc_cim_matmul(L->wv, q8, sc, t, m->act_group_d, v, n_threads));
            if (aq) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(aq, q8, sc, m->act_group_d, h, t, q, qd));
            if (ak) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ak, q8, sc, m->act_group_d, h, t, k, kvd));
            if (av) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(av, q8, sc, m->act_group_d, h, t, v, kvd));
        }
        if (L->bq) {
            TIMED(HC_DEC_ADD, hc_add_rows_f32(q, L->bq, t, qd));
            TIMED(HC_DEC_ADD, hc_add_rows_f32(k, L->bk, t, kvd));
            TIMED(HC_DEC_ADD, hc_add_rows_f32(v, L->bv, t, kvd));
        }
        if (L->q_norm) {
            const int64_t rq = m->qk_norm_full ? t : t * H, rk = m->qk_norm_full ? t : t * Hkv;
            TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(q, L->q_norm, rq, t * qd / rq, m->norm_eps, q));
            TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(k, L->k_norm, rk, t * kvd / rk, m->norm_eps, k));
        }
        TIMED(HC_DEC_ROPE, hc_rope_style_f32(q, cos_t, sin_t, t, H, hd, m->rope_neox, q));
        TIMED(HC_DEC_ROPE, hc_rope_style_f32(k, cos_t, sin_t, t, Hkv, hd, m->rope_neox, k));
        if (m->kv_int8) {
            TIMED(HC_DEC_KV_STORE, hc_kv_store_i8(k, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->k_codes,
                                                  L->k_scales));
            TIMED(HC_DEC_KV_STORE, hc_kv_store_i8(v, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->v_codes,
                                                  L->v_scales));
            TIMED(HC_DEC_ATTENTION, hc_attn_i8_opts(q, t, (int)H, (int)Hkv, (int)hd, start, L->k_codes,
                                                    L->k_scales, L->v_codes, L->v_scales, m->kv_capacity, &opts,
                                                    att));
        } else {
            TIMED(HC_DEC_KV_STORE, hc_kv_store_f16(k, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->k16));
            TIMED(HC_DEC_KV_STORE, hc_kv_store_f16(v, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->v16));
            TIMED(HC_DEC_ATTENTION, hc_attn_f16_opts(q, t, (int)H, (int)Hkv, (int)hd, start, L->k16, L->v16,
                                                     m->kv_capacity, &opts, att));
        }
        if (ao) { /* quantize once for the ROM product and the adapters (= hc_cim_linear) */
            TIMED(HC_DEC_QUANTIZE, hc_quantize_act(att, t, qd, m->act_group_q, q8, sc));
            TIMED(HC_DEC_CIM_O, hc_cim_matmul(L->wo, q8, sc, t, m->act_group_q, o, n_threads));
            TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ao, q8, sc, m->act_group_q, att, t, o, d));
        } else {
            TIMED(HC_DEC_CIM_O, hc_cim_linear(L->wo, att, t, m->act_group_q, o, n_threads));
        }
        if (L->attn_post_norm) TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(o, L->attn_post_norm, t, d, m->norm_eps, o));
        TIMED(HC_DEC_ADD, hc_add_f32(x, o, t * d));
        /* feed-forward block */
        TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(x, L->ffn_norm, t, d, m->norm_eps, h));
        TIMED(HC_DEC_QUANTIZE, hc_quantize_act(h, t, d, m->act_group_d, q8, sc));
        rc = m->n_experts ? moe_ffn(m, L, h, q8, sc, t, o, m->routes + i * m->n_experts_used,
                                    m->n_layers * m->n_experts_used, n_threads, prof, trace, i)
                          : gated_ffn(m, L->wg, L->wu, L->wd, q8, sc, t, f, m->act_group_f, gu, gs, us, o,
                                      fad.gate || fad.up || fad.down ? &fad : NULL, n_threads,
                                      prof, trace, i);
        if (rc) goto done;
        if (L->ffn_post_norm) TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(o, L->ffn_post_norm, t, d, m->norm_eps, o));
        TIMED(HC_DEC_ADD, hc_add_f32(x, o, t * d));
    }
done:
    free(buf);
    if (prof) {
        trace->seconds += now_s() - t_call;
        trace->calls += 1;
    }
    return rc;
}
