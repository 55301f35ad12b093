"""Number formats the chip holds, and quantization plans that assign them to a model's tensors.

These are the vocabulary shared by the kernels (:mod:`hcemu.layout`), the compiler
(:mod:`hcemu.rom`), the functional chip and the performance models. The exact arithmetic is in
``docs/numerics.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from hcemu._validate import check_field_types

TILE_ROWS = 16
"""Output rows per ROM tile: one CIM unit evaluates 16 rows of a tile per pass."""

CHANNEL_TILE_K = 32
"""Tile width (inputs) used for per-channel int8 weights, which have no block of their own."""

WEIGHT_GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class BlockKind:
    """One GGUF block format as the ROM holds it (k-quants, legacy 5-bit, 4-bit floats).

    Read everywhere a format's arithmetic, sizes or costs are needed (docs/numerics.md "Block
    formats"). Weights come in *super-blocks* of ``super_k`` inputs (the GGUF block), split into
    sub-blocks of ``sub_k`` inputs. A weight is ``w = (d * sc) * v (+ o * mn)``: ``v`` the integer
    value of its code, ``sc``/``mn`` the integer sub-scale/sub-min of its sub-block, ``d``/``o`` the
    super-block's float scale and offset multiplier (see ``scale``, ``offset``).

    ggml_type: the GGUF type name. code_bits: bits per code in the file and in a dense ROM.
    slot_bits: bits a code takes in the host tile layout (4: nibble, 8: byte; hcemu.layout).
    bias: the unsigned code ``u = v + bias`` (in [0, 63]) the kernels multiply; for every kind but
    the FP4 ones ``u`` is the stored code, for FP4 ``v`` is ``FP4_VALUES[code]`` (e2m1, doubled).
    sub_scale_bits / sub_min_bits: widths of the integer sub-scales and sub-mins in the file (0: none,
    sc = 1). sub_scale_signed: sub-scales are two's complement. scale: ``"f16"`` (fp16 d per
    super-block), ``"e8m0"`` (power of two per sub-block), ``"ue4m3"`` (fp8 per sub-block, float
    sub-scale: no integer sc). offset: ``"none"``, ``"dmin"`` (fp16 dmin per super-block, o = -dmin:
    ``w = d*sc*v - dmin*mn``) or ``"min"`` (fp16 m per block with mn = 1: ``w = d*v + m``).
    meta_bits: bits of every level of scales per super-block (sub-scales, sub-mins, d, dmin).
    """

    name: str
    ggml_type: str
    code_bits: int
    slot_bits: int
    super_k: int
    sub_k: int
    bias: int
    sub_scale_bits: int
    sub_min_bits: int
    sub_scale_signed: bool
    scale: str
    offset: str
    meta_bits: int
    float_codes: bool = False

    @property
    def subs_per_block(self) -> int:
        """Sub-blocks per activation block of 32 inputs (1 or 2)."""
        return 32 // self.sub_k

    @property
    def blocks_per_super(self) -> int:
        """32-input blocks per super-block."""
        return self.super_k // 32

    @property
    def has_subscales(self) -> bool:
        return self.sub_scale_bits > 0

    @property
    def has_submins(self) -> bool:
        return self.sub_min_bits > 0

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight: codes plus every level of scales."""
        return self.code_bits + self.meta_bits / self.super_k

    @property
    def code_range(self) -> tuple[int, int]:
        """Range of the stored codes."""
        return 0, (1 << self.code_bits) - 1


FP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
"""e2m1 codes 0..15 -> twice their value (the integer the kernels multiply; as GGUF's kvalues)."""

BLOCK_KINDS: dict[str, BlockKind] = {k.name: k for k in (
    #         name     ggml    code slot super sub bias scb smb signed scale    offset  meta
    BlockKind("q2_k", "Q2_K", 2, 4, 256, 16, 0, 4, 4, False, "f16", "dmin", 16 * 8 + 32),
    BlockKind("q3_k", "Q3_K", 3, 4, 256, 16, 4, 6, 0, True, "f16", "none", 16 * 6 + 16),
    BlockKind("q4_k", "Q4_K", 4, 4, 256, 32, 0, 6, 6, False, "f16", "dmin", 8 * 12 + 32),
    BlockKind("q5_k", "Q5_K", 5, 8, 256, 32, 0, 6, 6, False, "f16", "dmin", 8 * 12 + 32),
    BlockKind("q6_k", "Q6_K", 6, 8, 256, 16, 32, 8, 0, True, "f16", "none", 16 * 8 + 16),
    BlockKind("q5_0", "Q5_0", 5, 8, 32, 32, 16, 0, 0, False, "f16", "none", 16),
    BlockKind("q5_1", "Q5_1", 5, 8, 32, 32, 0, 0, 0, False, "f16", "min", 32),
    BlockKind("mxfp4", "MXFP4", 4, 4, 32, 32, 12, 0, 0, False, "e8m0", "none", 8, True),
    BlockKind("nvfp4", "NVFP4", 4, 4, 64, 16, 12, 0, 0, False, "ue4m3", "none", 4 * 8, True),
)}
KIND_BY_GGML = {k.ggml_type: k for k in BLOCK_KINDS.values()}


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
    kind: str = "int"

    def __post_init__(self):
        check_field_types(self)
        if self.kind != "int":
            bk = BLOCK_KINDS.get(self.kind)
            if bk is None:
                raise ValueError(f"unknown weight format kind {self.kind!r}; known: int, {', '.join(BLOCK_KINDS)}")
            if self.bits != bk.slot_bits or self.group != 32 or self.asymmetric:
                raise ValueError(f"{self.kind} weights are WeightFormat({bk.slot_bits}, 32, kind={self.kind!r})")
            return
        if self.bits not in (4, 8):
            raise ValueError(f"weight bits must be 4 or 8, got {self.bits}")
        if self.group != 0 and self.group not in WEIGHT_GROUPS:
            raise ValueError(f"weight group must be 0 (per channel) or one of {WEIGHT_GROUPS}, got {self.group}")
        if self.group == 0 and self.bits != 8:
            raise ValueError("per-channel scales are only defined for int8 weights")
        if self.asymmetric and self.bits != 4:
            raise ValueError("asymmetric (offset) weights are only defined for int4")

    @classmethod
    def of_kind(cls, kind: str) -> "WeightFormat":
        """The format of a block kind (``"q4_k"``, ``"mxfp4"``, ...; see :data:`BLOCK_KINDS`)."""
        bk = BLOCK_KINDS.get(kind)
        if bk is None:
            raise ValueError(f"unknown block format {kind!r}; known: {', '.join(BLOCK_KINDS)}")
        return cls(bk.slot_bits, 32, kind=kind)

    @property
    def block(self) -> "BlockKind | None":
        """The :class:`BlockKind` of a block format, None for the plain integer formats."""
        return BLOCK_KINDS.get(self.kind)

    @property
    def code_bits(self) -> int:
        """Bits per weight code in a dense ROM (the slot width for integer formats)."""
        bk = self.block
        return self.bits if bk is None else bk.code_bits

    @property
    def k_multiple(self) -> int:
        """Input widths the format can hold are multiples of this (the super-block)."""
        bk = self.block
        return self.tile_k if bk is None else bk.super_k

    @property
    def per_channel(self) -> bool:
        return self.group == 0

    @property
    def tile_k(self) -> int:
        """Inputs per ROM tile (the integer accumulation block of the kernels)."""
        return CHANNEL_TILE_K if self.per_channel else self.group

    @property
    def name(self) -> str:
        if self.kind != "int":
            return self.kind
        g = "ch" if self.per_channel else f"g{self.group}"
        return f"int{self.bits}{'a' if self.asymmetric else ''}-{g}"

    def code_bytes(self, n: int, k: int) -> int:
        """Bytes of weight codes for an ``n x k`` matrix, unpadded (dense ``code_bits`` per weight)."""
        return n * k * self.code_bits // 8

    def meta_bytes(self, n: int, k: int) -> int:
        """Bytes of scales (every level) and offsets for an ``n x k`` matrix, unpadded."""
        return self.meta_bits(n, k) // 8

    def meta_bits(self, n: int, k: int) -> int:
        """Bits of scales (every level) and offsets of ``n`` rows of ``k`` inputs as the ROM holds
        them: fp16 per block (and offset) for integer formats, ``BlockKind.meta_bits`` per
        super-block for block formats. Pass padded ``n`` to count what a tile pass reads."""
        bk = self.block
        if bk is not None:
            return n * (k // bk.super_k) * bk.meta_bits
        blocks = n if self.per_channel else n * (k // self.group)
        return blocks * 16 * (2 if self.asymmetric else 1)

    def bits_per_weight(self, k: int) -> float:
        """Average stored bits per weight including scales, for a matrix with ``k`` inputs."""
        return (k * self.code_bits + self.meta_bits(1, k)) / k


@dataclass(frozen=True)
class ActFormat:
    """How activations are quantized to int8 before each CIM product.

    granularity: ``"block"`` (one float32 scale per ``group`` inputs) or ``"token"`` (one per vector).
    """

    granularity: str = "block"
    group: int = 32

    def __post_init__(self):
        check_field_types(self)
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
    overrides: tuple = ()
    source_formats: bool = False

    def __post_init__(self):
        check_field_types(self)
        if self.kv not in KV_FORMATS:
            raise ValueError(f"kv format must be one of {KV_FORMATS}, got {self.kv!r}")
        for item in self.overrides:
            if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], WeightFormat)):
                raise ValueError(f"plan overrides must be (tensor kind or name, WeightFormat) pairs, got {item!r}")

    def format_for(self, tensor_kind: str, name: str | None = None, k: int | None = None) -> WeightFormat:
        """Format for a tensor kind: ``"embedding"``, ``"output"`` or a projection name; ``overrides``
        (keyed by GGUF tensor name, then by kind) take precedence. With ``k`` (the input width), a
        block format whose super-block does not divide ``k`` is replaced by :func:`fallback_format`."""
        fmt = self._format_for(tensor_kind, name)
        return fmt if k is None else fallback_format(fmt, k)

    def _format_for(self, tensor_kind: str, name: str | None) -> WeightFormat:
        if self.overrides:
            ov = dict(self.overrides)
            if name is not None and name in ov:
                return ov[name]
            if tensor_kind in ov:
                return ov[tensor_kind]
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

_FALLBACK = {"q2_k": INT4_G32, "q3_k": INT4_G32, "q4_k": WeightFormat(8, 32, kind="q5_0"),
             "q5_k": WeightFormat(8, 32, kind="q5_1"), "q6_k": INT8_G32}


def fallback_format(fmt: WeightFormat, k: int) -> WeightFormat:
    """``fmt``, or where its super-block does not divide a row of ``k`` inputs the format llama.cpp
    falls back to (Q2_K, Q3_K -> Q4_0 (symmetric int4/G32); Q4_K -> Q5_0; Q5_K -> Q5_1;
    Q6_K -> Q8_0 (int8/G32)). Other formats are returned as they are."""
    if fmt.block is None or k % fmt.block.super_k == 0:
        return fmt
    return _FALLBACK.get(fmt.kind, fmt)

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


Q2K, Q3K, Q4K, Q5K, Q6K = (WeightFormat.of_kind(k) for k in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"))
MXFP4, NVFP4 = WeightFormat.of_kind("mxfp4"), WeightFormat.of_kind("nvfp4")
BLOCK32 = ActFormat("block", 32)
MIX_SENSITIVE = ("attn_v", "ffn_down")
"""The projections a 3-bit/6-bit mix keeps at 6 bits: llama.cpp's Q3_K_M choice (attn_v and ffn_down
carry the largest quantization error into the residual stream). Adopted, not re-measured here:
SmolLM2's 576-wide projections fall back to Q4_0 under Q3_K, so only its ffn_down is 3-bit."""

register_plan(Plan("q6k", Q6K, Q6K, Q6K, BLOCK32, "int8",
                   "GGUF Q6_K (6.5625 bits per weight) for every matrix, embedding and head; Q8_0 where a row "
                   "is not a multiple of 256; int8 activations per block of 32, int8 KV"))
register_plan(Plan("q4k", Q4K, Q6K, Q6K, BLOCK32, "int8",
                   "GGUF Q4_K (4.5 bits per weight) for the projections, Q6_K embedding and head (Q5_0 / Q8_0 "
                   "where a row is not a multiple of 256); int8 activations per block of 32, int8 KV"))
_MIX = register_plan(Plan("q3k-mix", Q3K, Q6K, Q6K, BLOCK32, "int8",
                          "3-bit base + 6-bit for the sensitive tensors: GGUF Q3_K (3.4375 bits per weight) for "
                          "attn_q/k/output and ffn_gate/up, Q6_K (6.5625) for attn_v, ffn_down, embedding and head "
                          "(Q4_0 / Q8_0 where a row is not a multiple of 256); int8 activations per block of 32, "
                          "int8 KV", overrides=tuple((m, Q6K) for m in MIX_SENSITIVE)))
register_plan(replace(_MIX, name="hc1", description="HC1-like 3-bit/6-bit mix (\"custom 3-bit base + 6-bit "
                                                    "parameters\"): plan q3k-mix"))
register_plan(Plan("mxfp4", MXFP4, INT8_G32, INT8_G32, BLOCK32, "int8",
                   "MXFP4 (e2m1 codes, e8m0 scale per 32: 4.25 bits per weight) for the projections, int8 "
                   "embedding and head, int8 activations per block of 32, int8 KV"))
register_plan(Plan("nvfp4", NVFP4, INT8_G32, INT8_G32, BLOCK32, "int8",
                   "NVFP4 (e2m1 codes, e4m3 scale per 16, fp32 tensor scale: 4.5 bits per weight) for the "
                   "projections, int8 embedding and head, int8 activations per block of 32, int8 KV"))
register_plan(Plan("gguf", INT8_G32, INT8_G32, INT8_G32, BLOCK32, "int8",
                   "every tensor in the GGUF file's own format, imported without loss (Q8_0, Q4_0, Q4_1, Q5_0, "
                   "Q5_1, Q2_K..Q6_K, MXFP4, NVFP4); float tensors as int8/G32; int8 activations per block of "
                   "32, int8 KV", source_formats=True))


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
