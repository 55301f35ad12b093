# Declarations of csrc/hcemu.h for the Cython wrappers (each section mirrors one in the header).
from libc.stdint cimport int8_t, uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef extern from "hcemu.h" nogil:
    int HC_OK, HC_EINVAL, HC_ENOMEM, HC_EUNSUPPORTED, HC_ENONFINITE, HC_ECAPACITY
    ctypedef enum hc_isa:
        HC_ISA_SCALAR, HC_ISA_AVX2, HC_ISA_AVXVNNI, HC_ISA_AVX512VNNI, HC_ISA_COUNT
    unsigned hc_isa_supported()
    hc_isa hc_isa_active()
    int hc_isa_set(hc_isa isa)
    const char *hc_isa_name(hc_isa isa)

# ---- vector unit (csrc/hc_vec.c) and SRAM KV cache + streaming attention (csrc/hc_attn.c)
cdef extern from "hcemu.h" nogil:
    float hc_exp_f32(float x)
    uint16_t hc_f32_to_f16(float x)
    float hc_f16_to_f32(uint16_t h)
    void hc_f32_to_f16_array(const float *x, int64_t n, uint16_t *out)
    void hc_exp_f32_array(const float *x, int64_t n, float *out)
    int hc_rmsnorm_f32(const float *x, const float *w, int64_t m, int64_t d, float eps, float *y)
    int hc_rope_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                    int64_t hd, float *y)
    int hc_silu_mul_f32(const float *g, const float *u, int64_t n, float *y)
    int hc_add_f32(float *x, const float *y, int64_t n)
    int hc_rope_style_f32(const float *x, const float *cos_t, const float *sin_t, int64_t t, int64_t heads,
                          int64_t hd, int neox, float *y)
    int hc_gelu_mul_f32(const float *g, const float *u, int64_t n, float *y)
    int hc_add_rows_f32(float *x, const float *b, int64_t m, int64_t n)
    int hc_scale_f32(float *x, float s, int64_t n)
    int hc_softcap_f32(float *x, float cap, int64_t n)
    int hc_moe_route_f32(const float *logits, int64_t t, int64_t n_experts, int k, int norm, float scale,
                         int32_t *sel, float *w)
    int hc_axpy_rows_f32(float *y, const float *x, const float *w, int64_t m, int64_t n)
    int hc_sigmoid_f32(float *x, int64_t n)

    int HC_ATTN_BLOCK, HC_ATTN_MAX_HEAD_DIM
    int hc_kv_store_i8(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos,
                       int64_t capacity, int8_t *codes, uint16_t *scales)
    int hc_kv_store_f16(const float *x, int64_t t, int n_kv_heads, int hd, int64_t pos,
                        int64_t capacity, uint16_t *values)
    int hc_attn_i8(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                   const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
                   int64_t capacity, float *out)
    int hc_attn_f16(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                    const uint16_t *k, const uint16_t *v, int64_t capacity, float *out)
    int hc_attn_qk_i8(hc_isa isa, const int8_t *q, const int8_t *k, int64_t n, int hd, int32_t *out)
    int64_t hc_attended_keys(int64_t t, int64_t start, int64_t window) nogil
    ctypedef struct hc_attn_opts:
        float scale
        float softcap
        int64_t window
    int hc_attn_i8_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                        const int8_t *k, const uint16_t *k_scale, const int8_t *v, const uint16_t *v_scale,
                        int64_t capacity, const hc_attn_opts *opts, float *out)
    int hc_attn_f16_opts(const float *q, int64_t t, int n_heads, int n_kv_heads, int hd, int64_t start,
                         const uint16_t *k, const uint16_t *v, int64_t capacity, const hc_attn_opts *opts,
                         float *out)
# ---- compute-in-memory products (csrc/hc_cim.c)
cdef extern from "hcemu.h" nogil:
    int HC_CIM_M_CHUNK, HC_MAX_THREADS
    ctypedef struct hc_weights:
        int bits
        int group
        int asymmetric
        int64_t n, k
        int64_t n_row_tiles
        int64_t n_blocks
        const uint8_t *codes
        const uint16_t *scales
        const uint16_t *offsets
        int block
        int super_k, sub_k
        int bias
        int scale_kind
        int offset_kind
        const uint8_t *lut
        int has_subscales, has_submins
        float tensor_scale
    ctypedef int (*hc_cim_fn)(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                              int64_t act_group, float *y, int32_t *dots, int n_threads)
    int hc_weights_check(const hc_weights *w)
    int hc_quantize_act(const float *x, int64_t m, int64_t k, int64_t group, int8_t *q, float *scales)
    int hc_cim_matmul(const hc_weights *w, const int8_t *q, const float *act_scales, int64_t m,
                      int64_t act_group, float *y, int n_threads)
    int hc_cim_linear(const hc_weights *w, const float *x, int64_t m, int64_t act_group, float *y,
                      int n_threads)
    hc_cim_fn hc_cim_kernel(const hc_weights *w, hc_isa isa)
    int hc_openmp()
# ---- LoRA adapters in SRAM (csrc/hc_lora.c)
cdef extern from "hcemu.h" nogil:
    ctypedef struct hc_adapter:
        int64_t n, k, rank
        int fp16
        const hc_weights *a
        const hc_weights *b
        const float *a32
        const float *b32
    int HC_ADAPTERS_MAX
    ctypedef struct hc_adapter_slot:
        int n
        const hc_adapter *a[8]
    int hc_adapter_check(const hc_adapter *ad)
    int hc_adapter_apply(const hc_adapter *ad, const int8_t *q, const float *act_scales, int64_t act_group,
                         const float *x, int64_t m, float *y, int64_t ldy)

# ---- the benchmarks' bandwidth peer (csrc/hc_bench.c)
cdef extern from "hcemu.h" nogil:
    uint64_t hc_stream_read(const uint8_t *p, int64_t nbytes, int n_threads)
# ---- decoder layers as one compiled pass (csrc/hc_chip.c)
cdef extern from "hcemu.h" nogil:
    ctypedef struct hc_layer:
        const float *attn_norm
        const float *ffn_norm
        const hc_weights *wq
        const hc_weights *wk
        const hc_weights *wv
        const hc_weights *wo
        const hc_weights *wg
        const hc_weights *wu
        const hc_weights *wd
        int8_t *k_codes
        int8_t *v_codes
        uint16_t *k_scales
        uint16_t *v_scales
        uint16_t *k16
        uint16_t *v16
        const float *bq
        const float *bk
        const float *bv
        const float *q_norm
        const float *k_norm
        const float *attn_post_norm
        const float *ffn_post_norm
        const float *rope_cos
        const float *rope_sin
        int64_t window
        const hc_weights *router
        const hc_weights *const *exp_gate
        const hc_weights *const *exp_up
        const hc_weights *const *exp_down
        const hc_weights *shared_gate
    ctypedef struct hc_decoder:
        int64_t n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff
        float norm_eps
        int64_t act_group_d, act_group_q, act_group_f
        int kv_int8
        int64_t kv_capacity
        const float *rope_cos
        const float *rope_sin
        const hc_layer *layers
        int rope_neox
        int ffn_gelu
        int qk_norm_full
        float attn_scale, attn_softcap
        int64_t n_experts, n_experts_used, d_ff_expert, d_ff_shared
        int64_t act_group_fe, act_group_fs
        int expert_norm
        float expert_scale
        int32_t *routes
        const hc_adapter_slot *adapters
        int (*remote_expert)(void *ctx, int64_t layer, int64_t expert, const float *h, int64_t n,
                             float *out) noexcept nogil
        void *remote_ctx
    int HC_DEC_OP_COUNT
    ctypedef struct hc_decoder_trace:
        int profile
        int64_t failed_layer, failed_op
        double seconds
        int64_t calls
        double op_seconds[12]
        int64_t op_calls[12]
    const char *hc_decoder_op_name(int op)
    int hc_decoder_check(const hc_decoder *m)
    int hc_decoder_layers(const hc_decoder *m, float *x, int64_t t, int64_t start, int n_threads,
                          hc_decoder_trace *trace)
