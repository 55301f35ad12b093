"""Technology presets: the hard-coded chip, the GPU baselines, and the economics.

Every field carries its unit in its name. Every preset value has a source in ``SOURCES`` (figures
from ``shared/reference/silicon-facts.md``, tagged as there) or is marked ``assumption:`` with the
reasoning; ``calibrated:`` marks the few parameters tuned so that the model lands on a published
figure (docs/perf.md says which parameter was tuned to which figure). Presets live in registries
and are looked up by name; ``dataclasses.replace`` makes variants for sweeps.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from types import MappingProxyType

from hcemu.formats import get_plan

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

CHIP_ZERO_OK = frozenset(("rom_read_pj_per_bit", "mac_w4_pj", "mac_w8_pj", "attn_mac_pj", "sram_read_pj_per_byte",
                          "sram_write_pj_per_byte", "act_quant_pj_per_elem", "vec_flop_pj", "vec_transcendental_pj",
                          "wire_pj_per_bit_mm", "activation_broadcast_mm", "static_power_w", "region_overhead_cycles",
                          "io_area_mm2", "core_overhead_fraction", "card_price_usd", "vec_lane_transistors",
                          "attn_lane_transistors", "cim_lane_transistors"))
"""ChipSpec fields that may be zero (energies, overheads, costs); every other number must be > 0."""


CHIP_PRESETS: dict[str, ChipSpec] = {}
SOURCES: dict[str, dict[str, str]] = {}


def _register(registry, spec, sources: dict[str, str]):
    missing = [f.name for f in fields(spec) if f.name not in sources and f.name != "name"]
    if missing:  # every default needs a source or a stated assumption
        raise AssertionError(f"preset {spec.name} lacks sources for {missing}")
    registry[spec.name] = spec
    SOURCES[spec.name] = MappingProxyType(dict(sources))
    return spec


_A = "assumption: "
_C = "calibrated: "
_register(CHIP_PRESETS, ChipSpec(
    name="hc1", process="TSMC N6", sized_for_model="llama-3.1-8b", clock_ghz=1.0,
    cim_macs_per_cycle_w4=180_224, cim_macs_per_cycle_w8=90_112, rom_read_bits_per_cycle=1_048_576,
    head_balanced=True,
    attn_macs_per_cycle=32_768, sram_read_bytes_per_cycle=8_192, vec_flops_per_cycle=4_096,
    vec_transcendentals_per_cycle=1_024, region_overhead_cycles=64, kv_sram_bytes=288 * 2**20,
    rom_read_pj_per_bit=0.15, mac_w4_pj=0.20, mac_w8_pj=0.40, attn_mac_pj=0.25,
    sram_read_pj_per_byte=1.25, sram_write_pj_per_byte=1.5, act_quant_pj_per_elem=1.0, vec_flop_pj=1.0,
    vec_transcendental_pj=4.0, wire_pj_per_bit_mm=0.1, activation_broadcast_mm=5.0, static_power_w=30.0,
    power_limit_w=350.0,
    rom_density_mbit_per_mm2=120.0, rom_bits_per_transistor=4.0, sram_density_mbit_per_mm2=28.0,
    sram_transistors_per_bit=6.0, logic_density_mtr_per_mm2=90.0, cim_lane_transistors=3_500.0,
    attn_lane_transistors=3_000.0, vec_lane_transistors=20_000.0, io_area_mm2=30.0,
    core_overhead_fraction=0.10, card_price_usd=9_000.0,
), {
    "process": "[V] TSMC N6 (Next Platform 2026-02-19)",
    "sized_for_model": "[V] HC1 hard-wires Llama 3.1 8B; the unit counts, KV SRAM and static power below are "
                       "sized for it (hcemu.perf.sizing.size_for_model re-sizes them for another model)",
    "clock_ghz": _A + "1 GHz: HC1's clock is not published; a typical N6 ASIC datapath clock",
    "cim_macs_per_cycle_w4": _C + "lanes per layer region, tuned so Llama 3.1 8B at 1k/1k decodes at "
                             "16,960 tok/s/user [V] (= 88 CIM units x one 16x128 tile per cycle)",
    "cim_macs_per_cycle_w8": _A + "half the int4 lanes: an 8-bit weight occupies two 4-bit cells "
                             "(one transistor stores four bits [V])",
    "rom_read_bits_per_cycle": _A + "ROM read width per region, 2^20 bits: >= lanes x 4 bits plus the fp16 "
                               "scales, so CIM stays MAC-bound (the ROM is as wide as the lanes need)",
    "head_balanced": _A + "the output head's lanes are sized in proportion to its weights, so it takes a "
                     "layer's CIM time (a hard-wired design balances its pipeline stages)",
    "attn_macs_per_cycle": _A + "matches the KV stream: ~4 attention MACs per KV byte with GQA 4, x 8 KiB/cycle",
    "sram_read_bytes_per_cycle": _A + "8 KiB/cycle per region (256 SRAM macros x 256-bit ports); HC1's SRAM "
                                 "bandwidth is not published",
    "vec_flops_per_cycle": _A + "4,096 fp32 lanes per region (norms, RoPE, softmax, SiLU)",
    "vec_transcendentals_per_cycle": _A + "1,024 exp/rsqrt units per region",
    "region_overhead_cycles": _A + "64 cycles per region pass: adder-tree depth, hand-off to the next region, "
                              "synchronisation",
    "kv_sram_bytes": _A + "288 MiB of KV SRAM (HC1's SRAM size is not published): two users at 2k tokens "
                     "of Llama 3.1 8B int8 KV (136 MB each); ~90 mm2 at the macro density below",
    "rom_read_pj_per_bit": _A + "0.10 pJ/bit: Horowitz 45 nm 8 KB SRAM read 5 pJ/32 bit [I] = 0.16 pJ/bit, "
                           "scaled ~0.6x to N6",
    "mac_w4_pj": _A + "0.10 pJ: select of a precomputed product + add; half the 8-bit ALU op at 7/6/5 nm "
                 "(0.20-0.29 pJ [S], stillwater)",
    "mac_w8_pj": _A + "0.20 pJ: two 4-bit selects + shift-add; the 8-bit ALU op at 7/6/5 nm [S]",
    "attn_mac_pj": _A + "0.25 pJ: int8 multiply-add at N6 (8-bit ALU op 0.20-0.29 pJ [S])",
    "sram_read_pj_per_byte": _A + "1.25 pJ/byte: Horowitz 45 nm 32-bit read of 8 KB SRAM 5 pJ [I] per byte; "
                             "larger macros at N6 cost about the same",
    "sram_write_pj_per_byte": _A + "1.5 pJ/byte: a write costs ~1.2x a read",
    "act_quant_pj_per_elem": _A + "1 pJ: amax, one fp32 multiply and a rounding per element",
    "vec_flop_pj": _A + "1 pJ per fp32 op: Horowitz 45 nm fp32 add 0.9 pJ [I], no scaling credit taken",
    "vec_transcendental_pj": _A + "4 pJ per exp/rsqrt (a few fp32 ops)",
    "wire_pj_per_bit_mm": _A + "0.1 pJ/bit/mm on-chip wire at N6",
    "activation_broadcast_mm": _A + "5 mm: each int8 activation entering a CIM product is broadcast across its region (~sqrt(815 mm2 / 33 regions))",
    "static_power_w": _A + "30 W leakage + clock tree for a 53 B transistor N6 die (~12% of the 250 W card)",
    "power_limit_w": _A + "350 W card cooling limit; air-cooled PCIe card [V: air cooled, 2.5 kW / 10 cards]",
    "rom_density_mbit_per_mm2": _A + "120 Mbit/mm2 incl. periphery: four bits per one-transistor cell [V] "
                                "at ~0.033 um2 per cell; mask-ROM density at 6-7 nm is not published",
    "rom_bits_per_transistor": "[V] 'store four bits ... with a single transistor' (CEO, Next Platform)",
    "sram_density_mbit_per_mm2": _A + "28 Mbit/mm2 macro density: N6 bit cell 0.027 um2 (37 Mbit/mm2 cells "
                                 "only [V]) at ~75% array efficiency",
    "sram_transistors_per_bit": "6T bit cell (standard)",
    "logic_density_mtr_per_mm2": _A + "90 MTr/mm2 placed logic at N6 (~80% of the ~114 MTr/mm2 N6 HD peak "
                                 "widely reported by WikiChip)",
    "cim_lane_transistors": _A + "3,500 transistors per CIM lane: adder-tree share, accumulator, pipeline "
                            "registers, share of the precomputed-product bank",
    "attn_lane_transistors": _A + "3,000 transistors per int8 attention MAC lane",
    "vec_lane_transistors": _A + "20,000 transistors per fp32 vector lane",
    "io_area_mm2": _A + "30 mm2 for PCIe PHY, host interface and control",
    "core_overhead_fraction": _A + "10% of the core (ROM + SRAM + logic) for clock tree, power grid, global "
                              "routing and placement white space between macros",
    "card_price_usd": _C + "$9,000 per card (incl. its share of the host server); HC1 pricing is not "
                      "published. Tuned with the cost assumptions to land near 0.75 cents/Mtok",
    "expert_lane_share": _A + "1: an expert region gets the lanes its weights give it, like every region "
                         "(compute sits beside the bits: 'store four bits and do the multiply with a single "
                         "transistor' [V]); HC1 has no experts. Below 1, experts share lanes: less logic, "
                         "slower expert passes, and a busy expert bounds pipelined throughput",
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
                "fp4": self.fp4_tflops}[dtype]

    def replace(self, **changes) -> "GpuSpec":
        return replace(self, **changes)


DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}

GPU_PRESETS: dict[str, GpuSpec] = {}

_GPU_COMMON = {
    "weight_dtype": _A + "BF16 weights: the brief's B200 ~353 tok/s/user sits below the BF16 roofline "
                    "(498) and far below FP8's (996), so the comparison is to BF16 serving",
    "kv_dtype": _A + "BF16 KV cache (serving engines' default)",
    "bandwidth_efficiency": _C + "0.80 of datasheet HBM bandwidth reached by decode GEMVs; one value for all "
                            "GPUs, tuned with the launch overhead to the brief's B200 353 and H200 230 tok/s",
    "compute_efficiency": _A + "0.60 of dense peak in batched decode GEMMs",
    "kernel_launch_us": _C + "2 us per kernel (launch + tail, with CUDA graphs)",
    "kernels_per_layer": _A + "7 fused kernels per layer: norm+QKV, RoPE+KV append, attention, O+residual, "
                         "norm+gate/up, SiLU*up, down+residual",
    "kernels_head": _A + "2 kernels: final norm, LM head",
    "usable_memory_fraction": _A + "0.9 of HBM for weights + KV (activations, workspace, fragmentation)",
    "max_batch": _A + "256 concurrent sequences: vLLM's default max_num_seqs",
}
_GPU_SRC = ("NVIDIA datasheet via glennklockwood.com/garden/processors; price midpoints from deploybase.ai, "
            "spheron.network (silicon-facts.md section 2)")


def _gpu(name, mem, bw, bf16, fp8, fp4, power, price, rent):
    spec = GpuSpec(name, mem, bw, bf16, fp8, fp4, power, price, rent, "bf16", "bf16", 0.80, 0.60, 2.0, 7, 2,
                   0.9, 256)
    src = {f: "[V] " + _GPU_SRC for f in ("memory_gb", "mem_bandwidth_tb_s", "bf16_tflops", "fp8_tflops",
                                           "fp4_tflops", "power_w")}
    src.update({"price_usd": "[P] midpoint of the purchase range, " + _GPU_SRC,
                "rent_usd_per_hour": "[P] midpoint of the rental range, " + _GPU_SRC})
    src.update(_GPU_COMMON)
    return _register(GPU_PRESETS, spec, src)


_gpu("b200", 180.0, 8.0, 2250.0, 4500.0, 9000.0, 1000.0, 47_500.0, 4.875)
_gpu("h200", 141.0, 4.8, 989.0, 1979.0, 0.0, 700.0, 40_000.0, 3.375)
_gpu("h100", 80.0, 3.35, 989.0, 1979.0, 0.0, 700.0, 32_500.0, 2.75)

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
    "electricity_usd_per_kwh": _A + "$0.10/kWh, industrial electricity (US average is ~$0.08-0.12)",
    "pue": _A + "1.3 for an air-cooled data hall",
    "utilization": _A + "0.6 of hours serving at the modeled throughput; same for every system",
    "hardware_lifetime_years": _A + "3 years depreciation (a common GPU-cloud schedule); a hard-coded card is retired with its model "
                               "(min(this, model_useful_life_years))",
    "model_useful_life_years": _A + "2 years a given open model stays worth serving",
    "mask_set_usd": _A + "$2 M per model: only the top two metal/via masks change per model [V EE Times]; "
                    "a full N6 mask set costs ~$10-15 M (assumption)",
    "design_usd": _A + "$3 M per model: compile, verification, bring-up (~2 months model-to-silicon [V])",
    "units_per_model": _A + "10,000 cards built per model (1,000 10-card servers [V: 10 cards per server])",
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


def sources(name: str) -> dict[str, str]:
    """Source or assumption of every field of the named preset."""
    if name not in SOURCES:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(SOURCES))}")
    return dict(SOURCES[name])
