"""CostModel: cents per million tokens and the hard-coded chip's break-even volume against a GPU.

    $/Mtok = hourly cost / (utilization * tok/s * 3600) * 1e6
    hourly = price / lifetime hours + power * PUE * $/kWh  (+ NRE / (units * model-life hours) for a
             hard-coded card, whose lifetime is also capped by the model's useful life)

The throughput is each system's *aggregate* serving throughput (the chip's pipelined users, the GPU's
largest batch that fits), the way a provider fills the hardware.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hcemu.perf.specs import ChipSpec, CostSpec, GpuSpec, get_cost

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True)
class CostResult:
    system: str
    hourly_usd: float
    hardware_usd_per_hour: float
    nre_usd_per_hour: float
    energy_usd_per_hour: float
    tok_s: float
    cents_per_mtok: float

    def to_dict(self) -> dict:
        return asdict(self)


class CostModel:
    def __init__(self, cost: CostSpec | str = "default"):
        self.cost = get_cost(cost)

    def energy_usd_per_hour(self, power_w: float) -> float:
        c = self.cost
        return power_w / 1000.0 * c.pue * c.electricity_usd_per_kwh

    def cents_per_mtok(self, hourly_usd, tok_s):
        tok_s = np.asarray(tok_s, dtype=np.float64)
        if np.any(tok_s <= 0):
            raise ValueError("throughput must be > 0 tok/s to price a token")
        return hourly_usd / (self.cost.utilization * tok_s * 3600.0) * 1e6 * 100.0

    def gpu(self, gpu: GpuSpec, aggregate_tok_s: float) -> CostResult:
        c = self.cost
        hw = gpu.price_usd / (c.hardware_lifetime_years * HOURS_PER_YEAR)
        en = self.energy_usd_per_hour(gpu.power_w)
        return CostResult(gpu.name, hw + en, hw, 0.0, en, aggregate_tok_s,
                          float(self.cents_per_mtok(hw + en, aggregate_tok_s)))

    def chip_life_hours(self) -> float:
        c = self.cost
        return min(c.hardware_lifetime_years, c.model_useful_life_years) * HOURS_PER_YEAR

    def nre_usd_per_hour(self, units=None):
        """NRE (mask set + design) per card-hour, spread over ``units`` cards and the model's useful life."""
        c = self.cost
        units = c.units_per_model if units is None else np.asarray(units, dtype=np.float64)
        if np.any(np.asarray(units) < 1):
            raise ValueError("units must be >= 1")
        return c.nre_usd / (units * c.model_useful_life_years * HOURS_PER_YEAR)

    def chip(self, chip: ChipSpec, aggregate_tok_s: float, power_w: float, units=None) -> CostResult:
        hw = chip.card_price_usd / self.chip_life_hours()
        nre = float(self.nre_usd_per_hour(units))
        en = self.energy_usd_per_hour(power_w)
        return CostResult(chip.name, hw + nre + en, hw, nre, en, aggregate_tok_s,
                          float(self.cents_per_mtok(hw + nre + en, aggregate_tok_s)))

    def chip_cost_vs_units(self, chip: ChipSpec, aggregate_tok_s: float, power_w: float, units) -> np.ndarray:
        """Cents per Mtok of the hard-coded chip as a function of the cards built per model."""
        hw = chip.card_price_usd / self.chip_life_hours()
        return self.cents_per_mtok(hw + self.nre_usd_per_hour(units) + self.energy_usd_per_hour(power_w),
                                   aggregate_tok_s)

    def break_even_units(self, chip: ChipSpec, chip_tok_s: float, chip_power_w: float,
                         gpu_cents_per_mtok: float) -> float:
        """Cards per model above which the chip's cost per Mtok drops below the GPU's (inf if never)."""
        budget = gpu_cents_per_mtok / 100.0 / 1e6 * self.cost.utilization * chip_tok_s * 3600.0  # $/h at GPU price
        margin = budget - chip.card_price_usd / self.chip_life_hours() - self.energy_usd_per_hour(chip_power_w)
        if margin <= 0:
            return float("inf")
        return self.cost.nre_usd / (margin * self.cost.model_useful_life_years * HOURS_PER_YEAR)
