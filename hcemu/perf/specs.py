"""Technology presets: the hard-coded chip, the GPU baselines, and the economics.

Every field carries its unit in its name. Every preset value has a :class:`Source` in ``SOURCES``: its
*kind* -- ``derived`` (a published figure from ``shared/reference/silicon-facts.md``, tagged as there, or
arithmetic on one), ``assumed`` (nothing public gives it; the text says why this value) or
``calibrated`` (tuned so that the model lands on a published figure, named by its key in
:data:`hcemu.perf.figures.FIGURES_BY_KEY`) -- and a text that states the value it justifies. The parameter
tables of ``docs/perf.md`` are generated from these (``python -m hcemu.perf.validation --update
docs/perf.md``). Presets live in registries and are looked up by name; ``dataclasses.replace`` makes
variants for sweeps.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

from hcemu.formats import get_plan
from hcemu.perf.figures import FIGURES_BY_KEY, format_value

SOURCE_KINDS = ("derived", "assumed", "calibrated")


@dataclass(frozen=True)
class Source:
    """Where a preset parameter's value comes from.

    kind: one of :data:`SOURCE_KINDS`. text: the justification; it states the value (a test holds every
    text to :func:`hcemu.perf.figures.states_value`). targets: for ``calibrated``, the keys of the
    published figures (:data:`hcemu.perf.figures.FIGURES_BY_KEY`) the value was tuned to, else empty.
    value: the preset's value, filled in when the preset is registered.
    """

    kind: str
    text: str
    targets: tuple[str, ...] = ()
    value: object = None

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"Source.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if (self.kind == "calibrated") != bool(self.targets):
            raise ValueError(f"a {self.kind} source {'needs' if self.kind == 'calibrated' else 'takes no'} "
                             f"target figures: {self.text!r}")
        unknown = [t for t in self.targets if t not in FIGURES_BY_KEY]
        if unknown:
            raise ValueError(f"unknown figures {unknown} (not keys of hcemu.perf.figures.FIGURES_BY_KEY)")

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


def _derived(text: str) -> Source:
    return Source("derived", text)


def _assumed(text: str) -> Source:
    return Source("assumed", text)


def _calibrated(targets, text: str) -> Source:
    return Source("calibrated", text, (targets,) if isinstance(targets, str) else tuple(targets))


# ----------------------------------------------------------------------------------------------
# The hard-coded chip

HC1_PLAN = get_plan("hc1-int4")
"""The plan the ``hc1`` chip preset is modeled with (see :mod:`hcemu.formats`)."""


def default_plan(spec):
    """:data:`HC1_PLAN` when the model's input widths are multiples of 128, else the registered ``int4``
    plan (asymmetric int4 per block of 32, as GGUF Q4_1), which every hcemu model fits."""
    widths = {spec.d_model, spec.q_dim, spec.d_ff} | ({spec.expert_ff} if spec.is_moe else set()) \
        | ({spec.d_ff_shared} if spec.d_ff_shared else set())
    return HC1_PLAN if all(k % HC1_PLAN.matrices.group == 0 for k in widths) else get_plan("int4")


def _check_positive(obj, names, allow_zero=()):
    for f in names:
        v = getattr(obj, f)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{type(obj).__name__}.{f} must be a finite number, got {v!r}")
        if v < 0 or (v == 0 and f not in allow_zero):
            raise ValueError(f"{type(obj).__name__}.{f} must be {'>= 0' if f in allow_zero else '> 0'}, got {v}")


@dataclass(frozen=True)
class ChipSpec:
    """A hard-coded (mask-ROM compute-in-memory) inference chip's technology and micro-architecture.

    Throughput figures are *per region*: one region per transformer layer, plus the output head
    (sized like a layer, or balanced to its weight count) and the embedding lookup. Layers run one
    after another for one user; different users' tokens occupy different regions at once.
    """

    name: str
    process: str
    sized_for_model: str
    clock_ghz: float
    # compute-in-memory and ROM, per layer region
    cim_macs_per_cycle_w4: int
    cim_macs_per_cycle_w8: int
    rom_read_bits_per_cycle: int
    head_balanced: bool
    # attention, KV SRAM, vector unit, per layer region
    attn_macs_per_cycle: int
    sram_read_bytes_per_cycle: int
    vec_flops_per_cycle: int
    vec_transcendentals_per_cycle: int
    region_overhead_cycles: int
    kv_sram_bytes: int
    # energy per event
    rom_read_pj_per_bit: float
    mac_w4_pj: float
    mac_w8_pj: float
    mac_fp4_pj: float
    attn_mac_pj: float
    sram_read_pj_per_byte: float
    sram_write_pj_per_byte: float
    act_quant_pj_per_elem: float
    vec_flop_pj: float
    vec_transcendental_pj: float
    wire_pj_per_bit_mm: float
    activation_broadcast_mm: float
    static_power_w: float
    power_limit_w: float
    # area and transistor budget
    rom_density_mbit_per_mm2: float
    rom_bits_per_transistor: float
    sram_density_mbit_per_mm2: float
    sram_transistors_per_bit: float
    logic_density_mtr_per_mm2: float
    cim_lane_transistors: float
    attn_lane_transistors: float
    vec_lane_transistors: float
    io_area_mm2: float
    core_overhead_fraction: float
    # the card
    card_price_usd: float
    # mixture of experts: an expert region's lanes (CIM and vector) as a share of the weight-proportional
    # ones (hcemu.perf.area.expert_lane_scale; docs/perf.md "Mixture of experts")
    expert_lane_share: float = 1.0

    def __post_init__(self):
        zero_ok = CHIP_ZERO_OK
        _check_positive(self, [f.name for f in fields(self) if f.name not in CHIP_NON_NUMERIC], zero_ok)

    def replace(self, **changes) -> "ChipSpec":
        return replace(self, **changes)


CHIP_NON_NUMERIC = ("name", "process", "sized_for_model", "head_balanced")
"""ChipSpec fields that are not numbers (never swept)."""

CHIP_ZERO_OK = frozenset(("rom_read_pj_per_bit", "mac_w4_pj", "mac_w8_pj", "mac_fp4_pj", "attn_mac_pj", "sram_read_pj_per_byte",
                          "sram_write_pj_per_byte", "act_quant_pj_per_elem", "vec_flop_pj", "vec_transcendental_pj",
                          "wire_pj_per_bit_mm", "activation_broadcast_mm", "static_power_w", "region_overhead_cycles",
                          "io_area_mm2", "core_overhead_fraction", "card_price_usd", "vec_lane_transistors",
                          "attn_lane_transistors", "cim_lane_transistors"))
"""ChipSpec fields that may be zero (energies, overheads, costs); every other number must be > 0."""


CHIP_PRESETS: dict[str, ChipSpec] = {}
SOURCES: dict[str, MappingProxyType] = {}


def _register(registry, spec, sources: dict[str, Source], table: dict | None = None):
    """Add ``spec`` to ``registry`` and its sources (every field but ``name``, each a :class:`Source`, its
    value filled in) to ``table`` (default :data:`SOURCES`; the deployment and economics presets keep
    their own tables)."""
    names = [f.name for f in fields(spec) if f.name != "name"]
    missing = [n for n in names if n not in sources]
    extra = sorted(set(sources) - set(names))
    if missing or extra:  # every default needs a source, and every source a field
        raise AssertionError(f"preset {spec.name}: fields without a source {missing}, sources without a field {extra}")
    registry[spec.name] = spec
    table = SOURCES if table is None else table
    table[spec.name] = MappingProxyType({n: replace(sources[n], value=getattr(spec, n)) for n in names})
    return spec


_POWER = ("hc1-card-power-w",)
_register(CHIP_PRESETS, ChipSpec(
    name="hc1", process="TSMC N6", sized_for_model="llama-3.1-8b", clock_ghz=1.0,
    cim_macs_per_cycle_w4=180_224, cim_macs_per_cycle_w8=90_112, rom_read_bits_per_cycle=1_048_576,
    head_balanced=True,
    attn_macs_per_cycle=32_768, sram_read_bytes_per_cycle=8_192, vec_flops_per_cycle=4_096,
    vec_transcendentals_per_cycle=1_024, region_overhead_cycles=64, kv_sram_bytes=288 * 2**20,
    rom_read_pj_per_bit=0.15, mac_w4_pj=0.20, mac_w8_pj=0.40, mac_fp4_pj=0.20, attn_mac_pj=0.25,
    sram_read_pj_per_byte=1.25, sram_write_pj_per_byte=1.5, act_quant_pj_per_elem=1.0, vec_flop_pj=1.0,
    vec_transcendental_pj=4.0, wire_pj_per_bit_mm=0.1, activation_broadcast_mm=5.0, static_power_w=30.0,
    power_limit_w=350.0,
    rom_density_mbit_per_mm2=120.0, rom_bits_per_transistor=4.0, sram_density_mbit_per_mm2=28.0,
    sram_transistors_per_bit=6.0, logic_density_mtr_per_mm2=90.0, cim_lane_transistors=3_500.0,
    attn_lane_transistors=3_000.0, vec_lane_transistors=20_000.0, io_area_mm2=30.0,
    core_overhead_fraction=0.10, card_price_usd=9_000.0,
), {
    "process": _derived("[V] TSMC N6 (Next Platform 2026-02-19)"),
    "sized_for_model": _derived("[V] HC1 hard-wires Llama 3.1 8B (preset llama-3.1-8b); the unit counts, KV SRAM "
                                "and static power below are sized for it (hcemu.perf.sizing.size_for_model "
                                "re-sizes them for another model)"),
    "clock_ghz": _assumed("1 GHz: HC1's clock is not published; a typical N6 ASIC datapath clock"),
    "cim_macs_per_cycle_w4": _calibrated("hc1-decode-tok-s", (
        "180,224 int4 MAC lanes per layer region (88 CIM units x one 16x128 tile per cycle), tuned so Llama "
        "3.1 8B at 1k/1k decodes at 16,960 tok/s/user [V], given the attention, vector and overhead cycles")),
    "cim_macs_per_cycle_w8": _assumed("90,112: half the int4 lanes, an 8-bit weight occupies two 4-bit cells "
                                      "(one transistor stores four bits [V])"),
    "rom_read_bits_per_cycle": _assumed("1,048,576 bits (2^20) per region and cycle: at least the lanes' 4-bit "
                                        "codes plus their fp16 scales (743 kbit), so CIM stays MAC-bound"),
    "head_balanced": _assumed("true: the output head's lanes are sized in proportion to its weights, so it takes "
                              "a layer's CIM time (a hard-wired design balances its pipeline stages)"),
    "attn_macs_per_cycle": _assumed("32,768: matches the KV stream, ~4 attention MACs per KV byte with GQA 4 x "
                                    "8 KiB/cycle"),
    "sram_read_bytes_per_cycle": _assumed("8,192 bytes/cycle per region (256 SRAM macros x 256-bit ports); HC1's "
                                          "SRAM bandwidth is not published"),
    "vec_flops_per_cycle": _assumed("4,096 fp32 lanes per region (norms, RoPE, softmax, SiLU)"),
    "vec_transcendentals_per_cycle": _assumed("1,024 exp/rsqrt units per region"),
    "region_overhead_cycles": _assumed("64 cycles per region pass: adder-tree depth, hand-off to the next region, "
                                       "synchronisation"),
    "kv_sram_bytes": _calibrated(_POWER, (
        "288 MiB of KV SRAM, tuned with the energies per event to the 250 W card [V]: at ~6.4 mJ/token the "
        "card draws 250 W serving two users at 1k/1k, and 288 MiB holds two users' int8 KV at 2k tokens "
        "(136 MB each). HC1's SRAM size is not published; ~90 mm2 at the macro density below")),
    "rom_read_pj_per_bit": _calibrated(_POWER, (
        "0.15 pJ/bit, tuned with kv_sram_bytes and mac_w4_pj to the 250 W card [V]; it is Horowitz's 45 nm "
        "8 KB SRAM read, 5 pJ per 32 bits [I], unscaled to N6 (a ROM bitline spans far larger arrays than an "
        "8 KB SRAM); the ~0.6x N6 scaling such a read would get gives 0.10 pJ/bit and a 193 W card")),
    "mac_w4_pj": _calibrated(_POWER, (
        "0.20 pJ per int4 MAC, tuned with rom_read_pj_per_bit and kv_sram_bytes to the 250 W card [V]: the low "
        "end of a whole 8-bit ALU op at 7/6/5 nm (0.20-0.29 pJ [S], stillwater); the select of a precomputed "
        "product and an add alone would be about half of it (0.10 pJ: a 219 W card)")),
    "mac_w8_pj": _assumed("0.40 pJ: two int4 selects and a shift-add, twice mac_w4_pj (no int8 weight in the "
                          "hc1-int4 plan: it moves no calibrated figure)"),
    "mac_fp4_pj": _assumed("0.20 pJ per FP4 (E2M1) MAC, equal to mac_w4_pj: the lane selects one of the 7 "
                           "non-zero E2M1 magnitudes x the int8 activation (precomputed once per column, as "
                           "int4's 15 multiples are; doubled, 1..12, they stay integers within int4's 15x range), "
                           "applies the sign and adds; the block scales (E8M0 exponent shift, E4M3 multiply) are the epilogue's. "
                           "A design that multiplies FP4 x FP8 in the lane would set it apart; nothing on "
                           "HC1-class FP4 lanes is published, and no calibrated figure uses FP4 weights"),
    "attn_mac_pj": _derived("[S] 0.25 pJ: an int8 multiply-add at N6, inside the 8-bit ALU op's 0.20-0.29 pJ "
                            "at 7/6/5 nm (stillwater)"),
    "sram_read_pj_per_byte": _derived("[I] 1.25 pJ/byte: Horowitz 45 nm 32-bit read of 8 KB SRAM, 5 pJ per 4 "
                                      "bytes; larger macros at N6 cost about the same (no scaling credit taken)"),
    "sram_write_pj_per_byte": _assumed("1.5 pJ/byte: a write costs ~1.2x a read"),
    "act_quant_pj_per_elem": _assumed("1 pJ per element: amax, one fp32 multiply and a rounding"),
    "vec_flop_pj": _derived("[I] 1 pJ per fp32 op: Horowitz 45 nm fp32 add 0.9 pJ, rounded up, no scaling "
                            "credit taken"),
    "vec_transcendental_pj": _assumed("4 pJ per exp/rsqrt (a few fp32 ops)"),
    "wire_pj_per_bit_mm": _assumed("0.1 pJ/bit/mm on-chip wire at N6"),
    "activation_broadcast_mm": _derived("[V/P] 5 mm: each int8 activation entering a CIM product crosses its "
                                        "region, ~sqrt(815 mm2 / 33 regions) = 4.97 mm"),
    "static_power_w": _assumed("30 W leakage + clock tree for a 53 B transistor N6 die (~12% of a 250 W card)"),
    "power_limit_w": _assumed("350 W card cooling limit; air-cooled PCIe card [V: air cooled, 2.5 kW per 10 "
                              "cards]"),
    "rom_density_mbit_per_mm2": _assumed("120 Mbit/mm2 incl. periphery: four bits per one-transistor cell [V] "
                                         "at ~0.033 um2 per cell; mask-ROM density at 6-7 nm is not published"),
    "rom_bits_per_transistor": _derived("[V] 4 bits per transistor: 'store four bits ... with a single "
                                        "transistor' (CEO, Next Platform)"),
    "sram_density_mbit_per_mm2": _assumed("28 Mbit/mm2 macro density: the N6 bit cell of 0.027 um2 (37 Mbit/mm2 "
                                          "cells only [V]) at an assumed ~75% array efficiency"),
    "sram_transistors_per_bit": _derived("6 transistors per bit: the standard 6T SRAM cell"),
    "logic_density_mtr_per_mm2": _assumed("90 MTr/mm2 placed logic at N6 (~80% of the ~114 MTr/mm2 N6 HD peak "
                                          "widely reported by WikiChip)"),
    "cim_lane_transistors": _calibrated("hc1-transistors", (
        "3,500 transistors per CIM lane (adder-tree share, accumulator, pipeline registers, share of the "
        "precomputed-product bank), chosen so the die lands near the 53 B transistors [V/P]; a bottom-up "
        "count (~1,200 per lane) gives 37 B (docs/perf.md 'One set of numbers')")),
    "attn_lane_transistors": _assumed("3,000 transistors per int8 attention MAC lane"),
    "vec_lane_transistors": _assumed("20,000 transistors per fp32 vector lane"),
    "io_area_mm2": _assumed("30 mm2 for PCIe PHY, host interface and control"),
    "core_overhead_fraction": _assumed("10% of the core (ROM + SRAM + logic) for clock tree, power grid, global "
                                       "routing and placement white space between macros"),
    "card_price_usd": _calibrated("hc1-cost-cents-per-mtok", (
        "$9,000 per card (incl. its share of the host server), tuned with the cost assumptions to land near "
        "0.75 cents/Mtok [V]; HC1 pricing is not published")),
    "expert_lane_share": _assumed(
        "1: an expert region gets the lanes its weights give it, like every region (compute sits beside the "
        "bits: 'store four bits and do the multiply with a single transistor' [V]); HC1 has no experts. Below "
        "1, experts share lanes: less logic, slower expert passes, and a busy expert bounds pipelined "
        "throughput"),
})

# ----------------------------------------------------------------------------------------------
# GPUs


@dataclass(frozen=True)
class GpuSpec:
    """A GPU from its datasheet, with named efficiency factors for the roofline.

    ``*_tflops`` are dense peaks; 0 means the precision is not supported. ``mem_bandwidth_tb_s`` in
    TB/s (1e12 B/s).
    """

    name: str
    memory_gb: float
    mem_bandwidth_tb_s: float
    bf16_tflops: float
    fp8_tflops: float
    fp4_tflops: float
    power_w: float
    price_usd: float
    rent_usd_per_hour: float
    weight_dtype: str
    kv_dtype: str
    bandwidth_efficiency: float
    compute_efficiency: float
    kernel_launch_us: float
    kernels_per_layer: int
    kernels_head: int
    usable_memory_fraction: float
    max_batch: int

    def __post_init__(self):
        _check_positive(self, ["memory_gb", "mem_bandwidth_tb_s", "bf16_tflops", "fp8_tflops", "fp4_tflops",
                               "power_w", "price_usd", "rent_usd_per_hour", "bandwidth_efficiency",
                               "compute_efficiency", "kernel_launch_us", "kernels_per_layer", "kernels_head",
                               "usable_memory_fraction", "max_batch"],
                        ("fp8_tflops", "fp4_tflops", "kernel_launch_us", "kernels_per_layer", "kernels_head",
                         "rent_usd_per_hour"))
        for f in ("bandwidth_efficiency", "compute_efficiency", "usable_memory_fraction"):
            if getattr(self, f) > 1:
                raise ValueError(f"GpuSpec.{f} is a fraction in (0, 1], got {getattr(self, f)}")
        for f in ("weight_dtype", "kv_dtype"):
            if getattr(self, f) not in DTYPE_BYTES:
                raise ValueError(f"GpuSpec.{f} must be one of {sorted(DTYPE_BYTES)}, got {getattr(self, f)!r}")
        if self.peak_tflops(self.weight_dtype) == 0:
            raise ValueError(f"{self.name} has no {self.weight_dtype} peak in its spec")

    def peak_tflops(self, dtype: str) -> float:
        return {"bf16": self.bf16_tflops, "fp16": self.bf16_tflops, "fp8": self.fp8_tflops,
                "fp4": self.fp4_tflops, "nvfp4": self.fp4_tflops}[dtype]

    def replace(self, **changes) -> "GpuSpec":
        return replace(self, **changes)


DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5, "nvfp4": 0.5 + 1 / 16}
"""Bytes per value as a GPU stores it; ``nvfp4`` adds its FP8 (E4M3) scale per block of 16 values
(NVIDIA's NVFP4 layout, hcemu.perf.deploy documents the precisions)."""

GPU_PRESETS: dict[str, GpuSpec] = {}

_GPU_TARGETS = ("b200-decode-tok-s", "h200-decode-tok-s")
_GPU_COMMON = {
    "weight_dtype": _calibrated("b200-decode-tok-s", (
        "bf16 weights, chosen because the brief's B200 353 tok/s/user sits below the BF16 roofline (498) and "
        "far below FP8's (996): the comparison is to BF16 serving")),
    "kv_dtype": _assumed("bf16 KV cache (serving engines' default)"),
    "bandwidth_efficiency": _calibrated(_GPU_TARGETS, (
        "0.80 of datasheet HBM bandwidth reached by decode GEMVs; one value for all GPUs, tuned with "
        "kernel_launch_us to the brief's B200 353 tok/s/user and the vendor charts' H200 230 tok/s/user")),
    "compute_efficiency": _assumed("0.60 of dense peak in batched decode GEMMs"),
    "kernel_launch_us": _calibrated(_GPU_TARGETS, (
        "2 us per kernel (launch + tail, with CUDA graphs), tuned with bandwidth_efficiency to the B200 353 and "
        "H200 230 tok/s/user")),
    "kernels_per_layer": _assumed("7 fused kernels per layer: norm+QKV, RoPE+KV append, attention, O+residual, "
                                  "norm+gate/up, SiLU*up, down+residual"),
    "kernels_head": _assumed("2 kernels: final norm, LM head"),
    "usable_memory_fraction": _assumed("0.9 of HBM for weights + KV (activations, workspace, fragmentation)"),
    "max_batch": _derived("[I] 256 concurrent sequences: vLLM's default max_num_seqs"),
}
_GPU_SRC = "NVIDIA datasheet (silicon-facts section 2)"
_GPU_PRICE_SRC = "deploybase.ai, spheron.network (silicon-facts section 2)"
_GPU_UNITS = {"memory_gb": "GB", "mem_bandwidth_tb_s": "TB/s", "bf16_tflops": "TFLOPS dense",
              "fp8_tflops": "TFLOPS dense", "fp4_tflops": "TFLOPS dense", "power_w": "W"}


def _gpu(name, mem, bw, bf16, fp8, fp4, power, price_range_usd, rent_range_usd):
    price, rent = sum(price_range_usd) / 2, sum(rent_range_usd) / 2
    spec = GpuSpec(name, mem, bw, bf16, fp8, fp4, power, price, rent, "bf16", "bf16", 0.80, 0.60, 2.0, 7, 2,
                   0.9, 256)
    src = {}
    for f, unit in _GPU_UNITS.items():
        v = getattr(spec, f)
        src[f] = _derived(f"[V] {format_value(v)} {unit}, {_GPU_SRC}" if v else
                          f"[V] 0: no dense {f.split('_')[0].upper()} peak, {_GPU_SRC}")
    lo, hi = price_range_usd
    src["price_usd"] = _derived(f"[P] ${format_value(price)}: midpoint of the ${format_value(lo)}-"
                                f"{format_value(hi)} purchase range, {_GPU_PRICE_SRC}")
    lo, hi = rent_range_usd
    src["rent_usd_per_hour"] = _derived(f"[P] ${format_value(rent)}/h: midpoint of the ${format_value(lo)}-"
                                        f"{format_value(hi)} rental range, {_GPU_PRICE_SRC}")
    src.update(_GPU_COMMON)
    return _register(GPU_PRESETS, spec, src)


_gpu("b200", 180.0, 8.0, 2250.0, 4500.0, 9000.0, 1000.0, (45_000.0, 50_000.0), (3.75, 6.0))
_gpu("h200", 141.0, 4.8, 989.0, 1979.0, 0.0, 700.0, (38_000.0, 42_000.0), (2.25, 4.5))
_gpu("h100", 80.0, 3.35, 989.0, 1979.0, 0.0, 700.0, (30_000.0, 35_000.0), (2.0, 3.5))

# ----------------------------------------------------------------------------------------------
# Economics


@dataclass(frozen=True)
class CostSpec:
    """What a token costs to serve: the environment (power, cooling, utilization) and the hard-coded
    chip's non-recurring engineering."""

    name: str
    electricity_usd_per_kwh: float
    pue: float
    utilization: float
    hardware_lifetime_years: float
    model_useful_life_years: float
    mask_set_usd: float
    design_usd: float
    units_per_model: int

    def __post_init__(self):
        _check_positive(self, ["electricity_usd_per_kwh", "pue", "utilization", "hardware_lifetime_years",
                               "model_useful_life_years", "mask_set_usd", "design_usd", "units_per_model"],
                        ("electricity_usd_per_kwh", "mask_set_usd", "design_usd"))
        if self.utilization > 1:
            raise ValueError(f"CostSpec.utilization is a fraction in (0, 1], got {self.utilization}")
        if self.pue < 1:
            raise ValueError(f"CostSpec.pue must be >= 1, got {self.pue}")

    @property
    def nre_usd(self) -> float:
        return self.mask_set_usd + self.design_usd

    def replace(self, **changes) -> "CostSpec":
        return replace(self, **changes)


COST_PRESETS: dict[str, CostSpec] = {}
_register(COST_PRESETS, CostSpec("default", 0.10, 1.3, 0.6, 3.0, 2.0, 2_000_000.0, 3_000_000.0, 10_000), {
    "electricity_usd_per_kwh": _assumed("$0.10/kWh, industrial electricity (US average is ~$0.08-0.12)"),
    "pue": _assumed("1.3 for an air-cooled data hall"),
    "utilization": _assumed("0.6 of hours serving at the modeled throughput; same for every system"),
    "hardware_lifetime_years": _calibrated("b200-cost-cents-per-mtok", (
        "3 years depreciation, within the usual 3-5 year GPU-cloud schedules, chosen to land the B200 near the "
        "brief's 3.79 cents/Mtok; a hard-coded card is retired with its model (min(this, "
        "model_useful_life_years))")),
    "model_useful_life_years": _assumed("2 years a given open model stays worth serving"),
    "mask_set_usd": _assumed("$2 M per model: only the top two metal/via masks change per model [V EE Times]; "
                             "a full N6 mask set costs ~$10-15 M (assumption)"),
    "design_usd": _assumed("$3 M per model: compile, verification, bring-up (~2 months model-to-silicon [V])"),
    "units_per_model": _assumed("10,000 cards built per model (1,000 10-card servers [V: 10 cards per server])"),
})


def _lookup(registry, kind, name):
    if isinstance(name, (ChipSpec, GpuSpec, CostSpec)):
        return name
    try:
        return registry[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(sorted(registry))}") from None


def get_chip(name) -> ChipSpec:
    return _lookup(CHIP_PRESETS, "chip", name)


def get_gpu(name) -> GpuSpec:
    return _lookup(GPU_PRESETS, "GPU", name)


def get_cost(name="default") -> CostSpec:
    return _lookup(COST_PRESETS, "cost", name)


def sources(name: str) -> dict[str, Source]:
    """The :class:`Source` of every field of the named preset (field name -> Source)."""
    if name not in SOURCES:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(SOURCES))}")
    return dict(SOURCES[name])
