"""The model-to-chip compiler: quantization, ROM bank geometry and addressing, the ROM image file and
(the floorplan that prices an image is :mod:`hcemu.perf.area`). See ``docs/rom.md``."""
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.address import AddressMap, TensorPlacement
from hcemu.rom.die import DieAssignment
from hcemu.rom.image import (CompileReport, RomBits, RomImage, RomImageError, compile_model, region_rom_bits,
                             rom_bits_for_model)

__all__ = ["RomGeometry", "AddressMap", "TensorPlacement", "CompileReport", "RomImage", "RomImageError",
           "compile_model", "RomBits", "rom_bits_for_model", "region_rom_bits", "DieAssignment"]
