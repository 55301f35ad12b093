/*
 * hc_chip.c — the transformer layers of a Llama-family decoder as one compiled pass.
 *
 * Runs, for t tokens at positions [start, start+t), every layer's dataflow through the same kernels
 * and in the same order as the interpreted chip (hcemu/chip/chip.py, Chip._layers_interpreted):
 *   h = rmsnorm(x); (q8, s) = quantize(h); q|k|v = CIM(q8, s); rope(q), rope(k); store k, v in
 *   the SRAM KV cache; a = attention(q); x += CIM_linear(a); h = rmsnorm(x); (q8, s) = quantize(h);
 *   g|u = CIM(q8, s); g = silu(g) * u; x += CIM_linear(g).
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
    for (int64_t i = 0; i < m->n_layers; i++) {
        const hc_layer *L = &m->layers[i];
        if (!L->attn_norm || !L->ffn_norm || !L->wq || !L->wo || !L->wg || !L->wd) return HC_EINVAL;
        const int fused_qkv = !L->wk && !L->wv, fused_gu = !L->wu;
        if (!fused_qkv && (!L->wk || !L->wv)) return HC_EINVAL;
        if (fused_qkv ? (L->wq->n != qd + 2 * kvd || L->wq->k != d)
                      : (L->wq->n != qd || L->wk->n != kvd || L->wv->n != kvd || L->wq->k != d ||
                         L->wk->k != d || L->wv->k != d))
            return HC_EINVAL;
        if (L->wo->n != d || L->wo->k != qd || L->wd->n != d || L->wd->k != f) return HC_EINVAL;
        if (fused_gu ? (L->wg->n != 2 * f || L->wg->k != d)
                     : (L->wg->n != f || L->wu->n != f || L->wg->k != d || L->wu->k != d))
            return HC_EINVAL;
        if (m->adapters) {
            const int64_t n_out[7] = {qd, kvd, kvd, d, f, f, d}, n_in[7] = {d, d, d, qd, d, d, f};
            for (int mat = 0; mat < 7; mat++) {
                const hc_adapter_slot *s = &m->adapters[i * 7 + mat];
                if (s->n < 0 || s->n > HC_ADAPTERS_MAX) return HC_EINVAL;
                for (int j = 0; j < s->n; j++)
                    if (hc_adapter_check(s->a[j]) || s->a[j]->n != n_out[mat] || s->a[j]->k != n_in[mat])
                        return HC_EINVAL;
            }
        }
        if (m->kv_int8 ? (!L->k_codes || !L->v_codes || !L->k_scales || !L->v_scales) : (!L->k16 || !L->v16))
            return HC_EINVAL;
    }
    return HC_OK;
}

#define TIMED(op, call)                                                                                  \
    do {                                                                                                 \
        double t0_ = prof ? now_s() : 0.0;                                                               \
        rc = (call);                                                                                     \
        if (prof) {                                                                                      \
            trace->op_seconds[op] += now_s() - t0_;                                                      \
            trace->op_calls[op] += 1;                                                                    \
        }                                                                                                \
        if (rc) {                                                                                        \
            if (trace) {                                                                                 \
                trace->failed_layer = i;                                                                 \
                trace->failed_op = op;                                                                   \
            }                                                                                            \
            goto done;                                                                                   \
        }                                                                                                \
    } while (0)

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
    const float *cos_t = m->rope_cos + start * (hd / 2), *sin_t = m->rope_sin + start * (hd / 2);
    int64_t i = 0;
    for (i = 0; i < m->n_layers; i++) {
        const hc_layer *L = &m->layers[i];
        float *q = qs, *k = ks, *v = vs, *g = gs, *u = us;
        const hc_adapter_slot *aq = slot_of(m, i, 0), *ak = slot_of(m, i, 1), *av = slot_of(m, i, 2),
                              *ao = slot_of(m, i, 3), *ag = slot_of(m, i, 4), *au = slot_of(m, i, 5),
                              *ad = slot_of(m, i, 6);
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
        TIMED(HC_DEC_ROPE, hc_rope_f32(q, cos_t, sin_t, t, H, hd, q));
        TIMED(HC_DEC_ROPE, hc_rope_f32(k, cos_t, sin_t, t, Hkv, hd, k));
        if (m->kv_int8) {
            TIMED(HC_DEC_KV_STORE, hc_kv_store_i8(k, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->k_codes,
                                                  L->k_scales));
            TIMED(HC_DEC_KV_STORE, hc_kv_store_i8(v, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->v_codes,
                                                  L->v_scales));
            TIMED(HC_DEC_ATTENTION, hc_attn_i8(q, t, (int)H, (int)Hkv, (int)hd, start, L->k_codes, L->k_scales,
                                               L->v_codes, L->v_scales, m->kv_capacity, att));
        } else {
            TIMED(HC_DEC_KV_STORE, hc_kv_store_f16(k, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->k16));
            TIMED(HC_DEC_KV_STORE, hc_kv_store_f16(v, t, (int)Hkv, (int)hd, start, m->kv_capacity, L->v16));
            TIMED(HC_DEC_ATTENTION, hc_attn_f16(q, t, (int)H, (int)Hkv, (int)hd, start, L->k16, L->v16,
                                                m->kv_capacity, att));
        }
        if (ao) { /* quantize once for the ROM product and the adapters (= hc_cim_linear) */
            TIMED(HC_DEC_QUANTIZE, hc_quantize_act(att, t, qd, m->act_group_q, q8, sc));
            TIMED(HC_DEC_CIM_O, hc_cim_matmul(L->wo, q8, sc, t, m->act_group_q, o, n_threads));
            TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ao, q8, sc, m->act_group_q, att, t, o, d));
        } else {
            TIMED(HC_DEC_CIM_O, hc_cim_linear(L->wo, att, t, m->act_group_q, o, n_threads));
        }
        TIMED(HC_DEC_ADD, hc_add_f32(x, o, t * d));
        /* feed-forward block */
        TIMED(HC_DEC_RMSNORM, hc_rmsnorm_f32(x, L->ffn_norm, t, d, m->norm_eps, h));
        TIMED(HC_DEC_QUANTIZE, hc_quantize_act(h, t, d, m->act_group_d, q8, sc));
        if (!L->wu) { /* gate and up stacked in one matrix */
            TIMED(HC_DEC_CIM_GATE_UP, hc_cim_matmul(L->wg, q8, sc, t, m->act_group_d, gu, n_threads));
            if (ag) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ag, q8, sc, m->act_group_d, h, t, gu, 2 * f));
            if (au) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(au, q8, sc, m->act_group_d, h, t, gu + f, 2 * f));
            if (t == 1) {
                g = gu;
                u = gu + f;
            } else {
                take_cols(gu, t, 2 * f, 0, f, g);
                take_cols(gu, t, 2 * f, f, f, u);
            }
        } else {
            TIMED(HC_DEC_CIM_GATE_UP, hc_cim_matmul(L->wg, q8, sc, t, m->act_group_d, g, n_threads));
            TIMED(HC_DEC_CIM_GATE_UP, hc_cim_matmul(L->wu, q8, sc, t, m->act_group_d, u, n_threads));
            if (ag) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ag, q8, sc, m->act_group_d, h, t, g, f));
            if (au) TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(au, q8, sc, m->act_group_d, h, t, u, f));
        }
        TIMED(HC_DEC_SILU_MUL, hc_silu_mul_f32(g, u, t * f, g));
        if (ad) {
            TIMED(HC_DEC_QUANTIZE, hc_quantize_act(g, t, f, m->act_group_f, q8, sc));
            TIMED(HC_DEC_CIM_DOWN, hc_cim_matmul(L->wd, q8, sc, t, m->act_group_f, o, n_threads));
            TIMED(HC_DEC_ADAPTER, hc_adapter_slot_apply(ad, q8, sc, m->act_group_f, g, t, o, d));
        } else {
            TIMED(HC_DEC_CIM_DOWN, hc_cim_linear(L->wd, g, t, m->act_group_f, o, n_threads));
        }
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
