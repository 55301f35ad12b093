/*
 * hc_lib.c — the whole chip in C (libhcemu): image loader, embedding lookup, the compiled decoder of
 * hc_chip.c, output head, events.  Interface and rules: hcemu_chip.h; docs/embedding.md.
 *
 * The image is memory-mapped read-only; its C table (hcemu/rom/ctable.py: fixed little-endian
 * records, CRC-32 checked) says where every matrix and vector lies.  The chip runs the steps of
 * hcemu.chip.Chip (prefill in chunks of HC_CIM_M_CHUNK, embedding -> hc_decoder_layers -> final
 * RMSNorm -> output CIM product on the last row) through the same kernels, so its logits are
 * bit-identical to the Python chip's.  Events: the table holds the per-pass rows hcemu.events computes
 * (one layer pass, one head pass, one embedding lookup, one attended key); a step adds passes times
 * rows, as the Python chip's counters do.
 */
#include "hcemu_chip.h"

#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- errors ---------------------------------------------------------------------------------- */
static _Thread_local char last_error[512];

static int fail(int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return rc;
}

int hc_abi_version(void) { return HC_ABI_VERSION; }
const char *hc_last_error(void) { return last_error; }

const char *hc_event_field_name(int field) {
    static const char *names[HC_EV_FIELD_COUNT] = {
        "tokens", "macs_w8", "macs_w4", "rom_code_bits", "rom_meta_bits", "rom_tiles", "sram_kv_bytes_read",
        "sram_kv_bytes_written", "sram_adapter_bytes_read", "attn_macs", "act_quant_elems", "vec_flops",
        "vec_transcendentals", "adapter_macs_w8", "adapter_macs_f16", "macs_fp4"};
    return field >= 0 && field < HC_EV_FIELD_COUNT ? names[field] : NULL;
}

/* ---- little-endian fields -------------------------------------------------------------------- */
static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd_u64(const uint8_t *p) { return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32; }
static int64_t rd_i64(const uint8_t *p) { return (int64_t)rd_u64(p); }
static int32_t rd_i32(const uint8_t *p) { return (int32_t)rd_u32(p); }
static double rd_f64(const uint8_t *p) {
    uint64_t u = rd_u64(p);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* CRC-32 (zlib's: reflected polynomial 0xEDB88320), as Python's zlib.crc32. */
static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---- the image --------------------------------------------------------------------------------- */
#define PREAMBLE_BYTES 4096
#define ROM_VERSION 2 /* hcemu.rom.image.VERSION */
#define RECORD_OFFSET 104 /* hcemu.rom.ctable.RECORD_OFFSET */
#define RECORD_BYTES 32   /* "<8sIIQQ" */
#define HEADER_BYTES 184  /* hcemu.rom.ctable.HEADER.size */
#define LAYER_BYTES 36    /* 9 int32 */
#define TENSOR_BYTES 160
#define VECTOR_BYTES 88
#define NAME_BYTES 64
#define MAX_COUNT (1 << 20) /* bounds every count of the table before sizes are multiplied */

typedef struct {
    char name[NAME_BYTES];
    hc_weights w;
} tensor;

typedef struct {
    char name[NAME_BYTES];
    int64_t n;
    const float *values;
} vector;

struct hc_image {
    uint8_t *map;
    size_t size;
    hc_image_info info;
    int64_t act_group_d, act_group_q, act_group_f;
    double norm_eps, attn_scale, attn_softcap, embed_scale, final_softcap;
    int32_t embed, output, output_norm; /* tensor, tensor, vector indices */
    int32_t (*layers)[9];               /* attn_norm, ffn_norm (vectors); wq, wk, wv, wo, wg, wu, wd (tensors) */
    double *freqs;                      /* head_dim / 2 */
    int64_t *events;                    /* (n_layers + 3) x n_fields: layer passes, head pass, embedding, key */
    int64_t n_tensors, n_vectors;
    tensor *tensors;
    vector *vectors;
};

static const char *feature_names[] = {"mixture of experts", "Q/K/V biases", "q/k norms", "post-norms",
                                      "sliding-window layers", "block formats (k-quants, MXFP4, NVFP4, ...)",
                                      "one die of a multi-chip system", "NeoX RoPE", "GeGLU", "a score scale",
                                      "score soft-capping", "logit soft-capping", "an embedding scale"};

void hc_image_close(hc_image *img) {
    if (!img) return;
    if (img->map) munmap(img->map, img->size);
    free(img->layers);
    free(img->freqs);
    free(img->events);
    free(img->tensors);
    free(img->vectors);
    free(img);
}

/* A section [off, off + n) lies in the payload [PREAMBLE_BYTES, end), 4096-byte aligned. */
static int in_payload(uint64_t off, uint64_t n, uint64_t end) {
    return off >= PREAMBLE_BYTES && off % PREAMBLE_BYTES == 0 && off <= end && n <= end - off;
}

/* A record's name, NUL-terminated, printable ASCII kept and every other byte made '?': names are only
 * shown in messages, and a corrupt table must not put raw bytes (invalid UTF-8, control codes) there. */
static void read_name(char *dst, const uint8_t *src) {
    int i = 0;
    for (; i < NAME_BYTES - 1 && src[i]; i++) dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
    memset(dst + i, 0, NAME_BYTES - i);
}

static int load_tensor(hc_image *img, const uint8_t *r, uint64_t end, int64_t i, const char *path) {
    tensor *T = &img->tensors[i];
    read_name(T->name, r);
    r += NAME_BYTES;
    const uint32_t bits = rd_u32(r), group = rd_u32(r + 4), asym = rd_u32(r + 8), block = rd_u32(r + 12);
    const int64_t n = rd_i64(r + 16), k = rd_i64(r + 24);
    const uint64_t co = rd_u64(r + 32), cn = rd_u64(r + 40), so = rd_u64(r + 48), sn = rd_u64(r + 56),
                   oo = rd_u64(r + 64), on = rd_u64(r + 72);
    if (block)
        return fail(HC_ENOTSUPPORTED, "%s: matrix %s is in a block format; the C chip runs the integer formats "
                    "(int8, int4)", path, T->name);
    if (!(bits == 4 || bits == 8) || !(group == 0 || group == 32 || group == 64 || group == 128) ||
        asym > 1 || (asym && bits != 4) || (group == 0 && bits != 8) || n < 1 || k < 1 || n > (1 << 30) ||
        k > (1 << 30) || (group && k % group))
        return fail(HC_EFORMAT, "%s: corrupt C table: matrix %s (%lld x %lld, %u bits, group %u%s)", path, T->name,
                    (long long)n, (long long)k, bits, group, asym ? ", asymmetric" : "");
    const int64_t tile_k = group ? group : 32, nt = (n + 15) / 16, nb = group ? k / group : (k + 31) / 32;
    const uint64_t want_codes = (uint64_t)(nt * nb) * (uint64_t)(16 * tile_k * bits / 8),
                   want_scales = (uint64_t)(group ? nt * nb * 16 : nt * 16) * 2;
    if (cn != want_codes || sn != want_scales || on != (asym ? want_scales : 0) || !in_payload(co, cn, end) ||
        !in_payload(so, sn, end) || (asym && !in_payload(oo, on, end)))
        return fail(HC_EFORMAT, "%s: corrupt C table: the sections of matrix %s are misplaced or of the wrong size",
                    path, T->name);
    hc_weights *w = &T->w;
    memset(w, 0, sizeof *w);
    w->bits = (int)bits;
    w->group = (int)group;
    w->asymmetric = (int)asym;
    w->n = n;
    w->k = k;
    w->n_row_tiles = nt;
    w->n_blocks = nb;
    w->codes = img->map + co;
    w->scales = (const uint16_t *)(img->map + so);
    w->offsets = asym ? (const uint16_t *)(img->map + oo) : NULL;
    w->tensor_scale = 1.0f;
    if (hc_weights_check(w)) return fail(HC_EFORMAT, "%s: corrupt C table: matrix %s is inconsistent", path, T->name);
    return HC_OK;
}

/* 0 (the feature is off) or a positive normal float32 value. */
static int off_or_normal(double v) { return v == 0.0 || (v >= FLT_MIN && v < 3.4e38); }

static int parse_table(hc_image *img, const uint8_t *t, uint64_t nbytes, uint64_t end, const char *path) {
    if (nbytes < HEADER_BYTES || memcmp(t, "HCCTAB\0\0", 8) || rd_u32(t + 8) != HC_CTABLE_VERSION ||
        rd_u32(t + 12) != HEADER_BYTES)
        return fail(HC_EFORMAT, "%s: corrupt C table header", path);
    const uint32_t n_fields = rd_u32(t + 16), n_regions = rd_u32(t + 20), n_tensors = rd_u32(t + 24),
                   n_vectors = rd_u32(t + 28), features = rd_u32(t + 32), kv_int8 = rd_u32(t + 36);
    const uint8_t *q = t + 40;
    int64_t dims[11];
    for (int i = 0; i < 11; i++) dims[i] = rd_i64(q + 8 * i);
    q += 88;
    hc_image_info *I = &img->info;
    I->n_layers = dims[0], I->d_model = dims[1], I->n_heads = dims[2], I->n_kv_heads = dims[3];
    I->head_dim = dims[4], I->d_ff = dims[5], I->vocab_size = dims[6], I->max_context = dims[7];
    img->act_group_d = dims[8], img->act_group_q = dims[9], img->act_group_f = dims[10];
    img->norm_eps = rd_f64(q), img->attn_scale = rd_f64(q + 8), img->attn_softcap = rd_f64(q + 16);
    img->embed_scale = rd_f64(q + 24), img->final_softcap = rd_f64(q + 32);
    q += 40;
    img->embed = rd_i32(q), img->output = rd_i32(q + 4), img->output_norm = rd_i32(q + 8);
    I->n_regions = n_regions;
    I->n_fields = HC_EV_FIELD_COUNT; /* a table with fewer (an older hcemu's) reads 0 for the ones it lacks */
    I->kv_int8 = kv_int8 == 1;
    I->features = features;
    for (int i = 0; i < 8; i++)
        if (dims[i] < 1 || dims[i] > (1 << 30))
            return fail(HC_EFORMAT, "%s: corrupt C table: model dimension %d is %lld", path, i, (long long)dims[i]);
    if (n_fields > HC_EV_FIELD_COUNT)
        return fail(HC_ENOTSUPPORTED, "%s: the C table counts %u event fields, this library knows %d: use a newer "
                    "libhcemu", path, n_fields, HC_EV_FIELD_COUNT);
    if (n_fields < 1 || kv_int8 > 1 || I->n_layers > MAX_COUNT || n_tensors > MAX_COUNT ||
        n_vectors > MAX_COUNT || (I->head_dim & 1) || I->head_dim > HC_ATTN_MAX_HEAD_DIM ||
        n_regions < I->n_layers + 2 || n_regions > MAX_COUNT)
        return fail(HC_EFORMAT, "%s: corrupt C table: counts out of range", path);
    const int64_t L = I->n_layers, half = I->head_dim / 2;
    const uint64_t want = HEADER_BYTES + (uint64_t)L * LAYER_BYTES + (uint64_t)half * 8 +
                          (uint64_t)(L + 3) * n_fields * 8 + (uint64_t)n_tensors * TENSOR_BYTES +
                          (uint64_t)n_vectors * VECTOR_BYTES;
    if (nbytes != want)
        return fail(HC_EFORMAT, "%s: corrupt C table: %llu bytes, its counts need %llu", path,
                    (unsigned long long)nbytes, (unsigned long long)want);
    if (features & ~(unsigned)HC_FEAT_SUPPORTED) {
        char what[400] = "";
        for (int b = 0; b < 13; b++)
            if ((features & ~(unsigned)HC_FEAT_SUPPORTED) & (1u << b)) {
                if (what[0]) strncat(what, ", ", sizeof what - strlen(what) - 1);
                strncat(what, feature_names[b], sizeof what - strlen(what) - 1);
            }
        return fail(HC_ENOTSUPPORTED, "%s: the C chip does not run %s (run it with hcemu.chip.Chip)", path,
                    what[0] ? what : "a feature of a newer hcemu");
    }
    img->layers = malloc((size_t)L * sizeof *img->layers);
    img->freqs = malloc((size_t)half * sizeof(double));
    img->events = calloc((size_t)(L + 3) * HC_EV_FIELD_COUNT, sizeof(int64_t));
    img->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(tensor));
    img->vectors = calloc(n_vectors ? n_vectors : 1, sizeof(vector));
    if (!img->layers || !img->freqs || !img->events || !img->tensors || !img->vectors)
        return fail(HC_ENOMEM, "out of memory reading %s", path);
    img->n_tensors = n_tensors;
    img->n_vectors = n_vectors;
    const uint8_t *p = t + HEADER_BYTES;
    for (int64_t i = 0; i < L; i++, p += LAYER_BYTES)
        for (int j = 0; j < 9; j++) img->layers[i][j] = rd_i32(p + 4 * j);
    for (int64_t j = 0; j < half; j++, p += 8) {
        img->freqs[j] = rd_f64(p);
        if (!(img->freqs[j] >= 0.0 && img->freqs[j] <= 1e30))
            return fail(HC_EFORMAT, "%s: corrupt C table: RoPE frequency %lld is %g", path, (long long)j, img->freqs[j]);
    }
    for (int64_t r = 0; r < L + 3; r++)
        for (int64_t f = 0; f < (int64_t)n_fields; f++, p += 8) img->events[r * HC_EV_FIELD_COUNT + f] = rd_i64(p);
    for (int64_t i = 0; i < (int64_t)n_tensors; i++, p += TENSOR_BYTES) {
        int rc = load_tensor(img, p, end, i, path);
        if (rc) return rc;
    }
    for (int64_t i = 0; i < (int64_t)n_vectors; i++, p += VECTOR_BYTES) {
        vector *V = &img->vectors[i];
        read_name(V->name, p);
        const int64_t n = rd_i64(p + 64);
        const uint64_t off = rd_u64(p + 72), nb = rd_u64(p + 80);
        if (n < 1 || n > (1 << 30) || nb != (uint64_t)n * 4 || !in_payload(off, nb, end))
            return fail(HC_EFORMAT, "%s: corrupt C table: vector %s is misplaced or of the wrong size", path, V->name);
        V->n = n;
        V->values = (const float *)(img->map + off);
    }
    /* the references: indices in range, lengths and shapes as the chip needs them */
#define VEC_OK(i, len) ((i) >= 0 && (i) < (int64_t)n_vectors && img->vectors[i].n == (len))
#define MAT_OK(i) ((i) >= 0 && (i) < (int64_t)n_tensors)
    for (int64_t i = 0; i < L; i++) {
        const int32_t *r = img->layers[i];
        if (!VEC_OK(r[0], I->d_model) || !VEC_OK(r[1], I->d_model))
            return fail(HC_EFORMAT, "%s: corrupt C table: layer %lld's norms", path, (long long)i);
        for (int j = 2; j < 9; j++)
            if (!MAT_OK(r[j])) return fail(HC_EFORMAT, "%s: corrupt C table: layer %lld's matrices", path, (long long)i);
    }
    if (!MAT_OK(img->embed) || !MAT_OK(img->output) || !VEC_OK(img->output_norm, I->d_model))
        return fail(HC_EFORMAT, "%s: corrupt C table: embedding, output or final norm", path);
    const hc_weights *e = &img->tensors[img->embed].w, *o = &img->tensors[img->output].w;
    if (e->n != I->vocab_size || e->k != I->d_model || o->n != I->vocab_size || o->k != I->d_model)
        return fail(HC_EFORMAT, "%s: corrupt C table: embedding or output shape", path);
    if (!hc_cim_group_ok(o, img->act_group_d)) /* o->k == d_model: the group divides d_model and fits o's tiles */
        return fail(HC_EFORMAT, "%s: corrupt C table: activation group %lld of d_model %lld", path,
                    (long long)img->act_group_d, (long long)I->d_model);
#undef VEC_OK
#undef MAT_OK
    /* the kernels take these as float32: each must stay a normal float (or 0 where 0 means "none") */
    if (!(img->norm_eps >= FLT_MIN && img->norm_eps <= 1e30) || !off_or_normal(img->attn_scale) ||
        !off_or_normal(img->attn_softcap) || !off_or_normal(img->final_softcap) || !(fabs(img->embed_scale) < 3.4e38))
        return fail(HC_EFORMAT, "%s: corrupt C table: a norm epsilon, scale or soft-cap is out of range", path);
    return HC_OK;
}

int hc_image_open(const char *path, hc_image **out) {
    if (!out) return fail(HC_EINVAL, "hc_image_open: out is NULL");
    *out = NULL;
    if (!path) return fail(HC_EINVAL, "hc_image_open: path is NULL");
    const uint32_t probe = 1;
    if (*(const uint8_t *)&probe != 1) return fail(HC_ENOTSUPPORTED, "the C chip needs a little-endian host");
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail(HC_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(HC_EIO, "%s: not a regular file", path);
    }
    if (st.st_size < PREAMBLE_BYTES) {
        close(fd);
        return fail(HC_EFORMAT, "%s: truncated: %lld bytes, smaller than the %d-byte preamble", path,
                    (long long)st.st_size, PREAMBLE_BYTES);
    }
    hc_image *img = calloc(1, sizeof *img);
    if (!img) {
        close(fd);
        return fail(HC_ENOMEM, "out of memory opening %s", path);
    }
    img->size = (size_t)st.st_size;
    void *m = mmap(NULL, img->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        free(img);
        return fail(HC_EIO, "%s: cannot map: %s", path, strerror(errno));
    }
    img->map = m;
    const uint8_t *pre = img->map;
    int rc;
    const uint64_t dir_off = rd_u64(pre + 16), dir_len = rd_u64(pre + 24), file_bytes = rd_u64(pre + 32);
    if (memcmp(pre, "HCROM\0\x1a\n", 8)) {
        rc = fail(HC_EFORMAT, "%s: not an hcemu ROM image (magic)", path);
    } else if (rd_u32(pre + 8) != ROM_VERSION) {
        rc = fail(rd_u32(pre + 8) < ROM_VERSION ? HC_EOLDIMAGE : HC_EFORMAT,
                  "%s: unsupported ROM image version %u (this library reads version %d)%s", path, rd_u32(pre + 8),
                  ROM_VERSION, rd_u32(pre + 8) < ROM_VERSION ? ": recompile it with this hcemu (hcemu compile)" : "");
    } else if (file_bytes != img->size) {
        rc = fail(HC_EFORMAT, "%s: %llu bytes, the preamble says %llu", path, (unsigned long long)img->size,
                  (unsigned long long)file_bytes);
    } else if (rd_u32(pre + 12) != PREAMBLE_BYTES || dir_off < PREAMBLE_BYTES || dir_off > file_bytes ||
               dir_len != file_bytes - dir_off) {
        rc = fail(HC_EFORMAT, "%s: corrupt preamble", path);
    } else {
        const uint8_t *rec = pre + RECORD_OFFSET;
        static const uint8_t zero[RECORD_BYTES];
        if (!memcmp(rec, zero, RECORD_BYTES)) {
            rc = fail(HC_EOLDIMAGE, "%s: the image has no C table (compiled by an hcemu without the C library): "
                      "recompile it with this hcemu (hcemu compile)", path);
        } else if (memcmp(rec, "HCCTAB\0\0", 8)) {
            rc = fail(HC_EFORMAT, "%s: corrupt preamble (C table record)", path);
        } else if (rd_u32(rec + 8) != HC_CTABLE_VERSION) {
            rc = fail(rd_u32(rec + 8) < HC_CTABLE_VERSION ? HC_EOLDIMAGE : HC_ENOTSUPPORTED,
                      "%s: C table version %u; this library reads version %d: %s", path, rd_u32(rec + 8),
                      HC_CTABLE_VERSION, rd_u32(rec + 8) < HC_CTABLE_VERSION ? "recompile the image"
                                                                             : "use a newer libhcemu");
        } else {
            const uint64_t off = rd_u64(rec + 16), n = rd_u64(rec + 24);
            if (!in_payload(off, n, dir_off) || n == 0)
                rc = fail(HC_EFORMAT, "%s: corrupt preamble (C table at %llu+%llu)", path, (unsigned long long)off,
                          (unsigned long long)n);
            else if (crc32_of(img->map + off, n) != rd_u32(rec + 12))
                rc = fail(HC_EFORMAT, "%s: corrupt C table (CRC-32 mismatch)", path);
            else
                rc = parse_table(img, img->map + off, n, dir_off, path);
        }
    }
    if (rc) {
        hc_image_close(img);
        return rc;
    }
    *out = img;
    return HC_OK;
}

int hc_image_get_info(const hc_image *img, hc_image_info *info) {
    if (!img || !info) return fail(HC_EINVAL, "hc_image_get_info: NULL argument");
    *info = img->info;
    return HC_OK;
}

/* ---- the chip ---------------------------------------------------------------------------------- */
struct hc_chip {
    const hc_image *img;
    atomic_flag busy;
    int n_threads;
    int64_t capacity, position;
    void *kv;              /* every layer's K and V arrays, one allocation */
    float *cos_t, *sin_t;  /* (capacity, head_dim / 2) */
    hc_layer *layers;
    hc_decoder dec;
    float *x, *h, *logits; /* (HC_CIM_M_CHUNK, d_model), (1, d_model), (vocab) */
    int64_t *events;       /* (n_regions, n_fields) of the last step */
};

void hc_chip_destroy(hc_chip *c) {
    if (!c) return;
    free(c->kv);
    free(c->cos_t);
    free(c->sin_t);
    free(c->layers);
    free(c->x);
    free(c->h);
    free(c->logits);
    free(c->events);
    free(c);
}

int hc_chip_create(const hc_image *img, int64_t kv_capacity, int n_threads, hc_chip **out) {
    if (!out) return fail(HC_EINVAL, "hc_chip_create: out is NULL");
    *out = NULL;
    if (!img) return fail(HC_EINVAL, "hc_chip_create: image is NULL");
    const hc_image_info *I = &img->info;
    if (kv_capacity < 1 || kv_capacity > I->max_context)
        return fail(HC_EINVAL, "hc_chip_create: kv_capacity %lld outside 1..%lld (the model's context)",
                    (long long)kv_capacity, (long long)I->max_context);
    if (n_threads < 1 || n_threads > HC_MAX_THREADS)
        return fail(HC_EINVAL, "hc_chip_create: n_threads %d outside 1..%d", n_threads, HC_MAX_THREADS);
    hc_chip *c = calloc(1, sizeof *c);
    if (!c) return fail(HC_ENOMEM, "hc_chip_create: out of memory");
    atomic_flag_clear(&c->busy);
    c->img = img;
    c->n_threads = n_threads;
    c->capacity = kv_capacity;
    const int64_t L = I->n_layers, hd = I->head_dim, half = hd / 2, d = I->d_model;
    const size_t per_head = (size_t)kv_capacity * (size_t)hd, heads = (size_t)I->n_kv_heads;
    /* per layer: int8 K and V codes + fp16 K and V scales, or fp16 K and V values */
    const size_t layer_bytes = I->kv_int8 ? heads * (2 * per_head + 2 * 2 * (size_t)kv_capacity) : heads * 2 * 2 * per_head;
    c->kv = malloc((size_t)L * layer_bytes);
    c->cos_t = malloc((size_t)kv_capacity * (size_t)half * sizeof(float));
    c->sin_t = malloc((size_t)kv_capacity * (size_t)half * sizeof(float));
    c->layers = calloc((size_t)L, sizeof(hc_layer));
    c->x = malloc((size_t)HC_CIM_M_CHUNK * (size_t)d * sizeof(float));
    c->h = malloc((size_t)d * sizeof(float));
    c->logits = malloc((size_t)I->vocab_size * sizeof(float));
    c->events = calloc((size_t)(I->n_regions * I->n_fields), sizeof(int64_t));
    if (!c->kv || !c->cos_t || !c->sin_t || !c->layers || !c->x || !c->h || !c->logits || !c->events) {
        hc_chip_destroy(c);
        return fail(HC_ENOMEM, "hc_chip_create: out of memory (KV cache of %lld tokens: %llu bytes)",
                    (long long)kv_capacity, (unsigned long long)((size_t)L * layer_bytes));
    }
    /* RoPE tables as hcemu.model.ops.rope_tables: the angle in float64, cos/sin rounded to float32 once */
    for (int64_t p = 0; p < kv_capacity; p++)
        for (int64_t j = 0; j < half; j++) {
            const double ang = (double)p * img->freqs[j];
            c->cos_t[p * half + j] = (float)cos(ang);
            c->sin_t[p * half + j] = (float)sin(ang);
        }
    uint8_t *kv = c->kv;
    for (int64_t i = 0; i < L; i++, kv += layer_bytes) {
        hc_layer *Ly = &c->layers[i];
        const int32_t *r = img->layers[i];
        Ly->attn_norm = img->vectors[r[0]].values;
        Ly->ffn_norm = img->vectors[r[1]].values;
        Ly->wq = &img->tensors[r[2]].w;
        Ly->wk = &img->tensors[r[3]].w;
        Ly->wv = &img->tensors[r[4]].w;
        Ly->wo = &img->tensors[r[5]].w;
        Ly->wg = &img->tensors[r[6]].w;
        Ly->wu = &img->tensors[r[7]].w;
        Ly->wd = &img->tensors[r[8]].w;
        if (I->kv_int8) {
            Ly->k_codes = (int8_t *)kv;
            Ly->v_codes = (int8_t *)(kv + heads * per_head);
            Ly->k_scales = (uint16_t *)(kv + 2 * heads * per_head);
            Ly->v_scales = Ly->k_scales + heads * (size_t)kv_capacity;
        } else {
            Ly->k16 = (uint16_t *)kv;
            Ly->v16 = Ly->k16 + heads * per_head;
        }
    }
    hc_decoder *D = &c->dec;
    D->n_layers = L, D->d_model = d, D->n_heads = I->n_heads, D->n_kv_heads = I->n_kv_heads;
    D->head_dim = hd, D->d_ff = I->d_ff, D->norm_eps = (float)img->norm_eps;
    D->act_group_d = img->act_group_d, D->act_group_q = img->act_group_q, D->act_group_f = img->act_group_f;
    D->kv_int8 = I->kv_int8, D->kv_capacity = kv_capacity, D->rope_cos = c->cos_t, D->rope_sin = c->sin_t;
    D->layers = c->layers;
    D->rope_neox = (I->features & HC_FEAT_ROPE_NEOX) != 0;
    D->ffn_gelu = (I->features & HC_FEAT_GELU) != 0;
    D->attn_scale = (float)img->attn_scale, D->attn_softcap = (float)img->attn_softcap;
    D->expert_scale = 1.0f;
    if (hc_decoder_check(D)) {
        hc_chip_destroy(c);
        return fail(HC_EFORMAT, "hc_chip_create: the image's layers do not make a decoder (a matrix shape or "
                    "activation group does not fit)");
    }
    *out = c;
    return HC_OK;
}

/* Rows of the embedding matrix (integer formats) for ids into x (t, d): hcemu.layout.dequantize_rows. */
static void embed_rows(const hc_weights *w, const int32_t *ids, int64_t t, float *x) {
    const int64_t k = w->k, tk = w->group ? w->group : 32, nb = w->n_blocks, tile_bytes = 16 * tk * w->bits / 8;
    for (int64_t i = 0; i < t; i++) {
        const int64_t tile = ids[i] / 16, r = ids[i] % 16;
        float *row = x + i * k;
        for (int64_t c = 0; c < k; c++) {
            const int64_t b = c / tk, cc = c % tk;
            const uint8_t *codes = w->codes + (tile * nb + b) * tile_bytes;
            float q;
            if (w->bits == 8) {
                q = (float)(int8_t)codes[(cc / 4) * 64 + r * 4 + cc % 4];
            } else {
                const uint8_t byte = codes[(cc / 8) * 64 + r * 4 + cc % 4];
                const int u = (cc % 8) < 4 ? byte & 0xF : byte >> 4;
                q = (float)(w->asymmetric ? u : ((u ^ 8) - 8));
            }
            if (!w->group) {
                row[c] = q * hc_f16_to_f32(w->scales[tile * 16 + r]);
            } else {
                const int64_t s = (tile * nb + b) * 16 + r;
                float v = q * hc_f16_to_f32(w->scales[s]);
                if (w->asymmetric) v = v + hc_f16_to_f32(w->offsets[s]);
                row[c] = v;
            }
        }
    }
}

/* Add n passes of event row `row` (n_fields int64) to region `region`. */
static void add_events(hc_chip *c, int64_t region, const int64_t *row, int64_t n) {
    const int64_t F = c->img->info.n_fields;
    for (int64_t f = 0; f < F; f++) c->events[region * F + f] += n * row[f];
}

/* One pass of t tokens at the next positions; the head on the last row (logits into c->logits). */
static int forward(hc_chip *c, const int32_t *ids, int64_t t, int head) {
    const hc_image *img = c->img;
    const hc_image_info *I = &img->info;
    const int64_t d = I->d_model, L = I->n_layers, F = I->n_fields, start = c->position;
    embed_rows(&img->tensors[img->embed].w, ids, t, c->x);
    int rc;
    if (img->embed_scale != 1.0 && (rc = hc_scale_f32(c->x, (float)img->embed_scale, t * d)))
        return fail(rc, "embedding scale failed (status %d)", rc);
    hc_decoder_trace trace;
    memset(&trace, 0, sizeof trace);
    rc = hc_decoder_layers(&c->dec, c->x, t, start, c->n_threads, &trace);
    if (rc)
        return fail(rc, "layer %lld, %s: status %d (%s)", (long long)trace.failed_layer,
                    hc_decoder_op_name((int)trace.failed_op), rc,
                    rc == HC_ENONFINITE ? "a value overflowed to infinity or NaN" : "kernel error");
    const int64_t keys = hc_attended_keys(t, start, 0); /* every layer attends every earlier key */
    for (int64_t i = 0; i < L; i++) {
        add_events(c, i, img->events + i * F, t);
        add_events(c, i, img->events + (L + 2) * F, keys);
    }
    add_events(c, L + 1, img->events + (L + 1) * F, t);
    c->position = start + t;
    if (!head) return HC_OK;
    add_events(c, L, img->events + L * F, 1);
    if ((rc = hc_rmsnorm_f32(c->x + (t - 1) * d, img->vectors[img->output_norm].values, 1, d, (float)img->norm_eps,
                             c->h)) ||
        (rc = hc_cim_linear(&img->tensors[img->output].w, c->h, 1, img->act_group_d, c->logits, c->n_threads)) ||
        (img->final_softcap > 0 && (rc = hc_softcap_f32(c->logits, (float)img->final_softcap, I->vocab_size))))
        return fail(rc, "output head: status %d", rc);
    return HC_OK;
}

static int check_ids(const hc_chip *c, const int32_t *ids, int64_t n) {
    if (!ids || n < 1) return fail(HC_EINVAL, "expected at least one token id, got %lld", (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->img->info.vocab_size)
            return fail(HC_EINVAL, "token id %d is outside the vocabulary 0..%lld", ids[i],
                        (long long)c->img->info.vocab_size - 1);
    if (n > c->capacity - c->position)
        return fail(HC_ECAPACITY, "%lld tokens do not fit the KV cache: %lld of %lld token slots are used",
                    (long long)n, (long long)c->position, (long long)c->capacity);
    return HC_OK;
}

static int enter(hc_chip *c, const char *what) {
    if (!c) return fail(HC_EINVAL, "%s: chip is NULL", what);
    if (atomic_flag_test_and_set(&c->busy))
        return fail(HC_EBUSY, "%s: another thread is inside a call on this chip (use one chip per thread)", what);
    return HC_OK;
}

int hc_chip_prefill(hc_chip *c, const int32_t *ids, int64_t n, float *logits) {
    int rc = enter(c, "hc_chip_prefill");
    if (rc) return rc;
    memset(c->events, 0, (size_t)(c->img->info.n_regions * c->img->info.n_fields) * sizeof(int64_t));
    if (!(rc = check_ids(c, ids, n))) {
        for (int64_t s = 0; s < n && !rc; s += HC_CIM_M_CHUNK) {
            const int64_t t = n - s < HC_CIM_M_CHUNK ? n - s : HC_CIM_M_CHUNK;
            rc = forward(c, ids + s, t, s + t == n);
        }
        if (!rc && logits) memcpy(logits, c->logits, (size_t)c->img->info.vocab_size * sizeof(float));
    }
    atomic_flag_clear(&c->busy);
    return rc;
}

int hc_chip_decode(hc_chip *c, int32_t id, float *logits) {
    int rc = enter(c, "hc_chip_decode");
    if (rc) return rc;
    memset(c->events, 0, (size_t)(c->img->info.n_regions * c->img->info.n_fields) * sizeof(int64_t));
    if (!(rc = check_ids(c, &id, 1)) && !(rc = forward(c, &id, 1, 1)) && logits)
        memcpy(logits, c->logits, (size_t)c->img->info.vocab_size * sizeof(float));
    atomic_flag_clear(&c->busy);
    return rc;
}

int hc_chip_reset(hc_chip *c) {
    int rc = enter(c, "hc_chip_reset");
    if (rc) return rc;
    c->position = 0;
    memset(c->events, 0, (size_t)(c->img->info.n_regions * c->img->info.n_fields) * sizeof(int64_t));
    atomic_flag_clear(&c->busy);
    return HC_OK;
}

int64_t hc_chip_position(const hc_chip *c) {
    if (!c) return fail(HC_EINVAL, "hc_chip_position: chip is NULL");
    return c->position;
}

int hc_chip_events(const hc_chip *c, int64_t *counts, int64_t cap) {
    if (!c || !counts) return fail(HC_EINVAL, "hc_chip_events: NULL argument");
    const int64_t n = c->img->info.n_regions * c->img->info.n_fields;
    if (cap < n) return fail(HC_EINVAL, "hc_chip_events: %lld int64s given, the events need %lld", (long long)cap,
                             (long long)n);
    memcpy(counts, c->events, (size_t)n * sizeof(int64_t));
    return HC_OK;
}
