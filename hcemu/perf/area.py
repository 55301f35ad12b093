"""THE die-area model and the floorplan of a ROM image: areas and transistors from counts.

:func:`area_breakdown` holds the area equations; every other function here gathers counts and calls
it: :func:`chip_area_breakdown` from a model's shapes (the ROM bits :func:`hcemu.rom.rom_bits_for_model`
gives), :func:`floorplan` from a compiled image (its ROM bits as fabricated, its bank count). The
densities and transistor counts live only in :class:`hcemu.perf.specs.ChipSpec` (sources in
``hcemu.perf.specs.sources("hc1")`` and ``docs/perf.md``). For an image compiled with the default
geometry the two agree exactly (``tests/test_perf_area.py``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hcemu.model.spec import LAYER_MATRICES, ModelSpec
from hcemu.perf.analytic import LoraShape, kv_bytes_per_token
from hcemu.perf.specs import ChipSpec, get_chip
from hcemu.rom.image import rom_bits_for_model


def head_lane_scale(spec: ModelSpec, plan, chip) -> float:
    """Lane multiplier of the output-head region: its weights over a layer's when ``head_balanced``."""
    if not chip.head_balanced:
        return 1.0
    n, k = spec.matrix_shape("output")
    return max(1.0, n * k / spec.layer_own_params)


def expert_lane_scale(spec: ModelSpec) -> float:
    """CIM and vector lanes of one expert region in units of a layer region's, weight-proportional: its
    weights over the layer's own (every region streams its weights in the same cycles; docs/perf.md
    "Mixture of experts"); a chip scales it by ``ChipSpec.expert_lane_share``. 0 for a dense model."""
    return spec.expert_params / spec.layer_own_params if spec.is_moe else 0.0


def expert_lanes(spec: ModelSpec, chip, n_layers: int | None = None) -> float:
    """All expert regions' lanes of ``n_layers`` mixture-of-experts layers (default all of ``spec``'s) in
    units of a layer region's: ``n_layers * n_experts *`` :func:`expert_lane_scale` ``*
    chip.expert_lane_share`` (the ``expert_lanes`` of :func:`area_breakdown`); 0 for a dense model."""
    n = spec.n_layers if n_layers is None else int(n_layers)
    return n * spec.n_experts * expert_lane_scale(spec) * chip.expert_lane_share


@dataclass(frozen=True)
class AreaBreakdown:
    """Die area (mm2) and transistor count of a hard-coded chip, by block (see :func:`area_breakdown`).

    rom_bits: bits held in mask ROM (physical code banks, scales/offsets, norm vectors); sram_bytes: KV
    and adapter SRAM; cim_lanes: int4 MAC lanes over all regions (head lanes balanced).
    """

    chip: str
    rom_bits: int
    sram_bytes: int
    cim_lanes: float
    rom_mm2: float
    sram_mm2: float
    logic_mm2: float
    overhead_mm2: float
    io_mm2: float
    rom_transistors: float
    sram_transistors: float
    logic_transistors: float

    @property
    def total_mm2(self) -> float:
        return self.rom_mm2 + self.sram_mm2 + self.logic_mm2 + self.overhead_mm2 + self.io_mm2

    @property
    def transistors(self) -> float:
        return self.rom_transistors + self.sram_transistors + self.logic_transistors

    def to_dict(self) -> dict:
        return {**asdict(self), "total_mm2": self.total_mm2, "transistors": self.transistors}


def area_breakdown(chip: ChipSpec | str, *, rom_bits: int, sram_bytes: int, n_layers: int,
                   head_lane_scale: float = 1.0, expert_lanes: float = 0.0) -> AreaBreakdown:
    """THE die-area model: areas and transistors from counts.

    rom_bits: bits held in ROM (every bank as fabricated, blank slots included, plus fp16 scales and
    norm vectors); sram_bytes: KV (+ adapter) SRAM; n_layers: layer regions; head_lane_scale: the output
    head region's lanes in units of a layer region's (:func:`head_lane_scale`); 0 for a die of a
    multi-chip system without the head (no head lanes, no head vector unit); expert_lanes: all expert
    regions' lanes in those units (``n_layers * n_experts *`` :func:`expert_lane_scale`).

    ROM = rom_bits / rom density; SRAM = bits / SRAM density; logic = transistors of the CIM lanes
    (``cim_macs_per_cycle_w4`` per layer region, x head_lane_scale for the head, x expert_lanes for the
    experts), the attention lanes (per layer region) and the vector lanes and transcendental units
    (layers + head + expert_lanes) / logic density; overhead = ``core_overhead_fraction`` x (ROM + SRAM +
    logic); plus ``io_area_mm2``.
    Transistors: ROM bits / ``rom_bits_per_transistor`` + SRAM bits x ``sram_transistors_per_bit`` + logic.
    """
    chip = get_chip(chip)
    for name, v in (("rom_bits", rom_bits), ("sram_bytes", sram_bytes), ("n_layers", n_layers)):
        if v < 0:
            raise ValueError(f"area_breakdown: {name} must be >= 0, got {v}")
    if not head_lane_scale >= 0:
        raise ValueError(f"area_breakdown: head_lane_scale must be >= 0, got {head_lane_scale}")
    if not expert_lanes >= 0:
        raise ValueError(f"area_breakdown: expert_lanes must be >= 0, got {expert_lanes}")
    cim_lanes = chip.cim_macs_per_cycle_w4 * (n_layers + head_lane_scale + expert_lanes)
    vector_regions = n_layers + (1 if head_lane_scale > 0 else 0) + expert_lanes  # layers', head's, experts'
    logic_tr = (cim_lanes * chip.cim_lane_transistors
                + n_layers * chip.attn_macs_per_cycle * chip.attn_lane_transistors
                + vector_regions * (chip.vec_flops_per_cycle + chip.vec_transcendentals_per_cycle)
                * chip.vec_lane_transistors)
    sram_bits = 8 * int(sram_bytes)
    rom_mm2 = rom_bits / (chip.rom_density_mbit_per_mm2 * 1e6)
    sram_mm2 = sram_bits / (chip.sram_density_mbit_per_mm2 * 1e6)
    logic_mm2 = logic_tr / (chip.logic_density_mtr_per_mm2 * 1e6)
    return AreaBreakdown(
        chip=chip.name, rom_bits=int(rom_bits), sram_bytes=int(sram_bytes), cim_lanes=float(cim_lanes),
        rom_mm2=rom_mm2, sram_mm2=sram_mm2, logic_mm2=logic_mm2,
        overhead_mm2=chip.core_overhead_fraction * (rom_mm2 + sram_mm2 + logic_mm2), io_mm2=chip.io_area_mm2,
        rom_transistors=rom_bits / chip.rom_bits_per_transistor,
        sram_transistors=sram_bits * chip.sram_transistors_per_bit, logic_transistors=logic_tr)


def adapter_sram_bytes_for(spec: ModelSpec, adapters, resident: int = 1) -> int:
    """SRAM for ``resident`` LoRA adapters of each :class:`~hcemu.perf.analytic.LoraShape` in ``adapters``
    (a shape or a sequence; each shape's bytes: :meth:`LoraShape.sram_bytes`)."""
    if isinstance(adapters, LoraShape):
        adapters = (adapters,)
    if int(resident) < 0:
        raise ValueError(f"resident adapters must be >= 0, got {resident}")
    return int(resident) * sum(a.sram_bytes(spec) for a in (adapters or ()))


def chip_area_breakdown(chip: ChipSpec | str, model: ModelSpec, plan, kv_sram_bytes: int | None = None,
                        geometry=None, adapter_sram_bytes: int = 0) -> AreaBreakdown:
    """:func:`area_breakdown` of the chip hard-wiring ``model`` in ``plan``, counts from shapes alone.

    ROM bits are those of the image :func:`hcemu.rom.compile_model` would write (bank padding of
    ``geometry``, default :meth:`RomGeometry.for_model`; scales; norm vectors): see
    :func:`hcemu.rom.image.rom_bits_for_model`. SRAM: ``kv_sram_bytes`` (default the chip's) plus
    ``adapter_sram_bytes`` for resident LoRA adapters (:func:`adapter_sram_bytes_for`).
    """
    chip = get_chip(chip)
    sram_bytes = chip.kv_sram_bytes if kv_sram_bytes is None else int(kv_sram_bytes)
    if sram_bytes < 0 or adapter_sram_bytes < 0:
        raise ValueError(f"kv_sram_bytes and adapter_sram_bytes must be >= 0, got {sram_bytes}, {adapter_sram_bytes}")
    rom = rom_bits_for_model(model, plan, geometry)
    return area_breakdown(chip, rom_bits=rom.total, sram_bytes=sram_bytes + int(adapter_sram_bytes),
                          n_layers=model.n_layers, head_lane_scale=head_lane_scale(model, plan, chip),
                          expert_lanes=expert_lanes(model, chip))


def chip_area_mm2(spec: ChipSpec | str, model: ModelSpec, plan, kv_sram_bytes: int | None = None) -> float:
    """Die area in mm2 of ``spec``'s technology hard-wiring ``model`` in ``plan`` (see :func:`chip_area_breakdown`)."""
    return chip_area_breakdown(spec, model, plan, kv_sram_bytes).total_mm2


@dataclass(frozen=True)
class Floorplan:
    """Die estimate for one ROM image: what its ROM holds (bits), its SRAM, and the priced areas.

    rom: :class:`~hcemu.rom.image.RomBits` read from the image; kv_tokens: KV budget in tokens (None when
    the SRAM is the chip preset's ``kv_sram_bytes``); area: :class:`AreaBreakdown`
    (areas in mm2, transistors as counts).
    """

    chip: str
    rom: object
    kv_tokens: int | None
    kv_sram_bytes: int
    adapter_sram_bytes: int
    area: AreaBreakdown
    regions: str = ""   # how the banks are cut into regions (layers, head, embedding, experts)

    @property
    def total_mm2(self) -> float:
        return self.area.total_mm2

    @property
    def total_transistors(self) -> float:
        return self.area.transistors

    def to_dict(self) -> dict:
        return {"chip": self.chip, "rom": self.rom.to_dict(), "kv_tokens": self.kv_tokens,
                "kv_sram_bytes": self.kv_sram_bytes, "adapter_sram_bytes": self.adapter_sram_bytes,
                **self.area.to_dict()}

    def table(self) -> str:
        g, a, r = 1e9, self.area, self.rom
        kv = f"{self.kv_tokens} tokens" if self.kv_tokens is not None else "chip preset"
        rows = [
            (f"ROM    {r.total / g:.2f} Gbit: {r.code_physical / g:.2f} code in {r.banks} banks "
             f"({100 * r.bank_utilization:.1f}% used), {r.meta / g:.2f} scales", a.rom_mm2, a.rom_transistors),
        ] + ([(f"       regions: {self.regions}", None, None)] if self.regions else []) + [
            (f"SRAM   {a.sram_bytes * 8 / g:.2f} Gbit: KV {self.kv_sram_bytes / 2**20:.1f} MiB ({kv})",
             a.sram_mm2, a.sram_transistors),
            (f"logic  {a.cim_lanes / 1e6:.2f} M CIM lanes, attention, vector", a.logic_mm2, a.logic_transistors),
            ("other  clock, power grid, routing; IO", a.overhead_mm2 + a.io_mm2, None),
            ("total", a.total_mm2, a.transistors),
        ]
        w = max(len(t) for t, mm, _ in rows if mm is not None)
        lines = [f"floorplan ({self.chip} technology)"]
        for text, mm2, tr in rows:
            if mm2 is None:
                lines.append(f"  {text}")
                continue
            lines.append(f"  {text:{w}s}  {mm2:8.1f} mm2" + ("" if tr is None else f"  {tr / g:6.2f} G transistors"))
        return "\n".join(lines)


def floorplan(image, chip="hc1", kv_tokens: int | None = None, adapter_sram_bytes: int = 0) -> Floorplan:
    """Die of the chip holding ``image`` (a :class:`~hcemu.rom.image.RomImage`) in ``chip``'s technology.

    chip: a :class:`~hcemu.perf.specs.ChipSpec` or preset name. kv_tokens: KV-cache budget in tokens
    (``kv_tokens x`` :func:`hcemu.perf.analytic.kv_bytes_per_token` bytes of SRAM); None: the chip's
    ``kv_sram_bytes``. adapter_sram_bytes: extra SRAM for LoRA adapters.
    """
    chip = get_chip(chip)
    if kv_tokens is not None and int(kv_tokens) < 0:
        raise ValueError(f"kv_tokens must be >= 0, got {kv_tokens}")
    if adapter_sram_bytes < 0:
        raise ValueError(f"adapter_sram_bytes must be >= 0, got {adapter_sram_bytes}")
    kv = chip.kv_sram_bytes if kv_tokens is None else int(kv_tokens) * kv_bytes_per_token(image.spec, image.plan)
    rom = image.rom_bits
    spec = image.spec
    area = area_breakdown(chip, rom_bits=rom.total, sram_bytes=kv + int(adapter_sram_bytes),
                          n_layers=spec.n_layers, head_lane_scale=head_lane_scale(spec, image.plan, chip),
                          expert_lanes=expert_lanes(spec, chip))
    return Floorplan(chip.name, rom, None if kv_tokens is None else int(kv_tokens), kv, int(adapter_sram_bytes), area,
                     region_summary(image.address_map))


def region_summary(amap) -> str:
    """How an address map cuts the ROM into bank regions, e.g. ``"2 layers x 256 banks, head 32,
    embedding 64, 16 experts x 32 banks (one region per expert)"``."""
    L, E, banks = amap.n_layers, amap.n_experts, amap.region_banks
    parts = [f"{L} layers x {int(banks[0])} banks", f"head {int(banks[L])}", f"embedding {int(banks[L + 1])}"]
    if E:
        eb = banks[L + 2:]
        size = f"{int(eb.min())}" if eb.min() == eb.max() else f"{int(eb.min())}-{int(eb.max())}"
        parts.append(f"{L * E} experts x {size} banks (one region per expert)")
    return ", ".join(parts)
