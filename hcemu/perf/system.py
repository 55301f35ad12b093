"""Systems of hard-coded dies: die budgets, and pricing a pipeline of dies joined by links.

See ``docs/system.md``.
"""
from __future__ import annotations

from hcemu.model.spec import get_preset
from hcemu.perf.specs import HC1_PLAN, ChipSpec, get_chip
from hcemu.rom.image import rom_bits_for_model


def reference_die_rom_bits(chip: ChipSpec | str = "hc1") -> int:
    """ROM bits of the reference die of ``chip``'s technology: its ``sized_for_model`` in
    :data:`HC1_PLAN` (hc1: Llama 3.1 8B, 33.7 Gbit) — the default die budget of ``--chips auto``."""
    chip = get_chip(chip)
    return rom_bits_for_model(get_preset(chip.sized_for_model), HC1_PLAN).total
