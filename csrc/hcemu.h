/*
 * hcemu.h — the public C interface of hcemu's kernels.
 *
 * Other simulators compile against this header (directory: `hcemu.get_include()`) and link the
 * sources in csrc/.  Everything here is plain C11: pointers, sizes and status codes.  The numerics
 * (formats, tile layout, nibble order, rounding, float evaluation order) are specified in
 * docs/numerics.md; every path (scalar, AVX2, AVX-512 VNNI) gives bit-identical results.
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

/* ---- run-time ISA selection ------------------------------------------------------------------ */
typedef enum { HC_ISA_SCALAR = 0, HC_ISA_AVX2 = 1, HC_ISA_AVX512VNNI = 2, HC_ISA_COUNT = 3 } hc_isa;

/* Bit mask (1 << hc_isa) of the paths this CPU and OS can run. Scalar is always present. */
unsigned hc_isa_supported(void);
/* The path kernels dispatch to now (the best supported one unless set). */
hc_isa hc_isa_active(void);
/* Choose a path; HC_EUNSUPPORTED when this machine cannot run it. */
int hc_isa_set(hc_isa isa);
/* "scalar", "avx2", "avx512vnni". */
const char *hc_isa_name(hc_isa isa);

#ifdef __cplusplus
}
#endif
#endif /* HCEMU_H */
