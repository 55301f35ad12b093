"""Test helpers: write a tiny Llama GGUF with random weights (no dependency on the 98 MB SmolLM2 file)."""
from __future__ import annotations

import numpy as np

from hcemu.model.spec import ModelSpec

TINY_SPEC = ModelSpec("tiny-llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
                      vocab_size=80, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False, max_context=256)

# tensor kind -> ggml type written (everything else F32)
DEFAULT_TYPES = {"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q8_0", "attn_v": "Q4_1", "attn_output": "F32",
                 "ffn_gate": "Q4_1", "ffn_up": "Q8_0", "ffn_down": "F32", "output": "Q8_0"}


def tiny_weights(spec: ModelSpec = TINY_SPEC, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights ``name -> (n_out, n_in)`` / ``(n,)`` with Llama-like scales."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, kind, _layer, (n, k) in spec.matrices():
        std = 0.5 if kind in ("embedding", "output") else 1.0 / np.sqrt(k)
        w[name] = (rng.standard_normal((n, k)) * std).astype(np.float32)
    for name, _layer, n in spec.norms():
        w[name] = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    return w


def write_tiny_gguf(path, spec: ModelSpec = TINY_SPEC, types: dict | None = None, seed: int = 0,
                    arch: str = "llama", rope_freqs: np.ndarray | None = None, tokenizer: bool = False,
                    extra_kv: dict | None = None):
    """Write a GGUF for ``spec``; returns the float32 weights *as stored* (after quantisation)."""
    import gguf

    types = dict(DEFAULT_TYPES if types is None else types)
    w = tiny_weights(spec, seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(spec.name)
    writer.add_block_count(spec.n_layers)
    writer.add_context_length(spec.max_context)
    writer.add_embedding_length(spec.d_model)
    writer.add_feed_forward_length(spec.d_ff)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, int(value))
    if tokenizer:
        toks = [chr(0x100 + i) if i >= 2 else ["<s>", "</s>"][i] for i in range(spec.vocab_size)]
        toks[-1] = chr(0x102) + chr(0x103)  # the one merge below
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt2")
        writer.add_token_list(toks)
        writer.add_token_merges([chr(0x102) + " " + chr(0x103)])
        writer.add_token_types([3, 3] + [1] * (spec.vocab_size - 2))
    stored = {}
    for name, arr in w.items():
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        ty = types.get(kind, "F32") if arr.ndim == 2 else "F32"
        if ty == "F32":
            writer.add_tensor(name, arr)
            stored[name] = arr
        elif ty == "F16":
            writer.add_tensor(name, arr.astype(np.float16))
            stored[name] = arr.astype(np.float16).astype(np.float32)
        elif ty == "BF16":
            bits = (arr.view(np.uint32) >> 16).astype(np.uint16)  # truncation: a valid bf16 value
            writer.add_tensor(name, bits.view(np.uint8).reshape(arr.shape[0], -1), raw_dtype=gguf.GGMLQuantizationType.BF16)
            stored[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            qt = gguf.GGMLQuantizationType[ty]
            if ty in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "NVFP4"):  # gguf has no quantizer for these
                from hcemu.rom import blocks
                q = blocks.encode(blocks.quantize(arr, ty, tensor_scale=1.0 if ty == "NVFP4" else None), ty)
            elif ty == "IQ4_NL":  # a type hcemu does not read (for the error tests): valid zero blocks
                q = np.zeros((arr.shape[0], arr.shape[1] // 32 * 18), np.uint8)
            else:
                q = gguf.quants.quantize(arr, qt)
            writer.add_tensor(name, q, raw_dtype=qt)
            stored[name] = gguf.quants.dequantize(q, qt).astype(np.float32).reshape(arr.shape)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored
