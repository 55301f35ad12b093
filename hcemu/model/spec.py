"""ModelSpec: the shape of a decoder-only transformer, the block kinds of its layers, and named presets.

A model is a spec plus a sequence of block kinds (:meth:`ModelSpec.block`): its attention variant
(biases, Q/K norms, RoPE table, sliding window, soft-capping) and its FFN (dense SwiGLU/GeGLU, or a
mixture of experts with a router and an optional shared expert). The float reference, the compiler and
the chip all read that one description; ``docs/architectures.md`` lists the architectures it covers.

Tensor names follow GGUF (``blk.{i}.attn_q.weight``, ``token_embd.weight``, ``output.weight``...).
Expert ``e`` of a mixture-of-experts layer is the matrix ``blk.{i}.ffn_gate_exps.{e}.weight`` (one
slice of GGUF's 3-D ``blk.{i}.ffn_gate_exps.weight``). Matrix shapes are given as ``(n_out, n_in)``: the
CIM product computes ``y[n_out] = W @ x[n_in]``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hcemu._validate import check_field_types, from_dict

LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
"""The seven projections of a dense Llama layer (the other block kinds are listed by
:meth:`ModelSpec.layer_matrices`)."""
LAYER_NORMS = ("attn_norm", "ffn_norm")
EXPERT_MATRICES = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
"""Per-expert matrix kinds of a mixture-of-experts layer (names ``blk.{i}.{kind}.{e}.weight``)."""

MAX_MATRICES = 1 << 22
"""Sane limit on the matrices a spec read from a file may list (:attr:`ModelSpec.n_matrices`; a 405B dense
model lists ~1.1k, a 671B mixture of experts ~47k): checked before any list of names is built, so a file
claiming 10^9 layers or experts is refused at once."""

ROPE_STYLES = ("normal", "neox")
QK_NORMS = ("none", "head", "full")
FFN_ACTS = ("silu", "gelu")
ROPE_SCALING_TYPES = ("llama3", "linear")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling.

    type ``"llama3"``: Llama 3's smooth per-frequency divisors (``factor``, ``low_freq_factor``,
    ``high_freq_factor``, ``original_context``); ``"linear"``: every frequency divided by ``factor``
    (position interpolation, GGUF ``rope.scaling.type = linear``; the other fields are unused).
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192
    type: str = "llama3"

    def __post_init__(self):
        check_field_types(self)
        if self.type not in ROPE_SCALING_TYPES:
            raise ValueError(f"RopeScaling.type must be one of {ROPE_SCALING_TYPES}, got {self.type!r}")
        if not self.factor > 0:
            raise ValueError(f"RopeScaling.factor must be positive, got {self.factor}")
        if self.type == "llama3" and not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(f"RopeScaling (llama3) needs 0 < low_freq_factor < high_freq_factor, got "
                             f"{self.low_freq_factor} and {self.high_freq_factor}")
        if self.original_context < 1:
            raise ValueError(f"RopeScaling.original_context must be positive, got {self.original_context}")


@dataclass(frozen=True)
class BlockKind:
    """What one transformer layer is made of (see :meth:`ModelSpec.block`).

    window: keys a query attends (its own included): 0 = every earlier key (full causal), else the
    last ``window`` positions (sliding window). rope: ``"global"`` or ``"local"`` — which RoPE table
    the layer uses (local: ``rope_theta_swa``, unscaled). moe: the FFN is a mixture of experts.
    """

    window: int = 0
    rope: str = "global"
    moe: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    tied_embeddings: bool = False
    max_context: int = 8192
    source: str = ""  # where the numbers come from (a config file, a GGUF path)
    # ---- block kinds beyond Llama (defaults: Llama); docs/architectures.md
    arch: str = "llama"             # GGUF general.architecture this spec describes
    rope_style: str = "normal"      # "normal": consecutive pairs (GGUF llama); "neox": halves (i, i + hd/2)
    qkv_bias: bool = False          # biases on the Q, K, V projections (qwen2)
    qk_norm: str = "none"           # RMSNorm of q and k: "head" (per head, hd weights), "full" (whole vector)
    post_norms: bool = False        # RMSNorm of the attention and FFN outputs before the residual add (gemma2/3)
    ffn_act: str = "silu"           # gate activation: "silu" (SwiGLU) or "gelu" (GeGLU, tanh approximation)
    embed_scale: float = 1.0        # token embeddings are multiplied by this (gemma: sqrt(d_model))
    attn_scale: float = 0.0         # score scale; 0 = 1 / sqrt(head_dim)
    attn_softcap: float = 0.0       # scores -> c * tanh(scores / c) before the softmax; 0 = off (gemma2)
    final_softcap: float = 0.0      # logits -> c * tanh(logits / c); 0 = off (gemma2)
    sliding_window: int = 0         # keys a sliding-window layer attends (its own included)
    swa_layers: tuple = ()          # the layers that use the sliding window
    rope_theta_swa: float = 0.0     # RoPE base of the sliding-window layers, unscaled; 0 = as the others
    n_experts: int = 0              # experts per MoE layer (0 = dense FFN in every layer)
    n_experts_used: int = 0         # experts each token is routed to (top-k)
    d_ff_expert: int = 0            # hidden width of one expert (0 = d_ff)
    d_ff_shared: int = 0            # hidden width of the shared expert (0 = none)
    shared_expert_gate: bool = False  # the shared expert's output is scaled by sigmoid(w . x) (qwen2moe)
    expert_weights_norm: bool = False  # the top-k routing weights are renormalized to sum to 1
    expert_weights_scale: float = 1.0  # routing weights are multiplied by this

    def __post_init__(self):
        check_field_types(self)
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "max_context"):
            if getattr(self, f) < 1:
                raise ValueError(f"ModelSpec.{f} must be positive, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        for f in ("rope_theta", "rope_theta_swa"):
            v = getattr(self, f)
            if not (v > 1 or (f == "rope_theta_swa" and v == 0)):
                raise ValueError(f"ModelSpec.{f} must exceed 1 (RoPE wavelengths 2*pi*theta**(2j/head_dim) grow "
                                 f"with j), got {v}")
        if not 0 < self.norm_eps < 1 or float(np.float32(self.norm_eps)) == 0:
            raise ValueError(f"ModelSpec.norm_eps must be in (0, 1) and nonzero in float32 (the vector unit's "
                             f"precision), got {self.norm_eps}")
        for f, allowed in (("rope_style", ROPE_STYLES), ("qk_norm", QK_NORMS), ("ffn_act", FFN_ACTS)):
            if getattr(self, f) not in allowed:
                raise ValueError(f"ModelSpec.{f} must be one of {allowed}, got {getattr(self, f)!r}")
        for f in ("embed_scale", "expert_weights_scale"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"ModelSpec.{f} must be a positive finite number, got {v!r}")
        for f in ("attn_scale", "attn_softcap", "final_softcap", "rope_theta_swa"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise ValueError(f"ModelSpec.{f} must be >= 0 and finite (0 = off), got {v!r}")
        for f in ("sliding_window", "n_experts", "n_experts_used", "d_ff_expert", "d_ff_shared"):
            if getattr(self, f) < 0:
                raise ValueError(f"ModelSpec.{f} must be >= 0, got {getattr(self, f)}")
        object.__setattr__(self, "swa_layers", tuple(int(i) for i in self.swa_layers))
        bad = [i for i in self.swa_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"ModelSpec.swa_layers {bad} are outside layers 0..{self.n_layers - 1}")
        if self.swa_layers and self.sliding_window < 1:
            raise ValueError("ModelSpec.swa_layers are given but sliding_window is 0")
        if self.n_experts:
            if not 1 <= self.n_experts_used <= self.n_experts:
                raise ValueError(f"ModelSpec.n_experts_used must be in 1..n_experts ({self.n_experts}), "
                                 f"got {self.n_experts_used}")
        elif self.n_experts_used or self.d_ff_shared or self.shared_expert_gate:
            raise ValueError("ModelSpec: n_experts_used, d_ff_shared and shared_expert_gate need n_experts > 0")
        if self.shared_expert_gate and not self.d_ff_shared:
            raise ValueError("ModelSpec.shared_expert_gate needs a shared expert (d_ff_shared > 0)")

    # ---- derived shapes
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def gqa_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def expert_ff(self) -> int:
        """Hidden width of one routed expert."""
        return self.d_ff_expert or self.d_ff

    @property
    def score_scale(self) -> float:
        """The attention score scale: ``attn_scale``, or ``1 / sqrt(head_dim)``."""
        return self.attn_scale or 1.0 / self.head_dim ** 0.5

    def block(self, layer: int) -> BlockKind:
        """The :class:`BlockKind` of layer ``layer``."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        swa = layer in self.swa_layers
        return BlockKind(window=self.sliding_window if swa else 0,
                         rope="local" if swa and self.rope_theta_swa else "global", moe=self.is_moe)

    def matrix_shape(self, kind: str) -> tuple[int, int]:
        """``(n_out, n_in)`` of one matrix kind: a per-layer projection, an expert's (``ffn_*_exps``),
        the router (``ffn_gate_inp``), the shared expert's (``ffn_*_shexp``, ``ffn_gate_inp_shexp``),
        ``"embedding"`` (vocab, d) or ``"output"``."""
        d, fe, fs = self.d_model, self.expert_ff, self.d_ff_shared
        shapes = {
            "attn_q": (self.q_dim, d), "attn_k": (self.kv_dim, d), "attn_v": (self.kv_dim, d),
            "attn_output": (d, self.q_dim), "ffn_gate": (self.d_ff, d), "ffn_up": (self.d_ff, d),
            "ffn_down": (d, self.d_ff), "embedding": (self.vocab_size, d), "output": (self.vocab_size, d),
            "ffn_gate_inp": (self.n_experts, d), "ffn_gate_exps": (fe, d), "ffn_up_exps": (fe, d),
            "ffn_down_exps": (d, fe), "ffn_gate_shexp": (fs, d), "ffn_up_shexp": (fs, d),
            "ffn_down_shexp": (d, fs), "ffn_gate_inp_shexp": (1, d),
        }
        try:
            return shapes[kind]
        except KeyError:
            raise ValueError(f"unknown tensor kind {kind!r}") from None

    def layer_matrix_kinds(self) -> tuple[str, ...]:
        """Kinds of the matrices every layer holds besides its experts, in the order a pass uses them:
        q, k, v, output; then the dense FFN's three, or the router and the shared expert's."""
        kinds = ["attn_q", "attn_k", "attn_v", "attn_output"]
        if not self.is_moe:
            kinds += ["ffn_gate", "ffn_up", "ffn_down"]
        else:
            kinds.append("ffn_gate_inp")
            if self.d_ff_shared:
                kinds += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
                if self.shared_expert_gate:
                    kinds.append("ffn_gate_inp_shexp")
        return tuple(kinds)

    def layer_matrices(self, layer: int):
        """Yield ``(gguf_name, kind, (n_out, n_in))`` of layer ``layer``'s matrices (experts excluded)."""
        for kind in self.layer_matrix_kinds():
            yield f"blk.{layer}.{kind}.weight", kind, self.matrix_shape(kind)

    def expert_matrices(self, layer: int, expert: int):
        """Yield ``(name, kind, (n_out, n_in))`` of one expert's gate, up and down matrices."""
        for kind in EXPERT_MATRICES:
            yield f"blk.{layer}.{kind}.{expert}.weight", kind, self.matrix_shape(kind)

    @property
    def n_matrices(self) -> int:
        """How many matrices :meth:`matrices` lists (counted, not listed)."""
        per_layer = len(self.layer_matrix_kinds()) + len(EXPERT_MATRICES) * self.n_experts
        return 1 + self.n_layers * per_layer + (0 if self.tied_embeddings else 1)

    def matrices(self):
        """Yield ``(gguf_name, kind, layer, (n_out, n_in))`` for every weight matrix, embedding first;
        per layer its :meth:`layer_matrices`, then its experts in order.

        With tied embeddings the output projection reuses ``token_embd.weight`` and is not listed twice.
        """
        yield "token_embd.weight", "embedding", None, self.matrix_shape("embedding")
        for i in range(self.n_layers):
            for name, kind, shape in self.layer_matrices(i):
                yield name, kind, i, shape
            for e in range(self.n_experts):
                for name, kind, shape in self.expert_matrices(i, e):
                    yield name, kind, i, shape
        if not self.tied_embeddings:
            yield "output.weight", "output", None, self.matrix_shape("output")

    def layer_vectors(self, layer: int):
        """Yield ``(gguf_name, kind, length)`` of layer ``layer``'s float vectors (norm weights, biases)."""
        i, d = layer, self.d_model
        yield f"blk.{i}.attn_norm.weight", "attn_norm", d
        if self.qkv_bias:
            yield f"blk.{i}.attn_q.bias", "attn_q_bias", self.q_dim
            yield f"blk.{i}.attn_k.bias", "attn_k_bias", self.kv_dim
            yield f"blk.{i}.attn_v.bias", "attn_v_bias", self.kv_dim
        if self.qk_norm != "none":
            yield f"blk.{i}.attn_q_norm.weight", "attn_q_norm", self.head_dim if self.qk_norm == "head" else self.q_dim
            yield f"blk.{i}.attn_k_norm.weight", "attn_k_norm", self.head_dim if self.qk_norm == "head" else self.kv_dim
        if self.post_norms:
            yield f"blk.{i}.post_attention_norm.weight", "attn_post_norm", d
        yield f"blk.{i}.ffn_norm.weight", "ffn_norm", d
        if self.post_norms:
            yield f"blk.{i}.post_ffw_norm.weight", "ffn_post_norm", d

    def vectors(self):
        """Yield ``(gguf_name, kind, layer, length)`` for every float vector the chip holds (RMSNorm
        weights and biases), layers first, the final norm last."""
        for i in range(self.n_layers):
            for name, kind, n in self.layer_vectors(i):
                yield name, kind, i, n
        yield "output_norm.weight", "output_norm", None, self.d_model

    def norms(self):
        """Yield ``(gguf_name, layer, length)`` for every float vector (see :meth:`vectors`)."""
        for name, _kind, layer, n in self.vectors():
            yield name, layer, n

    @property
    def layer_own_params(self) -> int:
        """Weights of one layer's own matrices (:meth:`layer_matrices`: its experts excluded)."""
        return sum(n * k for _nm, _kd, (n, k) in self.layer_matrices(0))

    @property
    def layer_params(self) -> int:
        """Weight-matrix parameters of one layer, every expert included."""
        return self.layer_own_params + self.n_experts * self.expert_params

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert (gate, up, down)."""
        return sum(n * k for _nm, _kd, (n, k) in self.expert_matrices(0, 0)) if self.is_moe else 0

    @property
    def active_layer_params(self) -> int:
        """Weights one token pass through a layer multiplies: its own and ``n_experts_used`` experts."""
        return self.layer_params - (self.n_experts - self.n_experts_used) * self.expert_params

    @property
    def n_params(self) -> int:
        """Weight-matrix parameters (norm vectors excluded, tied output counted once)."""
        emb = self.vocab_size * self.d_model
        return emb * (1 if self.tied_embeddings else 2) + self.n_layers * self.layer_params

    @property
    def n_active_params(self) -> int:
        """:attr:`n_params` less the experts one token does not use (``n_params`` for a dense model)."""
        return self.n_params - self.n_layers * (self.layer_params - self.active_layer_params)

    def kv_values_per_token(self) -> int:
        """K and V values one token adds to the cache over all layers."""
        return 2 * self.n_layers * self.kv_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """From :meth:`to_dict`'s JSON object; TypeError/ValueError name a wrong, unknown or missing field."""
        if isinstance(d, dict):
            d = dict(d)
            if d.get("rope_scaling") is not None:
                d["rope_scaling"] = from_dict(RopeScaling, d["rope_scaling"], "ModelSpec.rope_scaling")
            if "swa_layers" in d:
                if not isinstance(d["swa_layers"], list) or not all(isinstance(i, int) for i in d["swa_layers"]):
                    raise TypeError(f"ModelSpec.swa_layers must be a list of integers, got {d['swa_layers']!r}")
                d["swa_layers"] = tuple(d["swa_layers"])
        return from_dict(cls, d)


MODEL_PRESETS: dict[str, ModelSpec] = {}


def _preset(spec: ModelSpec) -> ModelSpec:
    MODEL_PRESETS[spec.name] = spec
    return spec


_preset(ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192),
                  1e-5, False, 131072, "meta-llama/Llama-3.1-8B config.json"))
_preset(ModelSpec("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 500000.0, RopeScaling(32.0, 1.0, 4.0, 8192),
                  1e-5, True, 131072, "meta-llama/Llama-3.2-1B config.json"))
_preset(ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192),
                  1e-5, False, 131072, "meta-llama/Llama-3.1-70B config.json"))
_preset(ModelSpec("mistral-large-2", 88, 12288, 96, 8, 128, 28672, 32768, 1000000.0, None, 1e-5, False, 131072,
                  "mistralai/Mistral-Large-Instruct-2407 config.json (123B dense: the 100B class without MoE)"))
_preset(ModelSpec("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 100000.0, None, 1e-5, True, 8192,
                  "HuggingFaceTB/SmolLM2-135M-Instruct config.json (= its GGUF metadata)"))
_preset(ModelSpec("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 6144, 151936, 1000000.0, None, 1e-6, False, 40960,
                  "Qwen/Qwen3-30B-A3B config.json (hidden 2048, 48 layers, 32/4 heads of 128, 128 experts of "
                  "768, 8 per token, norm_topk_prob)", arch="qwen3moe", rope_style="neox", qk_norm="head",
                  n_experts=128, n_experts_used=8, d_ff_expert=768, expert_weights_norm=True))
_preset(ModelSpec("qwen3-235b-a22b", 94, 4096, 64, 4, 128, 12288, 151936, 1000000.0, None, 1e-6, False, 40960,
                  "Qwen/Qwen3-235B-A22B config.json, as restated by the Qwen3-235B-A22B model card (94 layers, "
                  "64/4 heads, 128 experts, 8 per token), Ascend MindSpeed-RL configs/model/qwen3_235b_a22b.yaml "
                  "(num_layers 94, hidden 4096, ffn 12288, moe_ffn 1536, 64 heads, 4 query groups, kv_channels "
                  "128, vocab 151936, rotary_base 1e6, max_position 40960, eps 1e-6, untied, qk_layernorm, "
                  "norm_topk_prob) and MaxText configs/models/qwen3-235b-a22b.yml (emb 4096, mlp 1536, 64/4 "
                  "heads, 94 layers): the 100B-class mixture-of-experts preset", arch="qwen3moe",
                  rope_style="neox", qk_norm="head", n_experts=128, n_experts_used=8, d_ff_expert=1536,
                  expert_weights_norm=True))


def get_preset(name: str) -> ModelSpec:
    try:
        return MODEL_PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}") from None
