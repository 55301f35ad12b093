/* How the CIM products split their bytes over threads (not public API), shared by hc_cim.c and its
 * bandwidth peer in hc_bench.c, so that the peer reads the same bytes the same way. */
#ifndef HC_SPLIT_H
#define HC_SPLIT_H

#include <stdint.h>

#include "hcemu.h"

#define HC_SPLIT2_BYTES (1 << 20) /* chunk of the two-thread split (1 MiB beat 2 MiB on L3-resident weights) */

/* n_threads capped to one thread per HC_CIM_BYTES_PER_THREAD of the `bytes` a call streams (at
 * least 1): waking a sleeping OpenMP worker costs about as much as streaming ~2 MiB (hcemu.h). */
static inline int hc__threads_for_bytes(int n_threads, int64_t bytes) {
    const int64_t cap = bytes / HC_CIM_BYTES_PER_THREAD;
    return n_threads > cap ? (cap > 1 ? (int)cap : 1) : n_threads;
}

/* Two threads share [0, n) from opposite ends: thread 0 claims chunks upward, thread 1 downward, so
 * each streams one contiguous run, and when one starts late (a sleeping OpenMP worker takes ~50 us
 * to wake here) the other takes over its share instead of waiting: on 8192x2048 int8 weights held
 * in L3 (so memory bandwidth does not cap it) 2 threads went from 1.3x to 1.5-1.6x the 1-thread
 * rate.  *range packs (hi << 32) | lo.  Returns 0 when nothing is left. */
static inline int hc__claim2(uint64_t *range, int top, int64_t chunk, int64_t *a, int64_t *b) {
    uint64_t cur = __atomic_load_n(range, __ATOMIC_RELAXED), nxt;
    for (;;) {
        const int64_t lo = (int64_t)(uint32_t)cur, hi = (int64_t)(cur >> 32);
        if (lo >= hi) return 0;
        const int64_t take = hi - lo < chunk ? hi - lo : chunk;
        if (top) { *a = hi - take; *b = hi; nxt = ((uint64_t)*a << 32) | (uint64_t)lo; }
        else { *a = lo; *b = lo + take; nxt = ((uint64_t)hi << 32) | (uint64_t)*b; }
        if (__atomic_compare_exchange_n(range, &cur, nxt, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return 1;
    }
}

#endif
