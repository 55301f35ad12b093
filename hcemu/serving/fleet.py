"""Fleets: ``count`` identical cards of one kind -- a hard-coded chip preset (``hc1``) or a GPU preset at
a precision (``h200``, ``h200-fp8``, ``b200-nvfp4``) under a serving engine -- and their per-request or
per-step prices from :mod:`hcemu.perf` (the simulator never looks at events or kernels)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from hcemu.model.spec import ModelSpec
from hcemu.perf.deploy import PRECISION_ALIASES, PRECISIONS, get_engine, gpu_at_precision
from hcemu.perf.gpu import GpuModel
from hcemu.perf.request_prices import chip_request_prices
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import CHIP_PRESETS, GPU_PRESETS, default_plan, get_chip

_FLEET = re.compile(r"^\s*([A-Za-z0-9_.]+)(?:-([A-Za-z0-9]+))?\s*:\s*([0-9]+)\s*$")


@dataclass(frozen=True)
class FleetSpec:
    """``count`` cards of ``name``; ``kind`` is ``"chip"`` or ``"gpu"``; ``precision`` only for GPUs."""

    name: str
    kind: str
    count: int
    precision: str = "bf16"
    engine: str = "vllm"

    def __post_init__(self):
        if self.kind not in ("chip", "gpu"):
            raise ValueError(f"fleet kind must be 'chip' or 'gpu', got {self.kind!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"a fleet needs count >= 1 cards, got {self.count!r}")

    @property
    def label(self) -> str:
        base = self.name if self.kind == "chip" or self.precision == "bf16" else f"{self.name}-{self.precision}"
        return f"{base}:{self.count}"


def parse_fleet(text: str, *, precision: str = "bf16", engine: str = "vllm") -> FleetSpec:
    """``NAME[-PRECISION]:COUNT`` (``hc1:10``, ``h200:8``, ``b200-nvfp4:4``); a GPU without a precision in
    its name gets ``precision``."""
    m = _FLEET.match(str(text))
    if not m:
        raise ValueError(f"fleet {text!r} is not NAME[-PRECISION]:COUNT (e.g. hc1:10, h200-fp8:8)")
    name, prec, count = m.group(1).lower(), m.group(2), int(m.group(3))
    if name in CHIP_PRESETS:
        if prec:
            raise ValueError(f"{name} is a hard-coded chip: its precision is its plan, not {prec!r}")
        return FleetSpec(name, "chip", count)
    if name in GPU_PRESETS:
        p = (prec or precision).lower()
        if p not in PRECISIONS and p not in PRECISION_ALIASES:
            raise ValueError(f"unknown GPU precision {p!r} in fleet {text!r}")
        return FleetSpec(name, "gpu", count, PRECISION_ALIASES.get(p, p), engine)
    raise ValueError(f"unknown card {name!r} in fleet {text!r}; chips: {', '.join(sorted(CHIP_PRESETS))}; "
                     f"GPUs: {', '.join(sorted(GPU_PRESETS))}")


@dataclass(frozen=True)
class ChipLimits:
    """What one hard-coded card can hold at once: KV SRAM bytes, dynamic power (W) above its static
    power, and its pipeline's injection capacity (1.0 = every slot of the slowest region)."""

    kv_bytes: float
    dynamic_power_w: float
    static_power_w: float
    pipeline_share: float = 1.0


def chip_for(fleet: FleetSpec, spec: ModelSpec, plan=None):
    """The chip preset sized for ``spec`` (:func:`hcemu.perf.sizing.size_for_model`) and its plan."""
    plan = default_plan(spec) if plan is None else plan
    return size_for_model(get_chip(fleet.name), spec, plan), plan


def chip_prices(fleet: FleetSpec, spec: ModelSpec, prompt_tokens, output_tokens, plan=None):
    """(per-request price arrays of :func:`hcemu.perf.request_prices.chip_request_prices`, ChipLimits, chip)."""
    chip, plan = chip_for(fleet, spec, plan)
    prices = chip_request_prices(spec, plan, chip, prompt_tokens, output_tokens)
    prices["decode_share"] = prices["decode_slowest_s"] / prices["decode_s_per_token"]
    prices["decode_power_w"] = prices["decode_energy_j_per_token"] / prices["decode_s_per_token"]
    limits = ChipLimits(float(chip.kv_sram_bytes), max(0.0, chip.power_limit_w - chip.static_power_w),
                        chip.static_power_w)
    return prices, limits, chip


def gpu_model(fleet: FleetSpec) -> GpuModel:
    return GpuModel(gpu_at_precision(fleet.name, fleet.precision), get_engine(fleet.engine))

