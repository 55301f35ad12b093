/*
 * greedy.c — load a compiled ROM image with libhcemu and greedy-decode from token ids.
 *
 *   greedy IMAGE.hcrom MAX_NEW_TOKENS ID [ID ...] [--eos ID] [--kv-tokens N] [--threads N]
 *
 * Prefills the prompt ids, then picks the largest logit (the lowest id on ties, as numpy's argmax and
 * `hcemu run` at temperature 0) up to MAX_NEW_TOKENS times, stopping after --eos if given; prints the
 * generated ids on one line, space-separated, and the step events' totals on stderr.  No Python.
 * Build: make (this folder's Makefile), or
 *   cc -O2 -I"$(python -c 'import hcemu; print(hcemu.get_include())')" greedy.c \
 *      "$(python -c 'import hcemu; print(hcemu.get_library())')" -Wl,-rpath,<its folder> -o greedy
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hcemu_chip.h"

static int usage(void) {
    fprintf(stderr, "usage: greedy IMAGE MAX_NEW_TOKENS ID [ID ...] [--eos ID] [--kv-tokens N] [--threads N]\n");
    return 2;
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

int main(int argc, char **argv) {
    if (argc < 4) return usage();
    if (hc_abi_version() != HC_ABI_VERSION) {
        fprintf(stderr, "greedy: libhcemu ABI %d, this program was built for %d\n", hc_abi_version(), HC_ABI_VERSION);
        return 1;
    }
    const char *path = argv[1];
    const long max_new = strtol(argv[2], NULL, 10);
    long eos = -1, kv_tokens = 0, threads = 1;
    int32_t *ids = malloc((size_t)argc * sizeof *ids);
    int64_t n = 0;
    if (!ids || max_new < 0) return usage();
    for (int i = 3; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--eos") && i + 1 < argc) eos = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--kv-tokens") && i + 1 < argc) kv_tokens = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = strtol(argv[++i], NULL, 10);
        else {
            long v = strtol(argv[i], &end, 10);
            if (*end || end == argv[i]) return usage();
            ids[n++] = (int32_t)v;
        }
    }
    if (!n) return usage();

    hc_image *img = NULL;
    hc_chip *chip = NULL;
    hc_image_info info;
    float *logits = NULL;
    int64_t *events = NULL, total[HC_EV_FIELD_COUNT] = {0};
    int rc = hc_image_open(path, &img);
    if (!rc) rc = hc_image_get_info(img, &info);
    if (!rc) {
        if (!kv_tokens) kv_tokens = n + max_new < info.max_context ? n + max_new : info.max_context;
        rc = hc_chip_create(img, kv_tokens, (int)threads, &chip);
    }
    if (!rc) {
        logits = malloc((size_t)info.vocab_size * sizeof *logits);
        events = malloc((size_t)(info.n_regions * info.n_fields) * sizeof *events);
        if (!logits || !events) {
            fprintf(stderr, "greedy: out of memory\n");
            return 1;
        }
        rc = hc_chip_prefill(chip, ids, n, logits);
    }
    for (long step = 0; !rc && step < max_new; step++) {
        if (!(rc = hc_chip_events(chip, events, info.n_regions * info.n_fields)))
            for (int64_t j = 0; j < info.n_regions * info.n_fields; j++) total[j % info.n_fields] += events[j];
        const int32_t tok = argmax(logits, info.vocab_size);
        printf(step ? " %d" : "%d", tok);
        if (tok == eos || step + 1 == max_new) break;
        rc = hc_chip_decode(chip, tok, logits);
    }
    printf("\n");
    if (rc) fprintf(stderr, "greedy: %s (status %d)\n", hc_last_error(), rc);
    else
        for (int f = 0; f < HC_EV_FIELD_COUNT; f++) fprintf(stderr, "%s %lld\n", hc_event_field_name(f), (long long)total[f]);
    free(logits);
    free(events);
    free(ids);
    hc_chip_destroy(chip);
    hc_image_close(img);
    return rc ? 1 : 0;
}
