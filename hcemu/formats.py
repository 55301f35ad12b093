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


# ---- chip-to-chip links
@dataclass(frozen=True)
class LinkFormat:
    """How the residual stream crosses a chip-to-chip link (``docs/system.md``, "Link formats").

    One message carries one token's activations (``d_model`` values): ``value_bits`` per value and,
    when ``block`` > 0, one ``scale_bits`` float32 scale per ``block`` values. ``lossless``: the
    receiving die sees the sender's float32 values bit for bit.
    """

    name: str
    value_bits: int
    block: int = 0
    scale_bits: int = 0
    lossless: bool = False
    description: str = ""

    def __post_init__(self):
        if self.value_bits not in (8, 16, 32):
            raise ValueError(f"link value_bits must be 8, 16 or 32, got {self.value_bits}")
        if self.block < 0 or (self.block == 0) != (self.scale_bits == 0):
            raise ValueError(f"link format {self.name}: a block needs a scale and a scale a block "
                             f"(block {self.block}, scale_bits {self.scale_bits})")

    def message_bytes(self, n_values: int) -> int:
        """Bytes of one message carrying ``n_values`` activations (values, then block scales)."""
        n = int(n_values)
        if self.block and n % self.block:
            raise ValueError(f"link format {self.name}: {n} values are not whole blocks of {self.block}")
        blocks = n // self.block if self.block else 0
        return (n * self.value_bits + blocks * self.scale_bits) // 8


LINK_FORMATS: dict[str, LinkFormat] = {f.name: f for f in (
    LinkFormat("fp32", 32, lossless=True, description="float32 as computed: lossless, 4 bytes per value"),
    LinkFormat("bf16", 16, description="bfloat16, round to nearest even from float32: 2 bytes per value"),
    LinkFormat("int8", 8, 32, 32, description="int8 per block of 32 values with a float32 scale (the "
                                              "activation quantizer of the CIM inputs): 1.125 bytes per value"),
)}


def get_link_format(fmt) -> LinkFormat:
    """A :class:`LinkFormat` or the name of one of :data:`LINK_FORMATS`."""
    if isinstance(fmt, LinkFormat):
        return fmt
    try:
        return LINK_FORMATS[str(fmt)]
    except KeyError:
        raise ValueError(f"unknown link format {fmt!r}; known: {', '.join(LINK_FORMATS)}") from None
