"""The model-to-chip compiler: quantization, ROM bank geometry and addressing, the ROM image file and
the floorplan estimate. See ``docs/rom.md``."""
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.address import AddressMap, TensorPlacement
from hcemu.rom.image import CompileReport, RomImage, RomImageError, compile_model
from hcemu.rom.floorplan import FLOORPLAN_PRESETS, Floorplan, FloorplanParams, floorplan, get_floorplan_params

__all__ = ["RomGeometry", "AddressMap", "TensorPlacement", "CompileReport", "RomImage", "RomImageError",
           "compile_model", "FLOORPLAN_PRESETS", "Floorplan", "FloorplanParams", "floorplan",
           "get_floorplan_params"]
