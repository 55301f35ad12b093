/* Run-time CPU detection and the process-wide ISA choice (see hcemu.h). */
#include "hcemu.h"

static int g_active = -1; /* -1: not chosen yet -> best supported */

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
/* F16C (CPUID.1:ECX bit 29) by cpuid: clang's __builtin_cpu_supports does not know "f16c". It
 * uses the ymm state, which libgcc's "avx2" test in probe_isas() checks the OS saves. */
static int cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
/* AVX-VNNI (VEX vpdpbusd on ymm): CPUID.(7,1):EAX bit 4, likewise on the AVX register state. */
static int cpu_has_avxvnni(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
}
#endif

/* The CPU probe runs once: kernels check the mask on every call, and CPUID traps to the hypervisor
 * in a VM (probing per call made a SmolLM2 decode step 1.3x slower here). */
static unsigned probe_isas(void) {
    unsigned mask = 1u << HC_ISA_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* libgcc checks OS support of the register state (XCR0) before reporting these. */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
        mask |= 1u << HC_ISA_AVX2;
        if (cpu_has_avxvnni()) mask |= 1u << HC_ISA_AVXVNNI;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        mask |= 1u << HC_ISA_AVX512VNNI;
#endif
    return mask;
}

unsigned hc_isa_supported(void) {
    static unsigned cached; /* 0 until probed (the scalar bit is always set) */
    unsigned mask = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (!mask) {
        mask = probe_isas();
        __atomic_store_n(&cached, mask, __ATOMIC_RELAXED);
    }
    return mask;
}

static hc_isa best_isa(void) {
    unsigned mask = hc_isa_supported();
    for (int isa = HC_ISA_COUNT - 1; isa > 0; --isa)
        if (mask & (1u << isa)) return (hc_isa)isa;
    return HC_ISA_SCALAR;
}

hc_isa hc_isa_active(void) {
    if (g_active < 0) g_active = (int)best_isa();
    return (hc_isa)g_active;
}

int hc_isa_set(hc_isa isa) {
    if ((int)isa < 0 || isa >= HC_ISA_COUNT) return HC_EINVAL;
    if (!(hc_isa_supported() & (1u << isa))) return HC_EUNSUPPORTED;
    g_active = (int)isa;
    return HC_OK;
}

const char *hc_isa_name(hc_isa isa) {
    switch (isa) {
    case HC_ISA_SCALAR: return "scalar";
    case HC_ISA_AVX2: return "avx2";
    case HC_ISA_AVXVNNI: return "avxvnni";
    case HC_ISA_AVX512VNNI: return "avx512vnni";
    default: return "unknown";
    }
}
