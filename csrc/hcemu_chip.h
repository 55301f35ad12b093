/*
 * hcemu_chip.h — the C library for the whole chip (libhcemu; docs/embedding.md "The C library").
 *
 * Open a compiled ROM image (.hcrom), create a chip with a KV capacity, prefill and decode token
 * ids, read the logits and the step's event counts, reset, close — in C, with no Python.  The chip is
 * the compiled decoder of csrc/hc_chip.c (what hcemu.chip.Chip drives from Python) with the
 * embedding lookup and the output head around it: for the same image and tokens its logits are
 * bit-identical to the Python chip's, and its event counts equal the Python chip's.
 *
 * The library reads the image's *C table* (hcemu/rom/ctable.py: fixed little-endian records the
 * compiler writes beside the JSON directory, version HC_CTABLE_VERSION); images compiled before the
 * table existed are refused with HC_EOLDIMAGE ("recompile the image").  It runs dense decoders in the integer formats (int8 per
 * block or per channel, int4 symmetric or asymmetric): Llama and its block kinds listed in
 * HC_FEAT_SUPPORTED; anything else (mixture of experts, biases, q/k norms, post-norms, sliding
 * windows, block formats, one die of a multi-chip system) is refused with HC_ENOTSUPPORTED and a
 * message naming it.  LoRA adapters are not exposed (the decoder runs without them).
 *
 * Errors: every function returning int returns HC_OK (0) or a negative status (the HC_E* codes of
 * hcemu.h and below); the message of the last failure on the calling thread is hc_last_error().
 * Nothing aborts or exits.
 *
 * Threads: an hc_image is read-only once opened: any number of chips (on any threads) may share it;
 * close it after its last chip.  A chip holds one sequence: its calls must not overlap; a call made
 * while another thread is inside one on the same chip returns HC_EBUSY (nothing is changed).
 * Different chips run in parallel.  hc_last_error() is per thread.
 */
#ifndef HCEMU_CHIP_H
#define HCEMU_CHIP_H

#include "hcemu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version of this header's functions and structs: changes with any incompatible change. */
#define HC_ABI_VERSION 1
/* The C table layout this library reads (hcemu.rom.ctable.VERSION). */
#define HC_CTABLE_VERSION 1

/* ---- statuses beyond hcemu.h's (which keep their meaning: HC_EINVAL, HC_ENOMEM, HC_ENONFINITE,
 * HC_ECAPACITY for a full KV cache) */
#define HC_EIO -20           /* the file cannot be opened, read or mapped */
#define HC_EFORMAT -21       /* not an hcemu ROM image, truncated, or a corrupt preamble or C table */
#define HC_EOLDIMAGE -22     /* an image without a C table (compiled before it existed): recompile it */
#define HC_ENOTSUPPORTED -23 /* a model or plan the C chip does not run (the message names it) */
#define HC_EBUSY -24         /* another thread is inside a call on this chip */

/* ---- features of the C table (hcemu.rom.ctable.FEATURES) */
#define HC_FEAT_MOE (1u << 0)
#define HC_FEAT_QKV_BIAS (1u << 1)
#define HC_FEAT_QK_NORM (1u << 2)
#define HC_FEAT_POST_NORMS (1u << 3)
#define HC_FEAT_SLIDING_WINDOW (1u << 4)
#define HC_FEAT_BLOCK_FORMATS (1u << 5)
#define HC_FEAT_PARTIAL_DIE (1u << 6)
#define HC_FEAT_ROPE_NEOX (1u << 7)
#define HC_FEAT_GELU (1u << 8)
#define HC_FEAT_ATTN_SCALE (1u << 9)
#define HC_FEAT_ATTN_SOFTCAP (1u << 10)
#define HC_FEAT_FINAL_SOFTCAP (1u << 11)
#define HC_FEAT_EMBED_SCALE (1u << 12)
/* what this library runs: Llama, with NeoX RoPE, GeGLU, a score scale, score and logit soft-caps and an
 * embedding scale (the Gemma 1 kinds) */
#define HC_FEAT_SUPPORTED                                                                                 \
    (HC_FEAT_ROPE_NEOX | HC_FEAT_GELU | HC_FEAT_ATTN_SCALE | HC_FEAT_ATTN_SOFTCAP | HC_FEAT_FINAL_SOFTCAP | \
     HC_FEAT_EMBED_SCALE)

/* Event counter fields, in the order of hcemu.events.FIELDS (docs/events.md). */
enum {
    HC_EV_TOKENS, HC_EV_MACS_W8, HC_EV_MACS_W4, HC_EV_ROM_CODE_BITS, HC_EV_ROM_META_BITS, HC_EV_ROM_TILES,
    HC_EV_SRAM_KV_BYTES_READ, HC_EV_SRAM_KV_BYTES_WRITTEN, HC_EV_SRAM_ADAPTER_BYTES_READ, HC_EV_ATTN_MACS,
    HC_EV_ACT_QUANT_ELEMS, HC_EV_VEC_FLOPS, HC_EV_VEC_TRANSCENDENTALS, HC_EV_ADAPTER_MACS_W8, HC_EV_ADAPTER_MACS_F16,
    HC_EV_MACS_FP4, HC_EV_FIELD_COUNT
};

typedef struct hc_image hc_image; /* an opened image (read-only memory map) */
typedef struct hc_chip hc_chip;   /* a chip: the image's decoder, a KV cache, the last step's events */

typedef struct {
    int64_t n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, max_context;
    int64_t n_regions;  /* event regions: layers 0..n_layers-1, head (n_layers), embedding (n_layers+1) */
    int64_t n_fields;   /* HC_EV_FIELD_COUNT */
    int kv_int8;        /* the plan's KV cache: 1 int8, 0 fp16 */
    unsigned features;  /* HC_FEAT_* bits of the image */
} hc_image_info;

/* ABI version of the library actually loaded (compare with HC_ABI_VERSION). */
int hc_abi_version(void);
/* The message of the last failing call on this thread ("" if none). Valid until the next call. */
const char *hc_last_error(void);
/* "tokens", "macs_w8", ... (hcemu.events.FIELDS); NULL out of range. */
const char *hc_event_field_name(int field);

/* Open and check an image (preamble, C table CRC-32 and bounds, every section inside the file; the
 * sections' SHA-256 are not checked: hcemu.rom.RomImage.load(path, verify=True) does).  *out is
 * NULL on failure. */
int hc_image_open(const char *path, hc_image **out);
int hc_image_get_info(const hc_image *img, hc_image_info *info);
/* Close an image (NULL: nothing).  Its chips must be destroyed first. */
void hc_image_close(hc_image *img);

/* A chip on img with a KV cache of kv_capacity tokens (1..max_context) in the plan's format,
 * running the CIM kernels on n_threads host threads (1..HC_MAX_THREADS).  *out is NULL on failure. */
int hc_chip_create(const hc_image *img, int64_t kv_capacity, int n_threads, hc_chip **out);
void hc_chip_destroy(hc_chip *chip);
/* Run n prompt token ids (0 <= id < vocab) at the next positions, in chunks of HC_CIM_M_CHUNK;
 * logits (vocab floats, may be NULL) receive the last token's.  HC_ECAPACITY when they do not fit. */
int hc_chip_prefill(hc_chip *chip, const int32_t *ids, int64_t n, float *logits);
/* One decode step: token id at the next position; logits (vocab floats, may be NULL) of the next. */
int hc_chip_decode(hc_chip *chip, int32_t id, float *logits);
/* Forget the sequence (empty the KV cache; the last step's events are zeroed). */
int hc_chip_reset(hc_chip *chip);
/* Tokens in the KV cache (the next position), or a negative status. */
int64_t hc_chip_position(const hc_chip *chip);
/* The events of the last prefill or decode call: counts[region * n_fields + field], n_regions *
 * n_fields int64 (hc_image_info); cap is the array's length in int64s (HC_EINVAL if too short). */
int hc_chip_events(const hc_chip *chip, int64_t *counts, int64_t cap);

#ifdef __cplusplus
}
#endif
#endif /* HCEMU_CHIP_H */
