"""Consistency, sensitivities and the scalar/vectorized agreement of the silicon, GPU and cost models.

The figures the presets were calibrated to (regression pins) and those they are validated against are
tested in ``tests/test_perf_figures.py``; this file holds what follows from the equations.
"""
import dataclasses
import math

import numpy as np
import pytest

from hcemu.formats import ActFormat, Plan, WeightFormat, get_plan
from hcemu.model.spec import get_preset
from hcemu.perf.analytic import decode_positions, events_from_shapes
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel
from hcemu.perf.area import chip_area_breakdown, chip_area_mm2
from hcemu.perf.silicon import SiliconModel, chip_arrays, decode_sweep
from hcemu.perf.specs import (GPU_PRESETS, HC1_PLAN, ChipSpec, CostSpec, GpuSpec, get_chip, get_cost, get_gpu,
                              sources)

LLAMA = get_preset("llama-3.1-8b")


@pytest.fixture(scope="module")
def hc1():
    return SiliconModel("hc1").evaluate(LLAMA, HC1_PLAN, 1024, 1024)


@pytest.fixture(scope="module")
def gpus():
    return {g: GpuModel(g).evaluate(LLAMA, 1024, 1024) for g in GPU_PRESETS}


# ---------------------------------------------------------------- consistency of the 1k/1k figures
def test_hc1_power_stays_within_its_limit(hc1):
    assert hc1.power_w <= get_chip("hc1").power_limit_w
    assert hc1.power_w == pytest.approx(hc1.dynamic_energy_j_per_token * hc1.aggregate_tok_s
                                        + get_chip("hc1").static_power_w)


def test_hc1_area_is_the_area_model(hc1):
    a = chip_area_breakdown("hc1", LLAMA, HC1_PLAN)
    assert chip_area_mm2(get_chip("hc1"), LLAMA, HC1_PLAN) == a.total_mm2 == hc1.area_mm2
    assert a.transistors == hc1.transistors
    # ~33 Gbit of ROM: 8.03 B weights at 4 bits + fp16 scale per 128, plus blank bank slots and norm vectors
    assert LLAMA.n_params * 4.125 < a.rom_bits < 1.03 * LLAMA.n_params * 4.125


def test_regression_pin_hc1_to_b200_ratio(gpus, hc1):
    """Regression pin: both ends are calibrated (16,960 and 353 tok/s/user, the brief's 48x)."""
    assert 40 <= hc1.per_user_tok_s / gpus["b200"].per_user_tok_s <= 56


def test_gpu_batch1_decode_is_below_the_bandwidth_roofline(gpus):
    # silicon-facts: BF16 rooflines 498 (B200), 299 (H200), 209 (H100) tok/s for 8B
    for g in GPU_PRESETS:
        spec = get_gpu(g)
        assert gpus[g].per_user_tok_s < spec.mem_bandwidth_tb_s * 1e12 / gpus[g].weight_bytes


def test_cost_parts_add_up(hc1):
    chip = CostModel().chip(get_chip("hc1"), hc1.aggregate_tok_s, hc1.power_w)
    assert chip.hourly_usd == pytest.approx(chip.hardware_usd_per_hour + chip.nre_usd_per_hour
                                            + chip.energy_usd_per_hour)


# ---------------------------------------------------------------- sensitivity
def test_doubling_the_clock_halves_latency(hc1):
    fast = SiliconModel(get_chip("hc1").replace(clock_ghz=2.0)).evaluate(LLAMA, HC1_PLAN, 1024, 1024)
    assert fast.latency_breakdown_s["cim"] == pytest.approx(hc1.latency_breakdown_s["cim"] / 2)
    assert fast.latency_s_per_token == pytest.approx(hc1.latency_s_per_token / 2)
    assert fast.prefill_s == pytest.approx(hc1.prefill_s / 2)


def test_more_lanes_shrink_only_the_compute_term(hc1):
    chip = get_chip("hc1")
    wide = SiliconModel(chip.replace(cim_macs_per_cycle_w4=2 * chip.cim_macs_per_cycle_w4,
                                     rom_read_bits_per_cycle=2 * chip.rom_read_bits_per_cycle)).evaluate(
        LLAMA, HC1_PLAN, 1024, 1024)
    assert wide.latency_breakdown_s["cim"] == pytest.approx(hc1.latency_breakdown_s["cim"] / 2)
    assert wide.latency_breakdown_s["attention"] == pytest.approx(hc1.latency_breakdown_s["attention"])
    # more lanes without a wider ROM: the ROM read width binds
    narrow = SiliconModel(chip.replace(cim_macs_per_cycle_w4=2 * chip.cim_macs_per_cycle_w4)).evaluate(
        LLAMA, HC1_PLAN, 1024, 1024)
    assert narrow.latency_breakdown_s["cim"] > wide.latency_breakdown_s["cim"] * 1.2


def test_longer_context_is_slower_through_kv_traffic():
    m = SiliconModel("hc1")
    res = [m.evaluate(LLAMA, HC1_PLAN, c, c) for c in (256, 1024, 4096)]
    speeds = [r.per_user_tok_s for r in res]
    assert speeds[0] > speeds[1] > speeds[2]
    assert res[0].latency_breakdown_s["cim"] == pytest.approx(res[2].latency_breakdown_s["cim"])
    assert res[2].latency_breakdown_s["attention"] > 10 * res[0].latency_breakdown_s["attention"]
    for g in GPU_PRESETS:
        gm = GpuModel(g)
        assert gm.evaluate(LLAMA, 256, 256).per_user_tok_s > gm.evaluate(LLAMA, 8192, 8192).per_user_tok_s


def test_int8_rom_roughly_doubles_rom_area():
    int8 = Plan("i8", WeightFormat(8, 128), WeightFormat(8, 128), WeightFormat(8, 128), ActFormat(), "int8")
    a4 = chip_area_breakdown("hc1", LLAMA, HC1_PLAN)
    a8 = chip_area_breakdown("hc1", LLAMA, int8)
    assert 1.9 <= a8.rom_mm2 / a4.rom_mm2 <= 2.1
    # and int8 weights run at half the lanes: slower
    assert SiliconModel("hc1").evaluate(LLAMA, int8, 1024, 1024).per_user_tok_s < 0.75 * 16960


def test_more_sram_serves_more_users(hc1):
    chip = get_chip("hc1").replace(power_limit_w=1000.0)
    small = SiliconModel(chip).evaluate(LLAMA, HC1_PLAN, 1024, 1024)
    big = SiliconModel(chip.replace(kv_sram_bytes=4 * chip.kv_sram_bytes)).evaluate(LLAMA, HC1_PLAN, 1024, 1024)
    assert small.users == small.users_kv_limit == hc1.users_kv_limit
    assert big.users_kv_limit >= 4 * small.users_kv_limit
    assert big.users > small.users and big.aggregate_tok_s > small.aggregate_tok_s
    assert big.power_w <= chip.power_limit_w


def test_power_limit_bounds_users():
    chip = get_chip("hc1").replace(kv_sram_bytes=2**34, power_limit_w=150.0)
    r = SiliconModel(chip).evaluate(LLAMA, HC1_PLAN, 1024, 1024)
    assert r.users == r.users_power_limit < r.users_kv_limit
    assert r.power_w <= 150.0


def test_gpu_serving_curve_trades_per_user_for_aggregate():
    curve = GpuModel("b200").serving_curve(LLAMA, 1024, 1024)
    assert (np.diff(curve["per_user_tok_s"]) < 0).all()
    assert (np.diff(curve["aggregate_tok_s"]) > 0).all()
    assert curve["batch"][-1] == 256  # vLLM's default cap, memory allows more at 2k
    assert GpuModel("h100").max_batch(LLAMA, 32768) < 16  # long contexts fill HBM


def test_cost_sensitivities(hc1, gpus):
    base = CostModel()
    busy = CostModel(get_cost().replace(utilization=0.9))
    g = get_gpu("b200")
    assert busy.gpu(g, 1e4).cents_per_mtok == pytest.approx(base.gpu(g, 1e4).cents_per_mtok * 0.6 / 0.9)
    chip = get_chip("hc1")
    be = base.break_even_units(chip, hc1.aggregate_tok_s, hc1.power_w,
                               base.gpu(g, gpus["b200"].aggregate_tok_s).cents_per_mtok)
    assert 1 < be < base.cost.units_per_model
    # at the break-even volume the chip costs exactly what the GPU does
    at = base.chip(chip, hc1.aggregate_tok_s, hc1.power_w, units=be).cents_per_mtok
    assert at == pytest.approx(base.gpu(g, gpus["b200"].aggregate_tok_s).cents_per_mtok)
    twice = CostModel(get_cost().replace(design_usd=get_cost().design_usd + get_cost().nre_usd))
    assert twice.break_even_units(chip, hc1.aggregate_tok_s, hc1.power_w, 3.79) == pytest.approx(
        2 * base.break_even_units(chip, hc1.aggregate_tok_s, hc1.power_w, 3.79))
    assert math.isinf(base.break_even_units(chip, hc1.aggregate_tok_s, hc1.power_w, 0.01))


# ---------------------------------------------------------------- events in, figures out
def test_pricing_counted_events_equals_evaluate(hc1):
    prefill = events_from_shapes(LLAMA, HC1_PLAN, 1024, 0)
    decode = events_from_shapes(LLAMA, HC1_PLAN, positions=decode_positions(1024, 1024))
    assert SiliconModel("hc1").price(LLAMA, HC1_PLAN, 1024, 1024, prefill, decode) == hc1


SWEEP_FIELDS = ("latency_s_per_token", "per_user_tok_s", "dynamic_energy_j_per_token", "slowest_region_s",
                "aggregate_tok_s", "power_w")


def _assert_sweep_equals_evaluate(chip, sw, index, n_prompt, n_generated, **fields):
    r = SiliconModel(chip.replace(**fields)).evaluate(LLAMA, HC1_PLAN, n_prompt, n_generated)
    for k in SWEEP_FIELDS:
        assert sw[k][index] == pytest.approx(getattr(r, k), rel=1e-12), (k, fields, n_prompt)
    for k in ("users", "users_kv_limit", "users_power_limit"):
        assert sw[k][index] == getattr(r, k), (k, fields, n_prompt)
    return r


def test_vectorized_path_equals_scalar_path():
    chip = get_chip("hc1")
    clocks = np.array([0.5, 1.0, 1.7])
    ctx = np.array([[128], [1024], [3000]])
    sw = decode_sweep(LLAMA, HC1_PLAN, chip_arrays(chip, clock_ghz=clocks), ctx, ctx + 7)
    for i, c in enumerate(ctx[:, 0]):
        for j, clk in enumerate(clocks):
            _assert_sweep_equals_evaluate(chip, sw, (i, j), int(c), int(c) + 7, clock_ghz=float(clk))


@pytest.mark.parametrize("head_balanced", [True, False])
def test_vectorized_path_equals_scalar_path_on_every_serving_branch(head_balanced):
    """One serving rule: power limit binding or not (below and at pipeline saturation), KV capacity binding
    or not (down to zero users), pipeline depth binding, the head or a layer the slowest region."""
    chip = get_chip("hc1").replace(head_balanced=head_balanced)
    kv = np.array([2**20, 288 * 2**20, 2**36])[:, None, None]
    limit = np.array([20.0, 150.0, 350.0, 1000.0, 3550.0, 1e6])[None, :, None]
    ctx = np.array([256, 1024])[None, None, :]
    sw = decode_sweep(LLAMA, HC1_PLAN, chip_arrays(chip, kv_sram_bytes=kv, power_limit_w=limit), ctx, ctx)
    seen = set()
    for i in range(kv.shape[0]):
        for j in range(limit.shape[1]):
            for k in range(ctx.shape[2]):
                r = _assert_sweep_equals_evaluate(chip, sw, (i, j, k), int(ctx[0, 0, k]), int(ctx[0, 0, k]),
                                                  kv_sram_bytes=int(kv[i, 0, 0]), power_limit_w=float(limit[0, j, 0]))
                n_regions = LLAMA.n_layers + 2
                saturated = r.users * r.per_user_tok_s >= 1 / r.slowest_region_s
                seen.add(("kv binds" if r.users == r.users_kv_limit < min(r.users_power_limit, n_regions) else
                          "power binds" if r.users == r.users_power_limit < min(r.users_kv_limit, n_regions) else
                          "depth binds" if r.users == n_regions else "other") + (", saturated" if saturated else ""))
                seen.add("no user" if r.users == 0 else "users")
    assert {"kv binds", "power binds", "depth binds, saturated", "no user", "users"} <= seen, seen
    # the case: power limit 3,550 W with 64 GiB of KV SRAM lets the saturated pipeline fill
    if head_balanced:
        assert sw["users"][2, 4, 1] == LLAMA.n_layers + 2
    # which region is slowest: a layer with balanced head lanes, the head with a layer's lanes
    r = SiliconModel(chip).evaluate(LLAMA, HC1_PLAN, 1024, 1024)
    head_pass = SiliconModel(chip).timing(events_from_shapes(
        LLAMA, HC1_PLAN, positions=decode_positions(1024, 1024))).cycles_per_pass[LLAMA.n_layers]
    is_head = head_pass / (chip.clock_ghz * 1e9) == pytest.approx(r.slowest_region_s)
    assert is_head != head_balanced


def test_serving_rule_without_dynamic_energy():
    """Zero energies per event: power never grows with users, so only KV and depth bound them (or the
    static power alone exceeds the limit and no user is served)."""
    energies = {f: 0.0 for f in ("rom_read_pj_per_bit", "mac_w4_pj", "mac_w8_pj", "attn_mac_pj",
                                 "sram_read_pj_per_byte", "sram_write_pj_per_byte", "act_quant_pj_per_elem",
                                 "vec_flop_pj", "vec_transcendental_pj", "wire_pj_per_bit_mm")}
    chip = get_chip("hc1").replace(kv_sram_bytes=2**36, **energies)
    limit = np.array([20.0, 30.0, 350.0])
    with np.errstate(all="raise"):
        sw = decode_sweep(LLAMA, HC1_PLAN, chip_arrays(chip, power_limit_w=limit), 1024, 1024)
    for j, lim in enumerate(limit):
        r = _assert_sweep_equals_evaluate(chip, sw, j, 1024, 1024, power_limit_w=float(lim))
        assert r.users == (0 if lim < chip.static_power_w else LLAMA.n_layers + 2)


def test_prefill_pipelines_tokens():
    m = SiliconModel("hc1")
    r = m.evaluate(LLAMA, HC1_PLAN, 1024, 16)
    assert r.prefill_s < 1024 * r.latency_s_per_token / 10  # pipelined, not token after token
    assert r.prefill_s > 1023 * r.slowest_region_s * 0.5


def test_smollm2_on_hc1_technology_is_priced():
    spec = get_preset("smollm2-135m")
    r = SiliconModel("hc1").evaluate(spec, get_plan("int4"), 64, 64)
    assert r.per_user_tok_s > 16960 and r.area_mm2 > 0 and r.users >= 1


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: get_chip("hc1").replace(clock_ghz=-1.0), "clock_ghz"),
    (lambda: get_chip("hc1").replace(cim_macs_per_cycle_w4=0), "cim_macs_per_cycle_w4"),
    (lambda: get_chip("hc1").replace(rom_read_pj_per_bit=float("nan")), "rom_read_pj_per_bit"),
    (lambda: get_gpu("b200").replace(bandwidth_efficiency=1.2), "bandwidth_efficiency"),
    (lambda: get_gpu("h100").replace(weight_dtype="fp4"), "fp4"),
    (lambda: get_gpu("b200").replace(weight_dtype="int3"), "weight_dtype"),
    (lambda: get_cost().replace(utilization=0.0), "utilization"),
    (lambda: get_cost().replace(pue=0.9), "pue"),
    (lambda: get_chip("tpu9"), "unknown chip preset 'tpu9'; known: hc1"),
    (lambda: get_gpu("a100"), "known: b200, h100, h200"),
    (lambda: get_cost("cheap"), "unknown cost preset"),
    (lambda: sources("nope"), "unknown preset"),
    (lambda: chip_arrays("hc1", clock_ghz=[1.0, -2.0]), "clock_ghz"),
    (lambda: chip_arrays("hc1", warp_drive=[1.0]), "warp_drive"),
    (lambda: SiliconModel("hc1").evaluate(LLAMA, HC1_PLAN, 16, 1), "decode step"),
    (lambda: GpuModel("h100").evaluate(get_preset("llama-3.1-70b"), 1024, 1024), "does not fit"),
    (lambda: CostModel().cents_per_mtok(1.0, 0.0), "throughput"),
    (lambda: CostModel().nre_usd_per_hour(0), "units"),
])
def test_bad_specs_and_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_chip("hc1").clock_ghz = 2.0
    assert isinstance(get_chip("HC1"), ChipSpec) and isinstance(get_gpu("B200"), GpuSpec)
    assert isinstance(get_cost(), CostSpec)
