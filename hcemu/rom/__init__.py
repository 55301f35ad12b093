"""The model-to-chip compiler: quantization, ROM bank geometry and addressing, the ROM image file and
the floorplan estimate. See ``docs/rom.md``."""
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.address import AddressMap, TensorPlacement
from hcemu.rom.image import CompileReport, RomBits, RomImage, RomImageError, compile_model, rom_bits_for_model
from hcemu.rom.floorplan import Floorplan, floorplan

__all__ = ["RomGeometry", "AddressMap", "TensorPlacement", "CompileReport", "RomImage", "RomImageError",
           "compile_model", "RomBits", "rom_bits_for_model", "Floorplan", "floorplan"]
