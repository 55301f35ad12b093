"""The GGUF architectures hcemu reads, and what each one means in :class:`ModelSpec` terms.

One row per ``general.architecture`` value: the RoPE pairing its GGUF files need, the block kinds
(biases, Q/K norms, post-norms, activation, embedding scale, soft-capping, sliding windows) and, for
mixture-of-experts models, how routing weights are normalized and whether a shared expert exists. The
values follow llama.cpp's model definitions (``src/models/<arch>.cpp``), the peer hcemu is checked
against (``tests/test_peer_llamacpp.py``); ``docs/architectures.md`` is the table for users.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """What a GGUF architecture fixes (the rest comes from its metadata keys).

    rope_style: ``"normal"`` (consecutive pairs) or ``"neox"`` (halves). qkv_bias: Q/K/V biases.
    qk_norm: ``"none"``, ``"head"`` (per-head RMSNorm of q and k) or ``"full"`` (over the whole q/k).
    post_norms: RMSNorm of the attention and FFN outputs (gemma). ffn_act: ``"silu"``/``"gelu"``.
    scale_embeddings: multiply token embeddings by ``sqrt(d_model)``. softcap: attention and final
    logit soft-capping with these defaults (0: none) unless the file says otherwise. swa_period:
    sliding-window layers by default every layer ``i`` with ``i % period < period - 1`` (0: none);
    swa_rope_theta: their RoPE base (0: the model's). moe: ``"none"`` (dense), ``"optional"`` (MoE
    when the file has ``expert_count``), ``"required"``. expert_weights_norm: renormalize the top-k
    weights. shared_expert: a shared expert with a sigmoid gate. fused_ffn_up: the gate and up
    projections are one ``ffn_up`` tensor of ``2 * d_ff`` rows (gate first; split on import).
    """

    name: str
    rope_style: str = "neox"
    qkv_bias: bool = False
    qk_norm: str = "none"
    post_norms: bool = False
    ffn_act: str = "silu"
    scale_embeddings: bool = False
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    swa_period: int = 0
    swa_rope_theta: float = 0.0
    moe: str = "none"
    expert_weights_norm: bool = False
    shared_expert: bool = False
    fused_ffn_up: bool = False


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("llama", rope_style="normal", moe="optional", expert_weights_norm=True),
    Architecture("qwen2", qkv_bias=True),
    Architecture("qwen3", qk_norm="head"),
    Architecture("phi3", fused_ffn_up=True),
    Architecture("gemma2", post_norms=True, ffn_act="gelu", scale_embeddings=True, attn_softcap=50.0,
                 final_softcap=30.0, swa_period=2),
    Architecture("gemma3", qk_norm="head", post_norms=True, ffn_act="gelu", scale_embeddings=True,
                 swa_period=6, swa_rope_theta=10000.0),
    Architecture("qwen2moe", qkv_bias=True, moe="required", shared_expert=True),
    Architecture("qwen3moe", qk_norm="head", moe="required", expert_weights_norm=True),
    Architecture("olmoe", qk_norm="full", moe="required"),
)}
"""Every architecture :class:`hcemu.model.GGUFSource` reads, by ``general.architecture``."""


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"architecture {name!r} is not supported; supported: "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None
