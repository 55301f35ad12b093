"""Event counters: what the silicon would do, counted by the execution that computes the values.

The functional chip (and the analytical generator in :mod:`hcemu.perf`) fill an :class:`Events`;
the silicon, GPU and cost models only ever read one. The counting rules of docs/events.md that are
formulas of shapes (what one CIM product, one layer pass's vector work, one head pass, one embedding
lookup and one attended key cost) are written once, here, and every counter and generator calls them. Counters are kept per *region*: regions
``0 .. n_layers-1`` are the transformer layers, then ``"head"`` (final norm + output projection)
and ``"embed"`` (token-embedding lookup), so pipelined throughput can find its slowest stage.

Every counter is an exact integer. Field meanings (all per region, summed over the tokens run):

=========================  ======================================================================
tokens                     token passes through the region (prefill and decode tokens alike)
macs_w8, macs_w4           compute-in-memory multiply-accumulates with int8 activations, by weight bits
rom_code_bits              bits of weight codes read from ROM (padding included: the silicon reads it)
rom_meta_bits              bits of fp16 scales and offsets read from ROM
rom_tiles                  ROM tile reads (one tile = 16 rows x tile_k inputs, read once per pass)
sram_kv_bytes_read         KV-cache bytes streamed from SRAM by attention (values and scales)
sram_kv_bytes_written      KV-cache bytes appended to SRAM
sram_adapter_bytes_read    LoRA adapter bytes read from SRAM (A and B, codes and scales)
attn_macs                  attention multiply-accumulates (q.k and p.v) in the attention unit
act_quant_elems            activations quantized to int8 before a CIM product
vec_flops                  float32 vector-unit operations (norms, RoPE, softmax, SiLU, residual, scaling)
vec_transcendentals        exp / rsqrt / sin-cos evaluations in the vector unit
adapter_macs_w8            LoRA side-path multiply-accumulates with int8 A and B (int8 activations)
adapter_macs_f16           LoRA side-path multiply-accumulates with fp16 A and B (float32 activations)
=========================  ======================================================================
"""
from __future__ import annotations

import numpy as np

from hcemu.formats import TILE_ROWS, adapter_sram_bytes, kv_bytes_per_token_layer
from hcemu.layout import layout_shape, tile_bytes

FIELDS = (
    "tokens",
    "macs_w8",
    "macs_w4",
    "rom_code_bits",
    "rom_meta_bits",
    "rom_tiles",
    "sram_kv_bytes_read",
    "sram_kv_bytes_written",
    "sram_adapter_bytes_read",
    "attn_macs",
    "act_quant_elems",
    "vec_flops",
    "vec_transcendentals",
    "adapter_macs_w8",
    "adapter_macs_f16",
)
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}


class Events:
    """Per-region integer counters. ``ev.macs_w4`` is the total over regions; ``ev.region(i)`` one row."""

    __slots__ = ("n_layers", "counts")

    def __init__(self, n_layers: int, counts: np.ndarray | None = None):
        self.n_layers = int(n_layers)
        shape = (self.n_layers + 2, len(FIELDS))
        if counts is None:
            counts = np.zeros(shape, np.int64)
        elif counts.shape != shape or counts.dtype != np.int64:
            raise ValueError(f"counts must be int64 {shape}, got {counts.dtype} {counts.shape}")
        self.counts = counts

    # ---- regions
    @property
    def head(self) -> int:
        return self.n_layers

    @property
    def embed(self) -> int:
        return self.n_layers + 1

    def region_index(self, region) -> int:
        if region == "head":
            return self.head
        if region == "embed":
            return self.embed
        i = int(region)
        if not 0 <= i < self.n_layers:
            raise IndexError(f"layer region {i} out of range 0..{self.n_layers - 1}")
        return i

    def add(self, region, **counts: int) -> None:
        """Add counts to one region: ``ev.add(3, macs_w4=..., rom_code_bits=...)``."""
        row = self.counts[self.region_index(region)]
        for name, value in counts.items():
            row[FIELD_INDEX[name]] += value

    def region(self, region) -> dict[str, int]:
        row = self.counts[self.region_index(region)]
        return {name: int(row[i]) for i, name in enumerate(FIELDS)}

    def layers(self) -> np.ndarray:
        """Counts of the transformer layers only, (n_layers, n_fields)."""
        return self.counts[: self.n_layers]

    def total(self) -> dict[str, int]:
        s = self.counts.sum(axis=0)
        return {name: int(s[i]) for i, name in enumerate(FIELDS)}

    def __getattr__(self, name):
        try:
            return int(self.counts[:, FIELD_INDEX[name]].sum())
        except KeyError:
            raise AttributeError(name) from None

    # ---- arithmetic
    def _check_same(self, other: "Events") -> None:
        if not isinstance(other, Events) or other.n_layers != self.n_layers:
            raise ValueError("events of models with different layer counts cannot be combined")

    def __iadd__(self, other: "Events") -> "Events":
        self._check_same(other)
        self.counts += other.counts
        return self

    def __add__(self, other: "Events") -> "Events":
        self._check_same(other)
        return Events(self.n_layers, self.counts + other.counts)

    def __sub__(self, other: "Events") -> "Events":
        self._check_same(other)
        return Events(self.n_layers, self.counts - other.counts)

    def copy(self) -> "Events":
        return Events(self.n_layers, self.counts.copy())

    def __eq__(self, other) -> bool:
        return isinstance(other, Events) and other.n_layers == self.n_layers and bool(
            np.array_equal(self.counts, other.counts))

    def to_dict(self, per_region: bool = False) -> dict:
        """JSON-ready: ``{"total": {...}}`` and, if asked, ``{"regions": {"0": {...}, ..., "head": ...}}``."""
        out = {"n_layers": self.n_layers, "total": self.total()}
        if per_region:
            names = [str(i) for i in range(self.n_layers)] + ["head", "embed"]
            out["regions"] = {nm: self.region(nm if nm in ("head", "embed") else int(nm)) for nm in names}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Events":
        ev = cls(d["n_layers"])
        if "regions" in d:
            for nm, row in d["regions"].items():
                ev.add(nm if nm in ("head", "embed") else int(nm), **row)
        else:  # totals only: attribute them to the head region is wrong; spread is unknown
            raise ValueError("Events.from_dict needs per-region counts (to_dict(per_region=True))")
        return ev

    def __repr__(self) -> str:
        t = self.total()
        shown = ", ".join(f"{k}={v}" for k, v in t.items() if v)
        return f"Events(n_layers={self.n_layers}, {shown})"


# ----------------------------------------------------------------------------------------------
# Counting rules (docs/events.md). ``spec`` is any object with a ModelSpec's dimensions.

def _zeros() -> np.ndarray:
    return np.zeros(len(FIELDS), np.int64)


def mac_field(fmt) -> str:
    """The MAC counter a format's products add to: ``macs_w4`` for codes of up to 4 bits (int4, Q2_K,
    Q3_K, Q4_K, MXFP4, NVFP4), ``macs_w8`` for wider ones (int8, Q5_*, Q6_K)."""
    return "macs_w4" if fmt.code_bits <= 4 else "macs_w8"


def product_counts(fmt, n: int, k: int) -> np.ndarray:
    """Counts of one token pass through one ``n x k`` CIM product in format ``fmt``: MACs by weight
    bits (:func:`mac_field`), ROM code bits (whole tiles, padding included, ``fmt.code_bits`` per
    weight), ROM metadata bits (every level of scales and offsets as the ROM holds them:
    :meth:`WeightFormat.meta_bits` of the padded rows; fp16 per block or row tile for the integer
    formats) and tiles read."""
    nt, nb = layout_shape(fmt, n, k)
    c = _zeros()
    c[FIELD_INDEX[mac_field(fmt)]] = n * k
    c[FIELD_INDEX["rom_code_bits"]] = nt * nb * TILE_ROWS * fmt.tile_k * fmt.code_bits
    c[FIELD_INDEX["rom_meta_bits"]] = fmt.meta_bits(nt * TILE_ROWS, k)
    c[FIELD_INDEX["rom_tiles"]] = nt * nb
    return c


def layer_vector_counts(spec) -> np.ndarray:
    """What one layer pass costs besides its seven products and its attention: the token, the
    activations quantized for the products (``2d + qd + F``), the position-independent vector work
    (two RMSNorms, RoPE on q and k, SiLU-gate product, two residual adds) and its rsqrt/exp."""
    d, qd, f, hd = spec.d_model, spec.q_dim, spec.d_ff, spec.head_dim
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["act_quant_elems"]] = 2 * d + qd + f
    c[FIELD_INDEX["vec_flops"]] = 2 * 4 * d + 3 * (spec.n_heads + spec.n_kv_heads) * hd + 4 * f + 2 * d
    c[FIELD_INDEX["vec_transcendentals"]] = 2 + f
    return c


def head_vector_counts(spec) -> np.ndarray:
    """What one head pass costs besides the output product: the token, its quantized input, the
    final RMSNorm and its rsqrt."""
    d = spec.d_model
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["act_quant_elems"]] = d
    c[FIELD_INDEX["vec_flops"]] = 4 * d
    c[FIELD_INDEX["vec_transcendentals"]] = 1
    return c


def embed_counts(spec, fmt) -> np.ndarray:
    """One embedding lookup: one row of the ``vocab x d`` table in format ``fmt`` read from ROM (its share
    of each of the row's tiles, and its scales), scaled in the vector unit."""
    _, nb = layout_shape(fmt, *spec.matrix_shape("embedding"))
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["rom_code_bits"]] = nb * fmt.tile_k * fmt.code_bits
    c[FIELD_INDEX["rom_meta_bits"]] = fmt.meta_bits(1, spec.matrix_shape("embedding")[1])
    c[FIELD_INDEX["rom_tiles"]] = nb
    c[FIELD_INDEX["vec_flops"]] = spec.d_model
    return c


def attention_counts(spec, kv: str) -> tuple[np.ndarray, np.ndarray]:
    """(per pass, per attended key) counts of one layer's attention with a ``kv`` cache: the token's K
    and V appended; then, for every key, its K and V streamed once per KV head (shared by the group),
    q.k and p.v MACs, and the online softmax (five flops and one exp per head)."""
    kv_bytes = kv_bytes_per_token_layer(spec.n_kv_heads, spec.head_dim, kv)
    per_pass, per_key = _zeros(), _zeros()
    per_pass[FIELD_INDEX["sram_kv_bytes_written"]] = kv_bytes
    per_key[FIELD_INDEX["sram_kv_bytes_read"]] = kv_bytes
    per_key[FIELD_INDEX["attn_macs"]] = 2 * spec.n_heads * spec.head_dim
    per_key[FIELD_INDEX["vec_flops"]] = 5 * spec.n_heads
    per_key[FIELD_INDEX["vec_transcendentals"]] = spec.n_heads
    return per_pass, per_key


def adapter_counts(fmt: str, n: int, k: int, rank: int) -> np.ndarray:
    """One token pass through the LoRA side path of one adapted ``n x k`` matrix of rank ``rank`` held
    as ``fmt`` (``"int8"`` or ``"fp16"``): A and B streamed from SRAM once
    (:func:`hcemu.formats.adapter_sram_bytes`), ``rank * (k + n)`` MACs by precision, the intermediate's
    ``rank`` values quantized for B (int8 only), ``n`` float adds into the product."""
    c = _zeros()
    c[FIELD_INDEX["sram_adapter_bytes_read"]] = adapter_sram_bytes(fmt, n, k, rank)
    c[FIELD_INDEX["adapter_macs_w8" if fmt == "int8" else "adapter_macs_f16"]] = rank * (k + n)
    c[FIELD_INDEX["act_quant_elems"]] = rank if fmt == "int8" else 0
    c[FIELD_INDEX["vec_flops"]] = n
    return c

LINK_FIELDS = ("messages", "bytes")
"""Counters of one chip-to-chip hop: messages sent (one per token pass crossing it) and payload bytes."""


class LinkEvents:
    """Per-hop integer counters of a multi-chip system: ``counts`` int64 (n_hops, len(LINK_FIELDS));
    hop ``h`` links die ``h`` to die ``h + 1``. ``ev.bytes`` / ``ev.messages`` are totals over hops."""

    __slots__ = ("n_hops", "counts")

    def __init__(self, n_hops: int, counts: np.ndarray | None = None):
        self.n_hops = int(n_hops)
        if self.n_hops < 0:
            raise ValueError(f"n_hops must be >= 0, got {n_hops}")
        shape = (self.n_hops, len(LINK_FIELDS))
        if counts is None:
            counts = np.zeros(shape, np.int64)
        elif counts.shape != shape or counts.dtype != np.int64:
            raise ValueError(f"counts must be int64 {shape}, got {counts.dtype} {counts.shape}")
        self.counts = counts

    def add(self, hop: int, messages: int, nbytes: int) -> None:
        if not 0 <= hop < self.n_hops:
            raise IndexError(f"hop {hop} out of range 0..{self.n_hops - 1}")
        self.counts[hop, 0] += messages
        self.counts[hop, 1] += nbytes

    def hop(self, h: int) -> dict[str, int]:
        return {name: int(v) for name, v in zip(LINK_FIELDS, self.counts[h])}

    @property
    def messages(self) -> int:
        return int(self.counts[:, 0].sum())

    @property
    def bytes(self) -> int:
        return int(self.counts[:, 1].sum())

    def _check_same(self, other) -> None:
        if not isinstance(other, LinkEvents) or other.n_hops != self.n_hops:
            raise ValueError("link events of systems with different hop counts cannot be combined")

    def __iadd__(self, other: "LinkEvents") -> "LinkEvents":
        self._check_same(other)
        self.counts += other.counts
        return self

    def __add__(self, other: "LinkEvents") -> "LinkEvents":
        self._check_same(other)
        return LinkEvents(self.n_hops, self.counts + other.counts)

    def copy(self) -> "LinkEvents":
        return LinkEvents(self.n_hops, self.counts.copy())

    def __eq__(self, other) -> bool:
        return isinstance(other, LinkEvents) and other.n_hops == self.n_hops and bool(
            np.array_equal(self.counts, other.counts))

    def to_dict(self) -> dict:
        return {"n_hops": self.n_hops, "hops": [self.hop(h) for h in range(self.n_hops)]}

    def __repr__(self) -> str:
        return f"LinkEvents(n_hops={self.n_hops}, messages={self.messages}, bytes={self.bytes})"
