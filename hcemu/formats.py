"""Number formats the chip holds, and quantization plans that assign them to a model's tensors.

These are the vocabulary shared by the kernels (:mod:`hcemu.layout`), the compiler
(:mod:`hcemu.rom`), the functional chip and the performance models. The exact arithmetic is in
``docs/numerics.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

TILE_ROWS = 16
"""Output rows per ROM tile: one CIM unit evaluates 16 rows of a tile per pass."""

CHANNEL_TILE_K = 32
"""Tile width (inputs) used for per-channel int8 weights, which have no block of their own."""

WEIGHT_GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class WeightFormat:
    """How one weight matrix is stored in ROM.

    bits: 8 or 4 (integer codes). group: inputs per scale block (32, 64, 128), or 0 for one scale per
    output channel (int8 only). asymmetric: int4 with a per-block offset (``w = d*q + m``, q in
    [0, 15], as GGUF Q4_1); otherwise symmetric two's complement (``w = d*q``).
    """

    bits: int
    group: int
    asymmetric: bool = False

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise ValueError(f"weight bits must be 4 or 8, got {self.bits}")
        if self.group != 0 and self.group not in WEIGHT_GROUPS:
            raise ValueError(f"weight group must be 0 (per channel) or one of {WEIGHT_GROUPS}, got {self.group}")
        if self.group == 0 and self.bits != 8:
            raise ValueError("per-channel scales are only defined for int8 weights")
        if self.asymmetric and self.bits != 4:
            raise ValueError("asymmetric (offset) weights are only defined for int4")

    @property
    def per_channel(self) -> bool:
        return self.group == 0

    @property
    def tile_k(self) -> int:
        """Inputs per ROM tile (the integer accumulation block of the kernels)."""
        return CHANNEL_TILE_K if self.per_channel else self.group

    @property
    def name(self) -> str:
        g = "ch" if self.per_channel else f"g{self.group}"
        return f"int{self.bits}{'a' if self.asymmetric else ''}-{g}"

    def code_bytes(self, n: int, k: int) -> int:
        """Bytes of weight codes for an ``n x k`` matrix, unpadded."""
        return n * k * self.bits // 8

    def meta_bytes(self, n: int, k: int) -> int:
        """Bytes of fp16 scales (and offsets) for an ``n x k`` matrix, unpadded."""
        blocks = n if self.per_channel else n * (k // self.group)
        return blocks * 2 * (2 if self.asymmetric else 1)

    def bits_per_weight(self, k: int) -> float:
        """Average stored bits per weight including scales, for a matrix with ``k`` inputs."""
        return 8.0 * (self.code_bytes(1, k) + self.meta_bytes(1, k)) / k


@dataclass(frozen=True)
class ActFormat:
    """How activations are quantized to int8 before each CIM product.

    granularity: ``"block"`` (one float32 scale per ``group`` inputs) or ``"token"`` (one per vector).
    """

    granularity: str = "block"
    group: int = 32

    def __post_init__(self):
        if self.granularity not in ("block", "token"):
            raise ValueError(f"activation granularity must be 'block' or 'token', got {self.granularity!r}")
        if self.granularity == "block" and self.group not in WEIGHT_GROUPS:
            raise ValueError(f"activation group must be one of {WEIGHT_GROUPS}, got {self.group}")

    def group_for(self, k: int) -> int:
        """Inputs per activation scale for a vector of ``k`` inputs."""
        return k if self.granularity == "token" else self.group

    @property
    def name(self) -> str:
        return "token" if self.granularity == "token" else f"block{self.group}"


KV_FORMATS = ("int8", "fp16")

_KV_VALUE_BYTES = {"int8": 1, "fp16": 2}
_KV_SCALE_BYTES = {"int8": 2, "fp16": 0}


def kv_bytes_per_token_layer(n_kv_heads: int, head_dim: int, fmt: str = "int8") -> int:
    """SRAM bytes one token occupies in one layer's KV cache: ``2 * Hkv * (hd * b + s)`` (K and V; int8:
    b = 1 byte per value, s = 2 bytes of fp16 scale per KV head; fp16: b = 2, s = 0)."""
    if fmt not in KV_FORMATS:
        raise ValueError(f"kv format must be one of {KV_FORMATS}, got {fmt!r}")
    return 2 * n_kv_heads * (head_dim * _KV_VALUE_BYTES[fmt] + _KV_SCALE_BYTES[fmt])


@dataclass(frozen=True)
class Plan:
    """A quantization plan: the chip format of every tensor class, activations and KV cache.

    matrices: the seven per-layer projections. embedding / output: token embedding table and
    output (LM head) matrix. kv: ``"int8"`` (one scale per token and KV head) or ``"fp16"``.
    """

    name: str
    matrices: WeightFormat
    embedding: WeightFormat
    output: WeightFormat
    activations: ActFormat = field(default_factory=ActFormat)
    kv: str = "int8"
    description: str = ""

    def __post_init__(self):
        if self.kv not in KV_FORMATS:
            raise ValueError(f"kv format must be one of {KV_FORMATS}, got {self.kv!r}")

    def format_for(self, tensor_kind: str) -> WeightFormat:
        """Format for a tensor kind: ``"embedding"``, ``"output"`` or a projection name."""
        if tensor_kind == "embedding":
            return self.embedding
        if tensor_kind == "output":
            return self.output
        return self.matrices

    def with_activations(self, act: ActFormat, name: str | None = None) -> "Plan":
        return replace(self, activations=act, name=name or self.name)


INT8_G32 = WeightFormat(8, 32)
INT4A_G32 = WeightFormat(4, 32, asymmetric=True)
INT4_G32 = WeightFormat(4, 32)
PER_TOKEN = ActFormat("token", 0)

PLANS: dict[str, Plan] = {}


def register_plan(plan: Plan) -> Plan:
    PLANS[plan.name] = plan
    return plan


register_plan(Plan("int8", INT8_G32, INT8_G32, INT8_G32, ActFormat("block", 32), "int8",
                   "int8 weights per block of 32, int8 activations per block of 32, int8 KV"))
register_plan(Plan("int4", INT4A_G32, INT8_G32, INT8_G32, ActFormat("block", 32), "int8",
                   "asymmetric int4 per block of 32 (GGUF Q4_1 imported losslessly), int8 embeddings "
                   "and output, int8 activations per block of 32, int8 KV"))
register_plan(Plan("int8-pt", INT8_G32, INT8_G32, INT8_G32, PER_TOKEN, "int8",
                   "plan int8 with one activation scale per token (cheaper silicon, less accurate)"))
register_plan(Plan("int4-pt", INT4A_G32, INT8_G32, INT8_G32, PER_TOKEN, "int8",
                   "plan int4 with one activation scale per token (cheaper silicon, less accurate)"))
register_plan(Plan("hc1-int4", WeightFormat(4, 128), WeightFormat(4, 128), WeightFormat(4, 128),
                   ActFormat("block", 128), "int8",
                   "HC1-like: symmetric int4 per block of 128 for every matrix, embedding and head (4.125 bits "
                   "per weight, standing in for HC1's unpublished 3-bit/6-bit mix: \"four bits per transistor\"), "
                   "int8 activations per block of 128, int8 KV; needs widths that are multiples of 128"))
register_plan(Plan("int4-sym", INT4_G32, INT8_G32, INT8_G32, ActFormat("block", 32), "int8",
                   "symmetric int4 per block of 32 (GGUF Q4_0 imported losslessly), int8 embeddings and "
                   "output, int8 activations per block of 32, int8 KV"))


def get_plan(name: str) -> Plan:
    try:
        return PLANS[name]
    except KeyError:
        raise ValueError(f"unknown plan {name!r}; known plans: {', '.join(sorted(PLANS))}") from None


# ----------------------------------------------------------------------------------------------
# LoRA adapters in SRAM (docs/numerics.md "LoRA adapters")

ADAPTER_FORMATS = ("int8", "fp16")
"""How an adapter's A and B are held in SRAM: ``"int8"`` (default) or ``"fp16"``."""

ADAPTER_BLOCK = 32
"""Inputs per fp16 scale of an int8 adapter matrix (when the matrix's input width allows it)."""


def adapter_weight_format(k: int) -> WeightFormat:
    """The int8 format of an adapter matrix with ``k`` inputs: int8 per block of 32 inputs when 32
    divides ``k`` (A over the model's widths; B when the rank is a multiple of 32), else one fp16 scale
    per row (B of rank 8 or 16: its row of r values is one block)."""
    return WeightFormat(8, ADAPTER_BLOCK) if k % ADAPTER_BLOCK == 0 else WeightFormat(8, 0)


def _check_adapter_format(fmt: str) -> str:
    if fmt not in ADAPTER_FORMATS:
        raise ValueError(f"adapter format must be one of {ADAPTER_FORMATS}, got {fmt!r}")
    return fmt


def adapter_matrix_bytes(fmt: str, n: int, k: int) -> int:
    """SRAM bytes of one ``n x k`` adapter matrix: int8 codes plus fp16 scales
    (:func:`adapter_weight_format`), or fp16 values."""
    if _check_adapter_format(fmt) == "fp16":
        return 2 * n * k
    wf = adapter_weight_format(k)
    return wf.code_bytes(n, k) + wf.meta_bytes(n, k)


def adapter_sram_bytes(fmt: str, n: int, k: int, rank: int) -> int:
    """SRAM bytes of one adapted ``n x k`` matrix of rank ``rank``: A (rank x k) and B (n x rank)."""
    return adapter_matrix_bytes(fmt, rank, k) + adapter_matrix_bytes(fmt, n, rank)
