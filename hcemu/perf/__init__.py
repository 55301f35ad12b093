"""Performance models: price the events of a hard-coded chip, and the same work on GPUs, in time,
energy, area and money. Depends on events, ModelSpec, Plan and layout sizes — never on kernels or the
functional chip (the host measurement imports the kernels lazily).

Modules: :mod:`~hcemu.perf.specs` (presets), :mod:`~hcemu.perf.analytic` (events from shapes),
:mod:`~hcemu.perf.silicon`, :mod:`~hcemu.perf.gpu`, :mod:`~hcemu.perf.cost`, :mod:`~hcemu.perf.sweep`,
:mod:`~hcemu.perf.report`, :mod:`~hcemu.perf.plots`, :mod:`~hcemu.perf.host`.
"""
from hcemu.perf.analytic import events_from_shapes
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel
from hcemu.perf.silicon import SiliconModel, area_breakdown, chip_area_breakdown, chip_area_mm2
from hcemu.perf.specs import (CHIP_PRESETS, COST_PRESETS, GPU_PRESETS, HC1_PLAN, ChipSpec, CostSpec, GpuSpec,
                              get_chip, get_cost, get_gpu)

__all__ = ["events_from_shapes", "CostModel", "GpuModel", "SiliconModel", "area_breakdown", "chip_area_breakdown", "chip_area_mm2",
           "CHIP_PRESETS", "COST_PRESETS", "GPU_PRESETS", "HC1_PLAN", "ChipSpec", "CostSpec", "GpuSpec",
           "get_chip", "get_cost", "get_gpu"]
