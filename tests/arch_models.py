"""Test helpers: small GGUFs of every supported architecture, with random weights of realistic scales.

Each model is a few layers of width 64-96 over the SmolLM2 tokenizer (49152 tokens, copied from the
cached SmolLM2 GGUF): seconds to write, and llama.cpp runs them. The scales make next-token
distributions peaked as a trained model's are (logits of standard deviation ~4 over the vocabulary),
routers decisive (router logits of standard deviation ~2), each layer's update a fraction of the
residual stream (GPT-2's output-projection scaling), and biases, soft-caps and sliding windows matter
within a 40-token sequence.

``write_arch_gguf`` writes the tensors in the layout llama.cpp's converter gives each architecture:
phi3's fused ``attn_qkv`` and ``ffn_up`` (gate rows first), 3-D ``ffn_*_exps`` experts, the 1-D
``ffn_gate_inp_shexp``, tied embeddings where the architecture ties them. ``types="Q8_0"`` quantizes
every matrix the way ``llama-quantize`` does for Q8_0 (routers and vectors stay F32).
"""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from hcemu.model.architectures import get_architecture
from hcemu.model.spec import ModelSpec

VOCAB = 49152


def _spec(name, arch, **kw):
    A = get_architecture(arch)
    base = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128, vocab_size=VOCAB,
                rope_theta=10000.0, norm_eps=1e-6, tied_embeddings=False, max_context=512, arch=arch,
                rope_style=A.rope_style, qkv_bias=A.qkv_bias, qk_norm=A.qk_norm, post_norms=A.post_norms,
                ffn_act=A.ffn_act, expert_weights_norm=A.expert_weights_norm and bool(kw.get("n_experts")))
    if A.scale_embeddings:
        base["embed_scale"] = float(np.sqrt(np.float32(kw.get("d_model", 64))))
    base.update(kw)
    return ModelSpec(name, **base)


ARCH_SPECS: dict[str, ModelSpec] = {s.name: s for s in (
    _spec("llama", "llama", rope_theta=1000000.0),   # Mistral-like: GQA, a large RoPE base
    _spec("llama-linear", "llama", rope_scaling=None),  # linear RoPE scaling (set below)
    _spec("qwen2", "qwen2", tied_embeddings=True),
    _spec("qwen3", "qwen3", head_dim=32, tied_embeddings=True, rope_theta=1000000.0),
    _spec("phi3", "phi3", d_model=96, n_heads=4, n_kv_heads=4, head_dim=24, d_ff=160),
    _spec("gemma2", "gemma2", n_layers=4, head_dim=32, tied_embeddings=True, attn_softcap=5.0,
          final_softcap=15.0, sliding_window=8, swa_layers=(0, 2)),
    _spec("gemma3", "gemma3", n_layers=6, head_dim=32, tied_embeddings=True, sliding_window=8,
          swa_layers=(0, 1, 2, 3, 4), rope_theta=1000000.0, rope_theta_swa=10000.0),
    _spec("qwen2moe", "qwen2moe", n_experts=8, n_experts_used=2, d_ff_expert=32, d_ff_shared=64,
          shared_expert_gate=True),
    _spec("qwen3moe", "qwen3moe", n_experts=8, n_experts_used=2, d_ff_expert=32, tied_embeddings=True),
    _spec("olmoe", "olmoe", n_kv_heads=4, n_experts=8, n_experts_used=2, d_ff=32),
    _spec("mixtral", "llama", n_experts=4, n_experts_used=2, d_ff=64, rope_theta=1000000.0),
)}
ARCH_SPECS["llama-linear"] = replace(ARCH_SPECS["llama-linear"], rope_scaling=__import__(
    "hcemu.model.spec", fromlist=["RopeScaling"]).RopeScaling(4.0, type="linear"))

# standard deviations (before the 1/sqrt(n_in) of projections)
OUTPUT_RMS = 4.0        # logits' standard deviation after the final norm
ROUTER_RMS = 2.0        # router logits' standard deviation
BIAS_STD = 0.5
RESIDUAL_PROJECTIONS = ("attn_output", "ffn_down", "ffn_down_exps", "ffn_down_shexp")
"""Matrices writing into the residual stream: std ``1 / sqrt(n_in * 2 n_layers)`` (GPT-2's initialization),
so each layer updates the stream by a fraction of its size, as in trained models (and a token routed to
a near-tied other expert moves its hidden state by that fraction, not by the whole stream)."""
NORM_STD = 0.1


def arch_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights by the spec's names: matrices ``(n_out, n_in)``, vectors ``(n,)``."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, kind, _layer, (n, k) in spec.matrices():
        if kind in ("embedding", "output"):
            std = OUTPUT_RMS / np.sqrt(spec.d_model)
        elif kind == "ffn_gate_inp":
            std = ROUTER_RMS / np.sqrt(k)
        elif kind in RESIDUAL_PROJECTIONS:  # GPT-2's scaling of the projections into the residual stream
            std = 1.0 / np.sqrt(k) / np.sqrt(2 * spec.n_layers)
        else:
            std = 1.0 / np.sqrt(k)
        w[name] = (rng.standard_normal((n, k)) * std).astype(np.float32)
    for name, kind, _layer, n in spec.vectors():
        if kind.endswith("_bias"):
            w[name] = (BIAS_STD * rng.standard_normal(n)).astype(np.float32)
        else:
            w[name] = (1.0 + NORM_STD * rng.standard_normal(n)).astype(np.float32)
    return w


@functools.lru_cache(maxsize=2)
def smollm2_tokenizer_kv(path: str) -> tuple:
    """The ``tokenizer.*`` metadata of a GGUF file, as ``(key, gguf value type, value)`` triples."""
    import gguf

    r = gguf.GGUFReader(path, "r")
    out = []
    for key, field in r.fields.items():
        if not key.startswith("tokenizer."):
            continue
        if key == "tokenizer.chat_template":
            continue
        vtype = field.types[0]
        out.append((key, vtype, field.contents(), field.types[1] if len(field.types) > 1 else None))
    return tuple(out)


def file_tensors(spec: ModelSpec, w: dict) -> dict[str, np.ndarray]:
    """The tensors a converter writes for ``spec``: fused where the architecture fuses them."""
    A = get_architecture(spec.arch)
    out = {}
    for i in range(spec.n_layers):
        pre = f"blk.{i}."
        if A.name == "phi3":
            out[pre + "attn_qkv.weight"] = np.concatenate([w[pre + f"attn_{x}.weight"] for x in "qkv"])
            out[pre + "ffn_up.weight"] = np.concatenate([w[pre + "ffn_gate.weight"], w[pre + "ffn_up.weight"]])
            skip = {pre + f"attn_{x}.weight" for x in "qkv"} | {pre + "ffn_gate.weight", pre + "ffn_up.weight"}
        else:
            skip = set()
        for name in [n for n in w if n.startswith(pre) and n not in skip]:
            parts = name.split(".")
            if parts[2].endswith("_exps"):
                merged = pre + parts[2] + ".weight"
                if merged not in out:
                    out[merged] = np.stack([w[f"{pre}{parts[2]}.{e}.weight"] for e in range(spec.n_experts)])
            elif parts[2] == "ffn_gate_inp_shexp":
                out[name] = w[name].reshape(-1)
            else:
                out[name] = w[name]
    for name in ("token_embd.weight", "output.weight", "output_norm.weight"):
        if name in w:
            out[name] = w[name]
    return out


def write_arch_gguf(path, spec: ModelSpec, w: dict, tokenizer_gguf=None, types: str = "F32",
                    legacy_experts: bool = False) -> dict:
    """Write ``spec`` with weights ``w`` (see :func:`arch_weights`) to ``path``; matrices F32 or Q8_0;
    the tokenizer of ``tokenizer_gguf`` (None: no tokenizer, hcemu needs none); ``legacy_experts``:
    one tensor per expert (``blk.{i}.ffn_gate.{e}.weight``, early Mixtral files) instead of 3-D ones.

    Returns the float32 values of every spec tensor as stored (after Q8_0 rounding)."""
    import gguf

    a = spec.arch + "."
    wr = gguf.GGUFWriter(str(path), spec.arch)
    wr.add_name(spec.name)
    wr.add_uint32(a + "block_count", spec.n_layers)
    wr.add_uint32(a + "context_length", spec.max_context)
    wr.add_uint32(a + "embedding_length", spec.d_model)
    wr.add_uint32(a + "feed_forward_length", spec.d_ff)
    wr.add_uint32(a + "attention.head_count", spec.n_heads)
    wr.add_uint32(a + "attention.head_count_kv", spec.n_kv_heads)
    wr.add_uint32(a + "attention.key_length", spec.head_dim)
    wr.add_uint32(a + "attention.value_length", spec.head_dim)
    wr.add_uint32(a + "rope.dimension_count", spec.head_dim)
    wr.add_float32(a + "rope.freq_base", spec.rope_theta)
    wr.add_float32(a + "attention.layer_norm_rms_epsilon", spec.norm_eps)
    if spec.rope_scaling is not None:
        wr.add_string(a + "rope.scaling.type", spec.rope_scaling.type)
        wr.add_float32(a + "rope.scaling.factor", spec.rope_scaling.factor)
    if spec.sliding_window:
        wr.add_uint32(a + "attention.sliding_window", spec.sliding_window)
        wr.add_array(a + "attention.sliding_window_pattern",
                     [i in spec.swa_layers for i in range(spec.n_layers)])
    if spec.attn_softcap:
        wr.add_float32(a + "attn_logit_softcapping", spec.attn_softcap)
    if spec.final_softcap:
        wr.add_float32(a + "final_logit_softcapping", spec.final_softcap)
    if spec.n_experts:
        wr.add_uint32(a + "expert_count", spec.n_experts)
        wr.add_uint32(a + "expert_used_count", spec.n_experts_used)
        if spec.d_ff_expert:
            wr.add_uint32(a + "expert_feed_forward_length", spec.d_ff_expert)
        if spec.d_ff_shared:
            wr.add_uint32(a + "expert_shared_feed_forward_length", spec.d_ff_shared)
    for key, vtype, value, sub in (smollm2_tokenizer_kv(str(tokenizer_gguf)) if tokenizer_gguf else ()):
        if key == "tokenizer.ggml.tokens" and spec.arch == "phi3":
            # llama.cpp's vocabulary loader looks these up in phi3 files: they replace SmolLM2's last three
            value = list(value[:-3]) + ["</s>", "<s>", "<unk>"]
        if vtype == gguf.GGUFValueType.ARRAY:
            wr.add_array(key, value) if sub == gguf.GGUFValueType.STRING else wr.add_key_value(
                key, value, vtype, sub_type=sub)
        else:
            wr.add_key_value(key, value, vtype)
    stored_file = {}
    tensors = file_tensors(spec, w)
    if legacy_experts:
        for name in [n for n in tensors if n.startswith("blk.") and n.split(".")[2].endswith("_exps")]:
            pre, kind = name.rsplit(".", 2)[0], name.split(".")[2]
            for e, m in enumerate(tensors.pop(name)):
                tensors[f"{pre}.{kind[:-5]}.{e}.weight"] = m
    for name, arr in tensors.items():
        q8 = types == "Q8_0" and arr.ndim >= 2 and "ffn_gate_inp" not in name
        if q8:
            qt = gguf.GGMLQuantizationType.Q8_0
            q = gguf.quants.quantize(arr, qt)
            wr.add_tensor(name, q, raw_dtype=qt)
            stored_file[name] = gguf.quants.dequantize(q, qt).astype(np.float32).reshape(arr.shape)
        else:
            wr.add_tensor(name, np.ascontiguousarray(arr, np.float32))
            stored_file[name] = arr
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return stored_file
