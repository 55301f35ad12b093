"""Event counters: what the silicon would do, counted by the execution that computes the values.

The functional chip (and the analytical generator in :mod:`hcemu.perf`) fill an :class:`Events`;
the silicon, GPU and cost models only ever read one. The counting rules of docs/events.md that are
formulas of shapes (what one CIM product, one layer pass's vector work, one head pass, one embedding
lookup and one attended key cost) are written once, here, and every counter and generator calls them. Counters are kept per *region*: regions
``0 .. n_layers-1`` are the transformer layers, then ``"head"`` (final norm + output projection)
and ``"embed"`` (token-embedding lookup), then, for a mixture-of-experts model, one region per expert
of every layer (``("expert", layer, e)``; its ``tokens`` count how often that expert fired), so
pipelined throughput can find its slowest stage and see expert imbalance.

Every counter is an exact integer. Field meanings (all per region, summed over the tokens run):

=========================  ======================================================================
tokens                     token passes through the region (prefill and decode tokens alike)
macs_w8, macs_w4           compute-in-memory multiply-accumulates with int8 activations, by weight code
                           width (integer codes of up to 4 bits on the 4-bit lanes: :func:`mac_field`)
rom_code_bits              bits of weight codes read from ROM (padding included: the silicon reads it)
rom_meta_bits              bits of scales and offsets read from ROM (block formats: every level)
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
macs_fp4                   compute-in-memory multiply-accumulates of FP4 (E2M1) weight codes (MXFP4, NVFP4)
                           with int8 activations, on the 4-bit lanes, priced apart from integer ones
=========================  ======================================================================
"""
from __future__ import annotations

import numpy as np

from hcemu.formats import BLOCK_KINDS, TILE_ROWS, adapter_sram_bytes, kv_bytes_per_token_layer
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
    "macs_fp4",
)
FIELD_INDEX = {name: i for i, name in enumerate(FIELDS)}
MAC_FIELDS = ("macs_w8", "macs_w4", "macs_fp4")
"""The compute-in-memory MAC counters (one per weight-code kind; :func:`mac_field` picks one)."""


class Events:
    """Per-region integer counters. ``ev.macs_w4`` is the total over regions; ``ev.region(i)`` one row.

    n_experts: experts per layer of a mixture-of-experts model (0: dense); their regions follow the
    embedding's, ``n_layers * n_experts`` of them, layer-major."""

    __slots__ = ("n_layers", "n_experts", "counts")

    def __init__(self, n_layers: int, counts: np.ndarray | None = None, n_experts: int = 0):
        self.n_layers = int(n_layers)
        self.n_experts = int(n_experts)
        if self.n_experts < 0:
            raise ValueError(f"n_experts must be >= 0, got {n_experts}")
        shape = (self.n_layers + 2 + self.n_layers * self.n_experts, len(FIELDS))
        if counts is None:
            counts = np.zeros(shape, np.int64)
        elif counts.shape != shape or counts.dtype != np.int64:
            raise ValueError(f"counts must be int64 {shape}, got {counts.dtype} {counts.shape}")
        self.counts = counts

    @classmethod
    def for_spec(cls, spec) -> "Events":
        """Empty counters with the regions of ``spec`` (its layers, and its experts if any)."""
        return cls(spec.n_layers, n_experts=spec.n_experts)

    # ---- regions
    @property
    def head(self) -> int:
        return self.n_layers

    @property
    def embed(self) -> int:
        return self.n_layers + 1

    def expert_index(self, layer: int, expert: int) -> int:
        """Row of expert ``expert`` of layer ``layer`` in ``counts``."""
        if not (0 <= layer < self.n_layers and 0 <= expert < self.n_experts):
            raise IndexError(f"expert region ({layer}, {expert}) out of range: {self.n_layers} layers x "
                             f"{self.n_experts} experts")
        return self.n_layers + 2 + layer * self.n_experts + expert

    def region_index(self, region) -> int:
        """Row of a region: a layer index, ``"head"``, ``"embed"`` or ``("expert", layer, e)``."""
        if isinstance(region, str):
            if region == "head":
                return self.head
            if region == "embed":
                return self.embed
            raise IndexError(f"unknown region {region!r}")
        if isinstance(region, tuple):
            if len(region) != 3 or region[0] != "expert":
                raise IndexError(f"unknown region {region!r}; expert regions are ('expert', layer, e)")
            return self.expert_index(int(region[1]), int(region[2]))
        i = int(region)
        if not 0 <= i < self.n_layers:
            raise IndexError(f"layer region {i} out of range 0..{self.n_layers - 1}")
        return i

    def experts(self) -> np.ndarray:
        """Counts of the expert regions, (n_layers, n_experts, n_fields)."""
        return self.counts[self.n_layers + 2:].reshape(self.n_layers, self.n_experts, len(FIELDS))

    def region_names(self) -> list[str]:
        """The regions' names in row order: ``"0" .. "L-1"``, ``"head"``, ``"embed"``, ``"expert.{l}.{e}"``."""
        return ([str(i) for i in range(self.n_layers)] + ["head", "embed"]
                + [f"expert.{i}.{e}" for i in range(self.n_layers) for e in range(self.n_experts)])

    @staticmethod
    def _parse_name(name: str):
        if name in ("head", "embed"):
            return name
        if name.startswith("expert."):
            _, layer, e = name.split(".")
            return ("expert", int(layer), int(e))
        return int(name)

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
        if not isinstance(other, Events) or other.n_layers != self.n_layers or other.n_experts != self.n_experts:
            raise ValueError("events of models with different layer or expert counts cannot be combined")

    def __iadd__(self, other: "Events") -> "Events":
        self._check_same(other)
        self.counts += other.counts
        return self

    def __add__(self, other: "Events") -> "Events":
        self._check_same(other)
        return Events(self.n_layers, self.counts + other.counts, self.n_experts)

    def __sub__(self, other: "Events") -> "Events":
        self._check_same(other)
        return Events(self.n_layers, self.counts - other.counts, self.n_experts)

    def copy(self) -> "Events":
        return Events(self.n_layers, self.counts.copy(), self.n_experts)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Events) and other.n_layers == self.n_layers and other.n_experts == self.n_experts
                and bool(np.array_equal(self.counts, other.counts)))

    def to_dict(self, per_region: bool = False) -> dict:
        """JSON-ready: ``{"total": {...}}`` and, if asked, ``{"regions": {"0": {...}, ..., "head": ...,
        "expert.0.3": ...}}`` (with ``"n_experts"`` for a mixture-of-experts model)."""
        out = {"n_layers": self.n_layers, "total": self.total()}
        if self.n_experts:
            out["n_experts"] = self.n_experts
        if per_region:
            out["regions"] = {nm: self.region(self._parse_name(nm)) for nm in self.region_names()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Events":
        ev = cls(d["n_layers"], n_experts=d.get("n_experts", 0))
        if "regions" in d:
            for nm, row in d["regions"].items():
                ev.add(cls._parse_name(nm), **row)
        else:  # totals only: attribute them to the head region is wrong; spread is unknown
            raise ValueError("Events.from_dict needs per-region counts (to_dict(per_region=True))")
        return ev

    def __repr__(self) -> str:
        t = self.total()
        shown = ", ".join(f"{k}={v}" for k, v in t.items() if v)
        experts = f", n_experts={self.n_experts}" if self.n_experts else ""
        return f"Events(n_layers={self.n_layers}{experts}, {shown})"


# ----------------------------------------------------------------------------------------------
# Counting rules (docs/events.md). ``spec`` is any object with a ModelSpec's dimensions.

def _zeros() -> np.ndarray:
    return np.zeros(len(FIELDS), np.int64)


def mac_field(fmt) -> str:
    """The MAC counter a format's products add to: ``macs_fp4`` for FP4 (E2M1) codes (MXFP4, NVFP4),
    ``macs_w4`` for integer codes of up to 4 bits (int4, Q2_K, Q3_K, Q4_K), ``macs_w8`` for wider ones
    (int8, Q5_*, Q6_K)."""
    if fmt.kind != "int" and BLOCK_KINDS[fmt.kind].float_codes:
        return "macs_fp4"
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


GATE_FLOPS = {"silu": 4, "gelu": 13}
"""Vector-unit flops per element of the gate product ``act(g) * u`` (besides one exp each): SiLU
``g / (1 + exp(-g)) * u``; GELU's tanh form (docs/numerics.md) 13."""
SOFTCAP_FLOPS = 6
"""Flops of one soft-capped value ``tanh(x / c) * c`` (besides its exp)."""


SOFTMAX_FLOPS = 5
"""Flops per element of a softmax (max, subtract, sum, divide, one more for the scale), besides its exp."""


def layer_vector_counts(spec) -> np.ndarray:
    """What one layer pass costs besides its products and its attention: the token, the activations
    quantized for the products (``2d + qd + F``), the position-independent vector work (two RMSNorms,
    RoPE on q and k, the gate product, two residual adds) and its rsqrt/exp; plus the block kinds the
    spec has: Q/K/V biases, Q/K RMSNorms (an rsqrt per head, or per vector), two post-norms.

    A mixture-of-experts layer's own work replaces the dense FFN's: routing (softmax over the ``E``
    router logits, top-k selection ``E k``, renormalizing ``2k``) and the shared expert (its gate
    product and down input ``F_s``, its sigmoid gate ``d + 3``, adding it ``d``); the routed experts' work is
    counted in their regions (:func:`expert_vector_counts`)."""
    d, qd, hd = spec.d_model, spec.q_dim, spec.head_dim
    moe = bool(getattr(spec, "n_experts", 0))
    f = getattr(spec, "d_ff_shared", 0) if moe else spec.d_ff
    gate = GATE_FLOPS[getattr(spec, "ffn_act", "silu")]
    kvd = spec.n_kv_heads * hd
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["act_quant_elems"]] = 2 * d + qd + f
    flops = 2 * 4 * d + 3 * (spec.n_heads + spec.n_kv_heads) * hd + gate * f + 2 * d
    trans = 2 + f
    if moe:
        E, k = spec.n_experts, spec.n_experts_used
        flops += SOFTMAX_FLOPS * E + E * k + (2 * k if spec.expert_weights_norm else 0)
        trans += E
        if f:
            flops += d + (d + 3 if spec.shared_expert_gate else 0)  # add to the experts' sum; gate it
            trans += 1 if spec.shared_expert_gate else 0
    if getattr(spec, "qkv_bias", False):
        flops += qd + 2 * kvd
    qk_norm = getattr(spec, "qk_norm", "none")
    if qk_norm != "none":
        flops += 4 * (qd + kvd)
        trans += spec.n_heads + spec.n_kv_heads if qk_norm == "head" else 2
    if getattr(spec, "post_norms", False):
        flops += 2 * 4 * d
        trans += 2
    c[FIELD_INDEX["vec_flops"]] = flops
    c[FIELD_INDEX["vec_transcendentals"]] = trans
    return c


def expert_vector_counts(spec) -> np.ndarray:
    """One token pass through one routed expert (its region): the token, the down product's quantized
    input ``F_e``, the gate product ``act(g) * u`` and its exps, and the output weighted and added into
    the layer's sum (``2d``). Its three products are counted as usual (:func:`product_counts`)."""
    fe = spec.expert_ff
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["act_quant_elems"]] = fe
    c[FIELD_INDEX["vec_flops"]] = GATE_FLOPS[spec.ffn_act] * fe + 2 * spec.d_model
    c[FIELD_INDEX["vec_transcendentals"]] = fe
    return c


def head_vector_counts(spec) -> np.ndarray:
    """What one head pass costs besides the output product: the token, its quantized input, the
    final RMSNorm and its rsqrt (and, with final soft-capping, a soft-cap per logit)."""
    d = spec.d_model
    cap = bool(getattr(spec, "final_softcap", 0))
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["act_quant_elems"]] = d
    c[FIELD_INDEX["vec_flops"]] = 4 * d + (SOFTCAP_FLOPS * spec.vocab_size if cap else 0)
    c[FIELD_INDEX["vec_transcendentals"]] = 1 + (spec.vocab_size if cap else 0)
    return c


def embed_counts(spec, fmt) -> np.ndarray:
    """One embedding lookup: one row of the ``vocab x d`` table in format ``fmt`` read from ROM (its share
    of each of the row's tiles, and its scales), scaled in the vector unit (twice with an embedding
    scale)."""
    _, nb = layout_shape(fmt, *spec.matrix_shape("embedding"))
    c = _zeros()
    c[FIELD_INDEX["tokens"]] = 1
    c[FIELD_INDEX["rom_code_bits"]] = nb * fmt.tile_k * fmt.code_bits
    c[FIELD_INDEX["rom_meta_bits"]] = fmt.meta_bits(1, spec.matrix_shape("embedding")[1])
    c[FIELD_INDEX["rom_tiles"]] = nb
    c[FIELD_INDEX["vec_flops"]] = spec.d_model * (2 if getattr(spec, "embed_scale", 1.0) != 1.0 else 1)
    return c


def attention_counts(spec, kv: str) -> tuple[np.ndarray, np.ndarray]:
    """(per pass, per attended key) counts of one layer's attention with a ``kv`` cache: the token's K
    and V appended; then, for every key, its K and V streamed once per KV head (shared by the group),
    q.k and p.v MACs, and the online softmax (five flops and one exp per head; a soft-capped score
    adds six flops and a tanh per head). Which keys a pass attends: :func:`attended_keys`."""
    kv_bytes = kv_bytes_per_token_layer(spec.n_kv_heads, spec.head_dim, kv)
    cap = bool(getattr(spec, "attn_softcap", 0))
    per_pass, per_key = _zeros(), _zeros()
    per_pass[FIELD_INDEX["sram_kv_bytes_written"]] = kv_bytes
    per_key[FIELD_INDEX["sram_kv_bytes_read"]] = kv_bytes
    per_key[FIELD_INDEX["attn_macs"]] = 2 * spec.n_heads * spec.head_dim
    per_key[FIELD_INDEX["vec_flops"]] = (11 if cap else 5) * spec.n_heads
    per_key[FIELD_INDEX["vec_transcendentals"]] = (2 if cap else 1) * spec.n_heads
    return per_pass, per_key


def attended_keys(positions, window: int = 0) -> int:
    """Keys the passes at ``positions`` attend together: ``sum(min(p + 1, window))`` (window 0: ``p + 1``,
    every earlier key and its own; a sliding-window layer attends the last ``window``)."""
    keys = np.asarray(positions, dtype=np.int64) + 1
    if window:
        keys = np.minimum(keys, window)
    return int(keys.sum())


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
