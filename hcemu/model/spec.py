"""ModelSpec: the shape of a Llama-family model, and named presets.

Tensor names follow GGUF (``blk.{i}.attn_q.weight``, ``token_embd.weight``, ``output.weight``...).
Matrix shapes are given as ``(n_out, n_in)``: the CIM product computes ``y[n_out] = W @ x[n_in]``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

LAYER_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYER_NORMS = ("attn_norm", "ffn_norm")


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling ("rope_type": "llama3")."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


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

    def __post_init__(self):
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "max_context"):
            if getattr(self, f) < 1:
                raise ValueError(f"ModelSpec.{f} must be positive, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

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

    def matrix_shape(self, kind: str) -> tuple[int, int]:
        """``(n_out, n_in)`` of one per-layer projection, ``"embedding"`` (vocab, d) or ``"output"``."""
        d = self.d_model
        shapes = {
            "attn_q": (self.q_dim, d), "attn_k": (self.kv_dim, d), "attn_v": (self.kv_dim, d),
            "attn_output": (d, self.q_dim), "ffn_gate": (self.d_ff, d), "ffn_up": (self.d_ff, d),
            "ffn_down": (d, self.d_ff), "embedding": (self.vocab_size, d), "output": (self.vocab_size, d),
        }
        try:
            return shapes[kind]
        except KeyError:
            raise ValueError(f"unknown tensor kind {kind!r}") from None

    def matrices(self):
        """Yield ``(gguf_name, kind, layer, (n_out, n_in))`` for every weight matrix, embedding first.

        With tied embeddings the output projection reuses ``token_embd.weight`` and is not listed twice.
        """
        yield "token_embd.weight", "embedding", None, self.matrix_shape("embedding")
        for i in range(self.n_layers):
            for kind in LAYER_MATRICES:
                yield f"blk.{i}.{kind}.weight", kind, i, self.matrix_shape(kind)
        if not self.tied_embeddings:
            yield "output.weight", "output", None, self.matrix_shape("output")

    def norms(self):
        """Yield ``(gguf_name, layer, length)`` for every RMSNorm weight vector."""
        for i in range(self.n_layers):
            for kind in LAYER_NORMS:
                yield f"blk.{i}.{kind}.weight", i, self.d_model
        yield "output_norm.weight", None, self.d_model

    @property
    def layer_params(self) -> int:
        return sum(n * k for n, k in (self.matrix_shape(m) for m in LAYER_MATRICES))

    @property
    def n_params(self) -> int:
        """Weight-matrix parameters (norm vectors excluded, tied output counted once)."""
        emb = self.vocab_size * self.d_model
        return emb * (1 if self.tied_embeddings else 2) + self.n_layers * self.layer_params

    def kv_values_per_token(self) -> int:
        """K and V values one token adds to the cache over all layers."""
        return 2 * self.n_layers * self.kv_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        if d.get("rope_scaling"):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)


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


def get_preset(name: str) -> ModelSpec:
    try:
        return MODEL_PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(MODEL_PRESETS))}") from None
