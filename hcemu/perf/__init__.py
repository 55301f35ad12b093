"""Performance models: price the events of a hard-coded chip, and the same work on GPUs, in time,
energy, area and money. Depends on events, ModelSpec, Plan, layout sizes and the ROM's bit counts —
never on kernels or the functional chip (the host's own measured speed is :mod:`hcemu.bench`).

Modules: :mod:`~hcemu.perf.specs` (presets and the source of every parameter), :mod:`~hcemu.perf.figures`
(the published figures they are calibrated to or compared with), :mod:`~hcemu.perf.validation` (each
figure predicted, with its error; the generated tables of the docs), :mod:`~hcemu.perf.analytic` (events
from shapes), :mod:`~hcemu.perf.area` (the die-area model, floorplans), :mod:`~hcemu.perf.sizing` (a preset
sized for another model), :mod:`~hcemu.perf.silicon`, :mod:`~hcemu.perf.gpu`, :mod:`~hcemu.perf.deploy`
(GPU precisions, serving engines), :mod:`~hcemu.perf.cost`, :mod:`~hcemu.perf.economics`,
:mod:`~hcemu.perf.sweep`, :mod:`~hcemu.perf.plots`.
"""
from hcemu.perf.analytic import events_from_shapes
from hcemu.perf.area import Floorplan, area_breakdown, chip_area_breakdown, chip_area_mm2, floorplan
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import (CHIP_PRESETS, COST_PRESETS, GPU_PRESETS, HC1_PLAN, ChipSpec, CostSpec, GpuSpec,
                              get_chip, get_cost, get_gpu)

__all__ = ["events_from_shapes", "Floorplan", "area_breakdown", "chip_area_breakdown", "chip_area_mm2", "floorplan",
           "CostModel", "GpuModel", "SiliconModel", "size_for_model",
           "CHIP_PRESETS", "COST_PRESETS", "GPU_PRESETS", "HC1_PLAN", "ChipSpec", "CostSpec", "GpuSpec",
           "get_chip", "get_cost", "get_gpu"]
