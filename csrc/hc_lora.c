/*
 * hc_lora.c — LoRA adapters held in SRAM: the side path beside a ROM product.
 *
 * For one adapted matrix (n x k, rank r) and m tokens, hc_adapter_apply adds B (A x) to the ROM
 * product's output y, in the order of docs/numerics.md ("LoRA adapters"):
 *
 *   int8 (default): u = CIM(A; q, act_scales)       the ROM product's own int8 activations, A int8
 *                   (uq, us) = quantize(u, group r)  one scale per token over the r values
 *                   v = CIM(B; uq, us)               B int8 (the adapter scale folded into its scales)
 *                   y[:, j] = y[:, j] + v[:, j]
 *   fp16:           u[l] = dot16(x, A[l])            float32 activations x, A's fp16 values
 *                   v[o] = dot16(u, B[o])            B's fp16 values (adapter scale folded in)
 *                   y[:, j] = y[:, j] + v[:, j]
 *
 * The int8 products are hc_cim_matmul calls (every ISA path bit-identical, docs/kernels.md); the
 * fp16 products are the vector unit's fixed 16-lane dot (hc__dot16), one code path for every ISA.
 */
#include "hcemu.h"
#include "hc_vecmath.h"

#include <stdlib.h>
#include <string.h>

int hc_adapter_check(const hc_adapter *ad) {
    if (!ad || ad->n < 1 || ad->k < 1 || ad->rank < 1) return HC_EINVAL;
    if (ad->fp16) return (ad->a32 && ad->b32) ? HC_OK : HC_EINVAL;
    if (!ad->a || !ad->b || hc_weights_check(ad->a) || hc_weights_check(ad->b)) return HC_EINVAL;
    if (ad->a->bits != 8 || ad->b->bits != 8) return HC_EINVAL;
    if (ad->a->n != ad->rank || ad->a->k != ad->k || ad->b->n != ad->n) return HC_EINVAL;
    /* B takes r inputs, or (r < HC_ADAPTER_BLOCK) one zero-padded block of HC_ADAPTER_BLOCK */
    if (ad->b->k != ad->rank && !(ad->rank < HC_ADAPTER_BLOCK && ad->b->k == HC_ADAPTER_BLOCK)) return HC_EINVAL;
    return HC_OK;
}

int hc_adapter_apply(const hc_adapter *ad, const int8_t *q, const float *act_scales, int64_t act_group,
                     const float *x, int64_t m, float *y, int64_t ldy) {
    int rc = hc_adapter_check(ad);
    if (rc) return rc;
    const int64_t n = ad->n, k = ad->k, r = ad->rank, kb = ad->fp16 ? r : ad->b->k;
    if (m < 1 || !y || ldy < n) return HC_EINVAL;
    if (ad->fp16 ? !x : (!q || !act_scales || act_group < 1 || k % act_group)) return HC_EINVAL;
    /* scratch: u (m, kb) float, v (m, n) float, uq (m, kb) int8, us (m) float */
    const size_t need = (size_t)m * (size_t)(kb + n + 1) * sizeof(float) + (size_t)m * (size_t)kb + 64;
    _Alignas(64) char stack_buf[16384];
    char *buf = need <= sizeof(stack_buf) ? stack_buf : malloc(need);
    if (!buf) return HC_ENOMEM;
    float *u = (float *)buf, *v = u + m * kb, *us = v + m * n;
    int8_t *uq = (int8_t *)(us + m);
    if (ad->fp16) {
        for (int64_t i = 0; i < m && rc == HC_OK; i++) {
            for (int64_t l = 0; l < r; l++) {
                u[i * r + l] = hc__dot16(x + i * k, ad->a32 + l * k, k);
                if ((hc__f2u(u[i * r + l]) & 0x7f800000u) == 0x7f800000u) rc = HC_ENONFINITE; /* NaN/inf in x */
            }
            for (int64_t o = 0; o < n; o++) v[i * n + o] = hc__dot16(u + i * r, ad->b32 + o * r, r);
        }
    } else {
        rc = hc_cim_matmul(ad->a, q, act_scales, m, act_group, u, 1);
        if (rc == HC_OK && kb > r) /* spread the rows (m, r) -> (m, kb), zero padding: amax, scale and */
            for (int64_t i = m - 1; i >= 0; i--) { /* codes of the r values are unchanged */
                memmove(u + i * kb, u + i * r, (size_t)r * sizeof(float));
                memset(u + i * kb + r, 0, (size_t)(kb - r) * sizeof(float));
            }
        if (rc == HC_OK) rc = hc_quantize_act(u, m, kb, kb, uq, us);
        if (rc == HC_OK) rc = hc_cim_matmul(ad->b, uq, us, m, kb, v, 1);
    }
    if (rc == HC_OK)
        for (int64_t i = 0; i < m; i++) {
            float *yi = y + i * ldy;
            const float *vi = v + i * n;
            for (int64_t j = 0; j < n; j++) yi[j] = yi[j] + vi[j];
        }
    if (buf != stack_buf) free(buf);
    return rc;
}

int hc_adapter_slot_apply(const hc_adapter_slot *slot, const int8_t *q, const float *act_scales,
                          int64_t act_group, const float *x, int64_t m, float *y, int64_t ldy) {
    if (!slot) return HC_OK;
    if (slot->n < 0 || slot->n > HC_ADAPTERS_MAX) return HC_EINVAL;
    for (int s = 0; s < slot->n; s++) {
        int rc = hc_adapter_apply(slot->a[s], q, act_scales, act_group, x, m, y, ldy);
        if (rc) return rc;
    }
    return HC_OK;
}
