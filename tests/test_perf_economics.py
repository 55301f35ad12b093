"""Lifetime economics of hard-wiring vs GPUs: closed forms, crossings and sensitivities."""
import dataclasses
import json
import math

import numpy as np
import pytest

from hcemu.cli import main
from hcemu.model.spec import get_preset
from hcemu.perf.economics import (ECONOMICS_PRESETS, Economics, EconomicsSpec, System, card_cost,
                                  deployment_systems, dies_per_wafer, economics_sources, get_economics,
                                  murphy_yield)
from hcemu.perf.specs import get_cost

LLAMA = get_preset("llama-3.1-8b")


@pytest.fixture(scope="module")
def systems():
    chip, gpus, _ = deployment_systems(LLAMA, 1024, 1024, gpus=("h200", "b200"), gpu_precision="fp8")
    return chip, gpus


def test_every_parameter_has_a_source():
    for name, spec in ECONOMICS_PRESETS.items():
        src = economics_sources(name)
        assert {f.name for f in dataclasses.fields(spec)} - {"name"} <= set(src)
    with pytest.raises(ValueError, match="unknown economics preset"):
        get_economics("cheap")
    with pytest.raises(ValueError, match="gross_margin"):
        get_economics().replace(vendor_gross_margin=1.0)
    with pytest.raises(ValueError, match="PUE"):
        get_economics().replace(liquid_pue=0.9)


def test_silicon_cost_closed_forms():
    assert dies_per_wafer(100.0) == pytest.approx(math.pi * 150 ** 2 / 100 - math.pi * 300 / math.sqrt(200))
    assert murphy_yield(500.0, 0.0) == 1.0
    assert murphy_yield(800.0, 0.1) < murphy_yield(400.0, 0.1) < 1
    e = get_economics()
    c = card_cost(779.0)
    assert c.die_usd == pytest.approx(e.wafer_usd / (c.dies_per_wafer * c.yield_fraction))
    assert c.card_price_usd == pytest.approx((c.die_usd + e.package_test_usd + e.card_board_usd) / (1 - e.vendor_gross_margin))
    assert c.installed_usd == pytest.approx(c.card_price_usd + e.host_server_usd / e.cards_per_server)
    with pytest.raises(ValueError):
        card_cost(80000.0)


def test_break_even_demand_equalizes_lifetime_cost(systems):
    chip, gpus = systems
    ec = Economics()
    for g in gpus:
        for L in (0.75, 1.0, 2.0, 4.0):
            d = float(ec.break_even_demand(chip, g, L))
            assert math.isfinite(d)
            assert float(ec.lifetime_cents_per_mtok(chip, d, L, g)) == pytest.approx(
                float(ec.lifetime_cents_per_mtok(g, d, L)), rel=1e-9)
            # above it the chip is cheaper, below it the GPU
            assert ec.lifetime_cents_per_mtok(chip, 2 * d, L, g) < ec.lifetime_cents_per_mtok(g, 2 * d, L)
            assert ec.lifetime_cents_per_mtok(chip, d / 2, L, g) > ec.lifetime_cents_per_mtok(g, d / 2, L)
        be = ec.break_even_cards(chip, g, [0.5, 1.0, 2.0, 3.0])
        assert np.all(np.diff(be) < 0)  # a longer-lived model needs fewer cards to repay the NRE
        # a model replaced before its chip arrives never breaks even
        assert math.isinf(float(ec.break_even_demand(chip, g, ec.econ.model_to_silicon_years)))


def test_lifetime_below_which_gpus_win(systems):
    chip, gpus = systems
    ec = Economics()
    g = gpus[0]
    d = 1e7
    L = ec.gpu_wins_below_years(chip, g, d)
    assert 0 < L < 20
    assert float(ec.lifetime_cents_per_mtok(chip, d, L, g)) == pytest.approx(float(ec.lifetime_cents_per_mtok(g, d, L)),
                                                                              rel=1e-6)
    assert math.isinf(ec.gpu_wins_below_years(chip, g, 1e3))  # 1,000 tok/s never repays $20 M of NRE
    assert ec.gpu_wins_below_years(chip, g, 1e7) < ec.gpu_wins_below_years(chip, g, 3e6)


def test_nre_and_hardware_life_sensitivities(systems):
    chip, gpus = systems
    base = Economics()
    c = get_cost()
    double = Economics(cost=c.replace(design_usd=c.design_usd + base.nre_usd()))
    assert double.nre_usd() == pytest.approx(2 * base.nre_usd())
    assert double.break_even_demand(chip, gpus[0], 1.0) == pytest.approx(2 * base.break_even_demand(chip, gpus[0], 1.0))
    longer = Economics(cost=c.replace(hardware_lifetime_years=6.0))
    # a GPU depreciated over more years costs less per year of this model; a scrapped card does not
    assert longer.cost_per_demand(gpus[0], 1.0) < base.cost_per_demand(gpus[0], 1.0)
    assert longer.cost_per_demand(chip, 1.0) == pytest.approx(base.cost_per_demand(chip, 1.0))


def test_liquid_cooling_above_the_threshold():
    ec = Economics()
    air = System("a", 1e4, 700.0, 1e4, False)
    liquid = System("l", 1e4, 1000.0, 1e4, False)
    assert ec._pue_and_cooling(700.0) == (ec.econ.air_pue, 0.0)
    pue, capex = ec._pue_and_cooling(1000.0)
    assert pue == ec.econ.liquid_pue and capex == pytest.approx(ec.econ.liquid_cooling_usd_per_kw)
    assert ec.cost_per_demand(liquid, 1.0) > ec.cost_per_demand(air, 1.0)
    with pytest.raises(ValueError):
        ec.cost_per_demand(air, 0.0)
    with pytest.raises(ValueError):
        ec.lifetime_cents_per_mtok(air, 0.0, 1.0)


def test_economics_command(capsys, tmp_path):
    assert main(["economics", "--json", "--gpu", "h100", "--demand", "5e6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["system"] for r in out["rows"]] == ["hc1", "h100-fp8"]
    assert out["nre_usd"] == pytest.approx(Economics().nre_usd())
    assert len(out["break_even"]["h100-fp8"]["break_even_cards"]) == 7
    assert main(["economics", "--gpu", "b200", "--gpu-precision", "nvfp4"]) == 0
    assert "GPU wins below" in capsys.readouterr().out
    assert main(["economics", "--gpu", "h100", "--gpu-precision", "nvfp4"]) == 1
    pytest.importorskip("matplotlib")
    assert main(["economics", "--plot", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").stat().st_size > 10000
    assert isinstance(get_economics(), EconomicsSpec)
