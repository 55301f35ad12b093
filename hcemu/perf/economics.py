"""The economics of hard-wiring over a model's whole deployment: NRE, silicon, cards, servers, power,
cooling and facility, the model's lifetime and the deployment's volume -- hard-coded cards vs GPUs.

It prices (money from throughput and power figures the other perf models give), so it lives in
:mod:`hcemu.perf` beside :mod:`~hcemu.perf.cost`; the serving simulator above can feed it a measured
utilization.

A deployment serves a mean demand of ``D`` output tokens/s for the model's lifetime ``L`` years:

* **hard-coded**: ``N = D / (card tok/s x utilization)`` cards. One-off: this model's NRE (the two
  customized metal masks + per-model design) and its share of the platform's NRE (design + the first
  chip's full mask set, shared by ``models_per_platform`` models). Per card: the card's price (die from
  wafer cost / good dies per wafer, packaging and test, board, at the vendor's gross margin) and its
  share of a host server. The cards serve ``L - model_to_silicon`` years and are then scrapped (the chip
  is retired with its model); until they arrive, rented GPUs serve the demand.
* **GPU**: ``M = D / (GPU tok/s x utilization)`` GPUs with their server share, charged for the ``L``
  years they serve this model out of their depreciation life (they serve the next model afterwards).
* both: energy = power x PUE x hours x $/kWh; facility = power x $/kW-month; liquid cooling where a
  device draws more than ``liquid_cooling_above_w`` (capex per kW, lower PUE).

``cents/Mtok = total cost / tokens served x 1e8``. Every cost is linear in ``D`` except the NRE, so the
break-even demand is ``NRE / (GPU cost per unit demand - hard-coded cost per unit demand)`` (infinite
when the chip is not cheaper per unit), and for a given demand the lifetime below which GPUs win is
found by bisection. Parameters: :class:`EconomicsSpec` (new) and :class:`hcemu.perf.specs.CostSpec`
(electricity, utilization, GPU depreciation life, per-model masks and design), sources in
:data:`ECONOMICS_SOURCES` (:class:`hcemu.perf.specs.Source`: derived or assumed, the text stating the
value) and docs/economics.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType

import numpy as np

from hcemu.perf.cost import HOURS_PER_YEAR
from hcemu.perf.specs import (ChipSpec, CostSpec, GpuSpec, Source, _assumed, _check_positive, _derived, _lookup,
                              _register, get_cost)


@dataclass(frozen=True)
class EconomicsSpec:
    """Deployment-economics assumptions beyond :class:`~hcemu.perf.specs.CostSpec` (units in names)."""

    name: str
    platform_design_usd: float
    full_mask_set_usd: float
    models_per_platform: int
    model_to_silicon_years: float
    wafer_usd: float
    wafer_diameter_mm: float
    defect_density_per_cm2: float
    package_test_usd: float
    card_board_usd: float
    vendor_gross_margin: float
    host_server_usd: float
    cards_per_server: int
    gpu_server_usd_per_gpu: float
    air_pue: float
    liquid_pue: float
    liquid_cooling_above_w: float
    liquid_cooling_usd_per_kw: float
    facility_usd_per_kw_month: float

    def __post_init__(self):
        _check_positive(self, [f.name for f in fields(self) if f.name != "name"],
                        ("platform_design_usd", "full_mask_set_usd", "model_to_silicon_years", "package_test_usd",
                         "card_board_usd", "vendor_gross_margin", "host_server_usd", "gpu_server_usd_per_gpu",
                         "liquid_cooling_usd_per_kw", "facility_usd_per_kw_month", "defect_density_per_cm2"))
        if self.vendor_gross_margin >= 1:
            raise ValueError(f"EconomicsSpec.vendor_gross_margin is a fraction in [0, 1), got {self.vendor_gross_margin}")
        if self.air_pue < 1 or self.liquid_pue < 1:
            raise ValueError(f"PUE must be >= 1, got air {self.air_pue}, liquid {self.liquid_pue}")

    def replace(self, **changes) -> "EconomicsSpec":
        return replace(self, **changes)


ECONOMICS_PRESETS: dict[str, EconomicsSpec] = {}
ECONOMICS_SOURCES: dict[str, MappingProxyType] = {}

_register(ECONOMICS_PRESETS, EconomicsSpec(
    name="default", platform_design_usd=47e6, full_mask_set_usd=12.5e6, models_per_platform=4,
    model_to_silicon_years=2 / 12, wafer_usd=9346.0, wafer_diameter_mm=300.0, defect_density_per_cm2=0.1,
    package_test_usd=150.0, card_board_usd=800.0, vendor_gross_margin=0.6, host_server_usd=25_000.0,
    cards_per_server=10, gpu_server_usd_per_gpu=12_500.0, air_pue=1.4, liquid_pue=1.15,
    liquid_cooling_above_w=900.0, liquid_cooling_usd_per_kw=2_000.0, facility_usd_per_kw_month=150.0,
), {
    "platform_design_usd": _assumed(
        "$47 M: architecture, RTL, verification, IP and bring-up of the first chip; with the full mask set it "
        "makes $59.5 M, the low end of the HNLPU paper's NRE estimate for a hard-wired LLM chip ($59.5-123.5 M "
        "[I], arXiv 2508.16151)"),
    "full_mask_set_usd": _assumed("$12.5 M, the midpoint of $10-15 M quoted for an N7/N6 mask set (the first "
                                  "chip needs every layer)"),
    "models_per_platform": _assumed("4 models hard-wired on one platform (base layers, first chip's design) "
                                    "before it is redesigned"),
    "model_to_silicon_years": _derived("[V] 2 months from model to silicon (Taalas' target, EE Times / "
                                       "agent-wars; not a track record)"),
    "wafer_usd": _derived("[S] $9,346 per 300 mm 7 nm-class wafer (CSET, 'AI Chips: What They Are and Why They "
                          "Matter', 2020); N6 is a 7 nm-class node"),
    "wafer_diameter_mm": _derived("300 mm wafers (standard)"),
    "defect_density_per_cm2": _assumed("0.1 defects/cm2, a mature 7 nm-class process (TSMC has reported ~0.09 for "
                                       "N7, press); Murphy's yield model, no repair of ROM arrays"),
    "package_test_usd": _assumed("$150: organic flip-chip package and test of a large die; no HBM, no interposer "
                                 "[V]"),
    "card_board_usd": _assumed("$800: PCIe board, power stages, heatsink for a ~250 W air-cooled card"),
    "vendor_gross_margin": _assumed("60% gross margin of the card vendor (price = cost / (1 - margin))"),
    "host_server_usd": _assumed("$25,000 for the two-socket x86 host, chassis, network and power supplies"),
    "cards_per_server": _derived("[V] 10 cards in a two-socket x86 server (Next Platform)"),
    "gpu_server_usd_per_gpu": _assumed("$12,500 per GPU of an 8-GPU server's chassis, CPUs, NICs and NVLink "
                                       "switches (~$100 k per server beside the GPUs)"),
    "air_pue": _assumed("1.4 for an air-cooled hall"),
    "liquid_pue": _assumed("1.15 for direct liquid cooling"),
    "liquid_cooling_above_w": _assumed("900 W: devices drawing more (B200's 1,000 W) are liquid cooled; HC1 is "
                                       "air cooled [V]"),
    "liquid_cooling_usd_per_kw": _assumed("$2,000 per kW of liquid-cooled IT load (CDUs, manifolds, cold "
                                          "plates)"),
    "facility_usd_per_kw_month": _assumed("$150 per kW of IT load per month: data-centre space, power "
                                          "provisioning and cooling plant (colocation rates $120-200/kW-month), "
                                          "energy excluded"),
}, ECONOMICS_SOURCES)


def get_economics(name="default") -> EconomicsSpec:
    return name if isinstance(name, EconomicsSpec) else _lookup(ECONOMICS_PRESETS, "economics", name)


def economics_sources(name="default") -> dict[str, Source]:
    if name not in ECONOMICS_SOURCES:
        raise ValueError(f"unknown economics preset {name!r}; known: {', '.join(sorted(ECONOMICS_SOURCES))}")
    return dict(ECONOMICS_SOURCES[name])


def dies_per_wafer(die_mm2: float, wafer_diameter_mm: float = 300.0) -> float:
    """Gross dies of ``die_mm2`` on a wafer: ``pi r^2 / A - pi d / sqrt(2 A)`` (the standard estimate)."""
    if not die_mm2 > 0:
        raise ValueError(f"die area must be > 0 mm2, got {die_mm2}")
    d = wafer_diameter_mm
    return max(0.0, math.pi * (d / 2) ** 2 / die_mm2 - math.pi * d / math.sqrt(2 * die_mm2))


def murphy_yield(die_mm2: float, defects_per_cm2: float) -> float:
    """Murphy's yield ``((1 - e^-AD) / AD)^2`` (A in cm2); 1 with no defects."""
    ad = die_mm2 / 100.0 * defects_per_cm2
    return 1.0 if ad == 0 else ((1 - math.exp(-ad)) / ad) ** 2


@dataclass(frozen=True)
class CardCost:
    """Bottom-up price of one hard-coded card and its host share (US$)."""

    die_mm2: float
    dies_per_wafer: float
    yield_fraction: float
    die_usd: float
    card_cost_usd: float
    card_price_usd: float
    server_share_usd: float

    @property
    def installed_usd(self) -> float:
        return self.card_price_usd + self.server_share_usd

    def to_dict(self) -> dict:
        return {**asdict(self), "installed_usd": self.installed_usd}


def card_cost(die_mm2: float, econ: EconomicsSpec | str = "default") -> CardCost:
    """Die (wafer / good dies), packaging and test, board, the vendor's margin, the host server's share."""
    e = get_economics(econ)
    dpw = dies_per_wafer(die_mm2, e.wafer_diameter_mm)
    y = murphy_yield(die_mm2, e.defect_density_per_cm2)
    if dpw * y <= 0:
        raise ValueError(f"a {die_mm2:.0f} mm2 die does not fit on a {e.wafer_diameter_mm:g} mm wafer")
    die = e.wafer_usd / (dpw * y)
    cost = die + e.package_test_usd + e.card_board_usd
    return CardCost(die_mm2, dpw, y, die, cost, cost / (1 - e.vendor_gross_margin), e.host_server_usd / e.cards_per_server)


@dataclass(frozen=True)
class System:
    """What the economics needs of one device serving the model: its sustained output tok/s (at full
    load), its power (W), its installed price (device + server share, US$), and whether it is hard-wired.
    ``gpu``: the GpuSpec of a GPU (its rent bridges the hard-coded chip's model-to-silicon time)."""

    name: str
    tok_s: float
    power_w: float
    installed_usd: float
    hard_coded: bool
    gpu: GpuSpec | None = None


def chip_system(chip: ChipSpec, tok_s: float, power_w: float, die_mm2: float, econ="default") -> System:
    return System(chip.name, tok_s, power_w, card_cost(die_mm2, econ).installed_usd, True)


def gpu_system(gpu: GpuSpec, tok_s: float, econ="default") -> System:
    e = get_economics(econ)
    return System(gpu.name, tok_s, gpu.power_w, gpu.price_usd + e.gpu_server_usd_per_gpu, False, gpu)


class Economics:
    """Lifetime cost of serving one model with hard-coded cards or GPUs (module docstring)."""

    def __init__(self, econ: EconomicsSpec | str = "default", cost: CostSpec | str = "default"):
        self.econ = get_economics(econ)
        self.cost = get_cost(cost)

    def nre_usd(self) -> float:
        """One model's NRE: its metal masks and design, plus its share of the platform's NRE."""
        e, c = self.econ, self.cost
        return c.mask_set_usd + c.design_usd + (e.platform_design_usd + e.full_mask_set_usd) / e.models_per_platform

    def _pue_and_cooling(self, power_w: float) -> tuple[float, float]:
        e = self.econ
        liquid = power_w > e.liquid_cooling_above_w
        return (e.liquid_pue, e.liquid_cooling_usd_per_kw * power_w / 1000.0) if liquid else (e.air_pue, 0.0)

    def _per_device(self, s: System, years) -> np.ndarray:
        """US$ per device over ``years`` of service: hardware charge, cooling capex, energy, facility."""
        years = np.asarray(years, dtype=np.float64)
        e, c = self.econ, self.cost
        pue, cooling = self._pue_and_cooling(s.power_w)
        capex = s.installed_usd + cooling
        hardware = capex if s.hard_coded else capex * np.minimum(years / c.hardware_lifetime_years, 1.0)
        hours = years * HOURS_PER_YEAR
        energy = s.power_w / 1000.0 * pue * c.electricity_usd_per_kwh * hours
        facility = s.power_w / 1000.0 * e.facility_usd_per_kw_month * 12.0 * years
        return hardware + energy + facility

    def cost_per_demand(self, s: System, lifetime_years, bridge: System | None = None) -> np.ndarray:
        """US$ per (output tok/s of mean demand) over the model's life, NRE excluded.

        A hard-coded system serves ``lifetime - model_to_silicon`` years; ``bridge`` (a GPU System) serves
        the first ``model_to_silicon`` years at its hourly rent (none: that demand goes unserved and
        uncharged)."""
        L = np.asarray(lifetime_years, dtype=np.float64)
        if np.any(L <= 0):
            raise ValueError("the model's lifetime must be > 0 years")
        u = self.cost.utilization
        if not s.hard_coded:
            return self._per_device(s, L) / (s.tok_s * u)
        gap = np.minimum(self.econ.model_to_silicon_years, L)
        served = L - gap
        out = np.where(served > 0, self._per_device(s, served) / (s.tok_s * u), 0.0)
        if bridge is not None and bridge.gpu is not None:
            out = out + gap * HOURS_PER_YEAR * bridge.gpu.rent_usd_per_hour / (bridge.tok_s * u)
        return out

    def lifetime_cents_per_mtok(self, s: System, demand_tok_s, lifetime_years, bridge: System | None = None):
        """Cents per million output tokens over the model's life at mean demand ``demand_tok_s``."""
        D = np.asarray(demand_tok_s, dtype=np.float64)
        if np.any(D <= 0):
            raise ValueError("demand must be > 0 tokens/s")
        L = np.asarray(lifetime_years, dtype=np.float64)
        total = D * self.cost_per_demand(s, L, bridge) + (self.nre_usd() if s.hard_coded else 0.0)
        tokens = D * L * HOURS_PER_YEAR * 3600.0
        return total / tokens * 1e8

    def break_even_demand(self, chip: System, gpu: System, lifetime_years) -> np.ndarray:
        """Mean demand (output tok/s) above which hard-wiring is cheaper over the model's life (inf if never);
        the GPU bridges the chip's model-to-silicon time."""
        margin = self.cost_per_demand(gpu, lifetime_years) - self.cost_per_demand(chip, lifetime_years, gpu)
        with np.errstate(divide="ignore"):
            return np.where(margin > 0, self.nre_usd() / np.where(margin > 0, margin, 1.0), np.inf)

    def break_even_cards(self, chip: System, gpu: System, lifetime_years) -> np.ndarray:
        """:meth:`break_even_demand` in hard-coded cards deployed."""
        return self.break_even_demand(chip, gpu, lifetime_years) / (chip.tok_s * self.cost.utilization)

    def gpu_wins_below_years(self, chip: System, gpu: System, demand_tok_s: float, max_years: float = 20.0) -> float:
        """The model lifetime below which GPUs serve ``demand_tok_s`` more cheaply than hard-coded cards
        (0 if the chip always wins, inf if it never does within ``max_years``)."""
        f = lambda L: float(self.lifetime_cents_per_mtok(chip, demand_tok_s, L, gpu)  # noqa: E731
                            - self.lifetime_cents_per_mtok(gpu, demand_tok_s, L))
        lo, hi = 1e-3, float(max_years)
        if f(hi) > 0:
            return math.inf
        if f(lo) <= 0:
            return 0.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return hi


def deployment_systems(spec, n_prompt: int, n_generated: int, *, chip="hc1", plan=None, gpus=("h200",),
                       gpu_precision="fp8", engine="vllm", econ="default") -> tuple[System, list[System], CardCost]:
    """The hard-coded card (its technology sized for ``spec``; aggregate tok/s and power of
    :class:`~hcemu.perf.silicon.SiliconModel`) and each GPU at ``gpu_precision`` (continuous batching at
    saturation, :meth:`~hcemu.perf.gpu.GpuModel.saturated_throughput`) on the ``n_prompt``/``n_generated``
    workload, plus the card's bottom-up cost."""
    from hcemu.perf.deploy import gpu_at_precision
    from hcemu.perf.gpu import GpuModel
    from hcemu.perf.silicon import SiliconModel
    from hcemu.perf.sizing import size_for_model
    from hcemu.perf.specs import default_plan, get_chip

    plan = default_plan(spec) if plan is None else plan
    c = size_for_model(get_chip(chip), spec, plan)
    si = SiliconModel(c).evaluate(spec, plan, n_prompt, n_generated)
    if si.users < 1:
        raise ValueError(f"one user's KV at {n_prompt + n_generated - 1} tokens exceeds {c.name}'s KV SRAM: "
                         "the card cannot serve this workload")
    cc = card_cost(si.area_mm2, econ)
    chip_sys = System(c.name, si.aggregate_tok_s, si.power_w, cc.installed_usd, True)
    out = []
    for g in gpus:
        gs = gpu_at_precision(g, gpu_precision)
        tok = GpuModel(gs, engine).saturated_throughput(spec, n_prompt, n_generated)["output_tok_s"]
        out.append(gpu_system(gs, tok, econ))
    return chip_sys, out, cc
