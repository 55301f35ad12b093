"""Floorplan of the chip that holds a ROM image: its ROM counts priced by the one die-area model.

The densities and transistor counts live only in :class:`hcemu.perf.specs.ChipSpec` (sources in
``hcemu.perf.specs.sources("hc1")`` and ``docs/perf.md``); the area equations only in
:func:`hcemu.perf.silicon.area_breakdown`. This module reads the counts from the image itself (ROM bits
of its banks as fabricated, its scales and norm vectors, its bank count) and the KV budget, and calls
that function. :func:`hcemu.perf.silicon.chip_area_breakdown` derives the same counts from shapes; the
two agree exactly for an image compiled with the default geometry (``tests/test_floorplan.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from hcemu.perf.silicon import AreaBreakdown


@dataclass(frozen=True)
class Floorplan:
    """Die estimate for one ROM image: what its ROM holds (bits), its SRAM, and the priced areas.

    rom: :class:`~hcemu.rom.image.RomBits` read from the image; kv_tokens: KV budget in tokens (None when
    the SRAM is the chip preset's ``kv_sram_bytes``); area: :class:`~hcemu.perf.silicon.AreaBreakdown`
    (areas in mm2, transistors as counts).
    """

    chip: str
    rom: object
    kv_tokens: int | None
    kv_sram_bytes: int
    adapter_sram_bytes: int
    area: AreaBreakdown

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
            (f"SRAM   {a.sram_bytes * 8 / g:.2f} Gbit: KV {self.kv_sram_bytes / 2**20:.1f} MiB ({kv})",
             a.sram_mm2, a.sram_transistors),
            (f"logic  {a.cim_lanes / 1e6:.2f} M CIM lanes, attention, vector", a.logic_mm2, a.logic_transistors),
            ("other  clock, power grid, routing; IO", a.overhead_mm2 + a.io_mm2, None),
            ("total", a.total_mm2, a.transistors),
        ]
        w = max(len(t) for t, _, _ in rows)
        lines = [f"floorplan ({self.chip} technology)"]
        for text, mm2, tr in rows:
            lines.append(f"  {text:{w}s}  {mm2:8.1f} mm2" + ("" if tr is None else f"  {tr / g:6.2f} G transistors"))
        return "\n".join(lines)


def floorplan(image, chip="hc1", kv_tokens: int | None = None, adapter_sram_bytes: int = 0) -> Floorplan:
    """Die of the chip holding ``image`` (a :class:`~hcemu.rom.image.RomImage`) in ``chip``'s technology.

    chip: a :class:`~hcemu.perf.specs.ChipSpec` or preset name. kv_tokens: KV-cache budget in tokens
    (``kv_tokens x`` :func:`hcemu.perf.analytic.kv_bytes_per_token` bytes of SRAM); None: the chip's
    ``kv_sram_bytes``. adapter_sram_bytes: extra SRAM for LoRA adapters.
    """
    from hcemu.perf.analytic import kv_bytes_per_token
    from hcemu.perf.silicon import area_breakdown, head_lane_scale
    from hcemu.perf.specs import get_chip

    chip = get_chip(chip)
    if kv_tokens is not None and int(kv_tokens) < 0:
        raise ValueError(f"kv_tokens must be >= 0, got {kv_tokens}")
    if adapter_sram_bytes < 0:
        raise ValueError(f"adapter_sram_bytes must be >= 0, got {adapter_sram_bytes}")
    kv = chip.kv_sram_bytes if kv_tokens is None else int(kv_tokens) * kv_bytes_per_token(image.spec, image.plan)
    rom = image.rom_bits
    area = area_breakdown(chip, rom_bits=rom.total, sram_bytes=kv + int(adapter_sram_bytes),
                          n_layers=image.spec.n_layers, head_lane_scale=head_lane_scale(image.spec, image.plan, chip))
    return Floorplan(chip.name, rom, None if kv_tokens is None else int(kv_tokens), kv, int(adapter_sram_bytes), area)
