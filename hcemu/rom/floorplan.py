"""Floorplan estimate: die area and transistor count of the chip that holds a ROM image.

Area = ROM (code banks + scale ROM + norm vectors) / ROM density + SRAM (KV budget + adapters) / SRAM
density + CIM lanes x logic area per lane, plus an overhead fraction for IO, clocking, power grid,
control and the vector unit. Transistors likewise, per ROM bit, per SRAM bit and per lane. Every
parameter of the ``hc1`` preset is derived in ``docs/rom.md`` from ``shared/reference/silicon-facts.md``
or stated as an assumption.

Note: hcemu.perf owns the chip parameters used to price events (ChipSpec); these density parameters
should be unified with it (one home for every silicon number).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

# --- the numbers the hc1 preset is derived from (sources in docs/rom.md)
SRAM_CELL_UM2_N6 = 0.027          # TSMC N7/N6 6T high-density bit cell (IEDM 2016 / ISSCC 2017, via wikichip)
ROM_TO_SRAM_CELL_RATIO = 0.5      # assumption: a contact/via-programmed 1T NOR ROM cell is ~half a 6T cell
ARRAY_EFFICIENCY = 0.8            # assumption: bit cells / array area incl. decoders, sense amps (large banks)
N6_LOGIC_MTR_PER_MM2 = 114.0      # TSMC N6 peak logic density (vendor: 18% above N7's 96.5 MTr/mm2)
LOGIC_UTILIZATION = 0.6           # assumption: placed-and-routed std-cell utilization of peak density
LANE_TRANSISTORS = 150_000        # estimate for one CIM lane reading a 512-bit word per cycle (docs/rom.md)


@dataclass(frozen=True)
class FloorplanParams:
    """Densities and per-unit transistor counts of a hard-coded chip's process and circuits."""

    name: str
    rom_density_mbit_per_mm2: float
    rom_transistors_per_bit: float
    sram_density_mbit_per_mm2: float
    sram_transistors_per_bit: float
    logic_mm2_per_lane: float
    transistors_per_lane: float
    lanes_per_bank: int = 1
    overhead_fraction: float = 0.10
    kv_tokens: int = 2048
    adapter_sram_bytes: int = 0
    sources: tuple = field(default_factory=tuple)

    def __post_init__(self):
        for f in ("rom_density_mbit_per_mm2", "sram_density_mbit_per_mm2", "logic_mm2_per_lane"):
            if not getattr(self, f) > 0:
                raise ValueError(f"FloorplanParams.{f} must be positive, got {getattr(self, f)}")
        for f in ("rom_transistors_per_bit", "sram_transistors_per_bit", "transistors_per_lane", "overhead_fraction"):
            if getattr(self, f) < 0:
                raise ValueError(f"FloorplanParams.{f} must be non-negative, got {getattr(self, f)}")
        if self.lanes_per_bank < 1 or self.kv_tokens < 0 or self.adapter_sram_bytes < 0:
            raise ValueError("lanes_per_bank must be >= 1, kv_tokens and adapter_sram_bytes >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _hc1() -> FloorplanParams:
    sram_bit_density = 1.0 / SRAM_CELL_UM2_N6                       # Mbit/mm2 (1 um2 = 1e-6 mm2)
    rom_bit_density = 1.0 / (SRAM_CELL_UM2_N6 * ROM_TO_SRAM_CELL_RATIO)
    logic_density = N6_LOGIC_MTR_PER_MM2 * LOGIC_UTILIZATION         # MTr/mm2
    return FloorplanParams(
        name="hc1",
        rom_density_mbit_per_mm2=rom_bit_density * ARRAY_EFFICIENCY,
        rom_transistors_per_bit=1.0,
        sram_density_mbit_per_mm2=sram_bit_density * ARRAY_EFFICIENCY,
        sram_transistors_per_bit=6.0,
        logic_mm2_per_lane=LANE_TRANSISTORS / (logic_density * 1e6),
        transistors_per_lane=LANE_TRANSISTORS,
        lanes_per_bank=1,
        overhead_fraction=0.10,
        kv_tokens=2048,
        sources=(
            "SRAM cell 0.027 um2 (TSMC N7/N6, IEDM 2016 / ISSCC 2017 via wikichip); silicon-facts.md s.4",
            "ROM: classic NOR mask ROM, one transistor per bit (silicon-facts.md s.4); cell = 0.5 x SRAM cell (assumption)",
            "array efficiency 0.8 for ROM and SRAM banks (assumption)",
            "logic: N6 114 MTr/mm2 peak (TSMC) x 0.6 utilization (assumption); 150k transistors per CIM lane (estimate, docs/rom.md)",
            "overhead 10% of core area for IO/PHY, clock, power grid, control, vector unit (assumption)",
            "KV budget: 2048 tokens = one user at HC1's 1k-in/1k-out benchmark setting (silicon-facts.md s.1)",
        ),
    )


FLOORPLAN_PRESETS: dict[str, FloorplanParams] = {"hc1": _hc1()}


def get_floorplan_params(name: str = "hc1", **overrides) -> FloorplanParams:
    try:
        p = FLOORPLAN_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown floorplan preset {name!r}; known: {', '.join(FLOORPLAN_PRESETS)}") from None
    return replace(p, **overrides) if overrides else p


@dataclass(frozen=True)
class Floorplan:
    """Die estimate for one ROM image (areas in mm2, transistors as counts)."""

    params: str
    rom_code_bits_used: int
    rom_code_bits_physical: int
    rom_meta_bits: int
    rom_vector_bits: int
    banks: int
    lanes: int
    sram_kv_bytes: int
    sram_adapter_bytes: int
    rom_mm2: float
    sram_mm2: float
    logic_mm2: float
    overhead_mm2: float
    total_mm2: float
    rom_transistors: float
    sram_transistors: float
    logic_transistors: float
    total_transistors: float

    @property
    def rom_bits(self) -> int:
        return self.rom_code_bits_physical + self.rom_meta_bits + self.rom_vector_bits

    @property
    def bank_utilization(self) -> float:
        return self.rom_code_bits_used / self.rom_code_bits_physical if self.rom_code_bits_physical else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rom_bits"] = self.rom_bits
        d["bank_utilization"] = self.bank_utilization
        return d

    def table(self) -> str:
        g = 1e9
        return "\n".join([
            f"floorplan ({self.params})",
            f"  ROM    {self.rom_bits / g:8.2f} Gbit ({self.rom_code_bits_physical / g:.2f} code in {self.banks} banks, "
            f"{100 * self.bank_utilization:.1f}% used; {self.rom_meta_bits / g:.2f} scales)  {self.rom_mm2:8.1f} mm2  "
            f"{self.rom_transistors / g:6.1f} G transistors",
            f"  SRAM   {(self.sram_kv_bytes + self.sram_adapter_bytes) * 8 / g:8.2f} Gbit (KV {self.sram_kv_bytes / 2**20:.0f} MiB)"
            f"{'':22s}{self.sram_mm2:8.1f} mm2  {self.sram_transistors / g:6.1f} G transistors",
            f"  logic  {self.lanes:8d} CIM lanes{'':33s}{self.logic_mm2:8.1f} mm2  {self.logic_transistors / g:6.1f} G transistors",
            f"  other  {'':51s}{self.overhead_mm2:8.1f} mm2",
            f"  total  {'':51s}{self.total_mm2:8.1f} mm2  {self.total_transistors / g:6.1f} G transistors",
        ])


def kv_bytes_per_token(spec, kv: str) -> int:
    """KV-cache bytes one token adds over all layers (int8: values + one fp16 scale per token and KV head)."""
    b, s = (1, 2) if kv == "int8" else (2, 0)
    return 2 * spec.n_layers * spec.n_kv_heads * (spec.head_dim * b + s)


def floorplan(image, params: FloorplanParams | str = "hc1", kv_tokens: int | None = None) -> Floorplan:
    """Estimate the die of the chip holding ``image`` (a :class:`~hcemu.rom.image.RomImage`)."""
    p = get_floorplan_params(params) if isinstance(params, str) else params
    tokens = p.kv_tokens if kv_tokens is None else int(kv_tokens)
    amap = image.address_map
    code_used = sum(t["sections"]["codes"]["nbytes"] * 8 for t in image.directory["tensors"])
    code_phys = amap.physical_bits
    meta, vec = image.meta_bits, image.vector_bits
    rom_bits = code_phys + meta + vec
    banks = amap.n_banks
    lanes = banks * p.lanes_per_bank
    kv_bytes = tokens * kv_bytes_per_token(image.spec, image.plan.kv)
    sram_bits = (kv_bytes + p.adapter_sram_bytes) * 8
    rom_mm2 = rom_bits / (p.rom_density_mbit_per_mm2 * 1e6)
    sram_mm2 = sram_bits / (p.sram_density_mbit_per_mm2 * 1e6)
    logic_mm2 = lanes * p.logic_mm2_per_lane
    core = rom_mm2 + sram_mm2 + logic_mm2
    over = core * p.overhead_fraction
    rom_t = rom_bits * p.rom_transistors_per_bit
    sram_t = sram_bits * p.sram_transistors_per_bit
    logic_t = lanes * p.transistors_per_lane
    return Floorplan(p.name, code_used, code_phys, meta, vec, banks, lanes, kv_bytes, p.adapter_sram_bytes,
                     rom_mm2, sram_mm2, logic_mm2, over, core + over, rom_t, sram_t, logic_t,
                     rom_t + sram_t + logic_t)
