/* Cross-architecture check of the C core (tests/test_cross_arch.py): runs the quantizer, every CIM
 * format, the vector unit and int8/fp16 attention on deterministic pseudo-random inputs through
 * the ISA path named on the command line, and writes every output's bytes to stdout.  Built for
 * the host and for another architecture (aarch64, run under qemu), the outputs must be identical
 * byte for byte: the numerics (docs/numerics.md) promise the same bits on every path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hcemu.h"

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t next(void) { /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float unit(void) { return (float)(next() >> 8) / 8388608.0f - 1.0f; } /* [-1, 1) */
static uint16_t fp16_scale(void) {                                            /* +-2^-6 .. 2^2 */
    return (uint16_t)(((next() & 1u) << 15) | ((9u + next() % 8u) << 10) | (next() & 0x3ffu));
}

static void *fill(size_t bytes) {
    uint8_t *p = malloc(bytes ? bytes : 1);
    if (!p) exit(3);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)next();
    return p;
}

static void emit(const char *what, int rc, const void *p, size_t bytes) {
    if (rc != HC_OK) {
        fprintf(stderr, "%s failed: %d\n", what, rc);
        exit(2);
    }
    fwrite(p, 1, bytes, stdout);
}

int main(int argc, char **argv) {
    hc_isa isa = HC_ISA_SCALAR;
    for (int i = 0; i < HC_ISA_COUNT; i++)
        if (argc > 1 && !strcmp(argv[1], hc_isa_name((hc_isa)i))) isa = (hc_isa)i;
    if (hc_isa_set(isa) != HC_OK) {
        fprintf(stderr, "ISA %s not supported here\n", hc_isa_name(isa));
        return 4;
    }

    /* CIM products: (bits, group, asymmetric) x (n, k, m, act_group), fused quantize + product */
    const int fmts[4][3] = {{8, 32, 0}, {8, 0, 0}, {4, 32, 0}, {4, 64, 1}};
    const int64_t shapes[3][4] = {{40, 256, 3, 32}, {16, 96, 1, 96}, {70, 128, 9, 64}};
    for (int f = 0; f < 4; f++)
        for (int s = 0; s < 3; s++) {
            const int bits = fmts[f][0], group = fmts[f][1], asym = fmts[f][2];
            const int64_t n = shapes[s][0], k = shapes[s][1], m = shapes[s][2];
            if (group && k % group) continue;
            const int64_t tk = group ? group : 32, ag = shapes[s][3] % tk ? k : shapes[s][3], nt = (n + 15) / 16, nb = group ? k / group : (k + 31) / 32;
            const int64_t metas = group ? nt * nb * 16 : nt * 16;
            uint16_t *sc = malloc(sizeof(uint16_t) * metas), *of = asym ? malloc(sizeof(uint16_t) * metas) : NULL;
            for (int64_t i = 0; i < metas; i++) {
                sc[i] = fp16_scale();
                if (of) of[i] = fp16_scale();
            }
            uint8_t *codes = fill((size_t)(nt * nb * 16 * tk * bits / 8));
            hc_weights w = {bits, group, asym, n, k, nt, nb, codes, sc, of};
            float *x = malloc(sizeof(float) * m * k), *y = malloc(sizeof(float) * m * n);
            for (int64_t i = 0; i < m * k; i++) x[i] = unit() * (i % 7 == 0 ? 30.0f : 1.0f);
            emit("cim_linear", hc_cim_linear(&w, x, m, ag, y, 1), y, sizeof(float) * m * n);
            free(sc); free(of); free(codes); free(x); free(y);
        }

    /* vector unit */
    enum { T = 3, D = 96, HD = 64, H = 4, KVH = 2, CAP = 80, START = 70 };
    float x[T * D], w[D], g[T * D], u[T * D], y[T * D];
    for (int i = 0; i < T * D; i++) { x[i] = unit() * 4.0f; g[i] = unit() * 12.0f; u[i] = unit(); }
    for (int i = 0; i < D; i++) w[i] = unit();
    emit("rmsnorm", hc_rmsnorm_f32(x, w, T, D, 1e-5f, y), y, sizeof y);
    emit("silu_mul", hc_silu_mul_f32(g, u, T * D, y), y, sizeof y);

    /* KV store and attention: START cached keys, T new queries (causal), int8 and fp16 caches */
    static float kv[CAP * KVH * HD], q[T * H * HD], out[T * H * HD];
    static int8_t k8[KVH * CAP * HD], v8[KVH * CAP * HD];
    static uint16_t ks[KVH * CAP], vs[KVH * CAP], k16[KVH * CAP * HD], v16[KVH * CAP * HD];
    for (int i = 0; i < CAP * KVH * HD; i++) kv[i] = unit() * 3.0f;
    for (int i = 0; i < T * H * HD; i++) q[i] = unit() * 2.0f;
    emit("kv_store_i8", hc_kv_store_i8(kv, START + T, KVH, HD, 0, CAP, k8, ks), k8, sizeof k8);
    emit("kv_store_i8 scales", hc_kv_store_i8(kv + HD, START + T, KVH, HD, 0, CAP, v8, vs), vs, sizeof vs);
    emit("kv_store_f16", hc_kv_store_f16(kv, START + T, KVH, HD, 0, CAP, k16), k16, sizeof k16);
    emit("kv_store_f16 v", hc_kv_store_f16(kv + HD, START + T, KVH, HD, 0, CAP, v16), v16, sizeof v16);
    emit("attn_i8", hc_attn_i8(q, T, H, KVH, HD, START, k8, ks, v8, vs, CAP, out), out, sizeof out);
    emit("attn_f16", hc_attn_f16(q, T, H, KVH, HD, START, k16, v16, CAP, out), out, sizeof out);
    return 0;
}
