"""Pricing systems of dies: links, the system model, GPU tensor parallelism, the compare rows."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from hcemu.cli import main
from hcemu.formats import get_link_format, get_plan
from hcemu.model.spec import get_preset
from hcemu.perf.area import area_breakdown, chip_area_breakdown
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel
from hcemu.perf.links import LINK_PRESETS, TP_PRESETS, LinkSpec, get_link, get_tp, link_sources
from hcemu.perf.multigpu import TensorParallelGpuModel, cheapest_tensor_parallel, tensor_parallel_degree
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import HC1_PLAN
from hcemu.perf.system import (RETICLE_MM2, SystemModel, die_regions, link_events_from_shapes,
                               reference_die_rom_bits)
from hcemu.report import ROW_KEYS, compare_rows
from hcemu.rom import rom_bits_for_model
from hcemu.rom.partition import partition_model

L8 = get_preset("llama-3.1-8b")
L70 = get_preset("llama-3.1-70b")
SMOL = get_preset("smollm2-135m")
Q30 = get_preset("qwen3-30b-a3b")
Q235 = get_preset("qwen3-235b-a22b")


@pytest.mark.parametrize("name", sorted(LINK_PRESETS) + sorted(TP_PRESETS))
def test_every_link_field_has_a_source_that_is_not_calibrated(name):
    src = link_sources(name)
    spec = {**LINK_PRESETS, **TP_PRESETS}[name]
    assert set(src) == {f.name for f in dataclasses.fields(spec)} - {"name"}
    assert all(s.kind in ("derived", "assumed") and s.text.strip() for s in src.values())
    with pytest.raises(ValueError, match="unknown link preset"):
        link_sources("smoke-signals")


def test_link_arithmetic_and_validation():
    pcie = get_link("pcie5-x16")
    assert pcie.hop_s(63_000) == pytest.approx(400e-9 + 1e-6)
    assert pcie.serialization_s(63e9) == pytest.approx(1.0)
    assert pcie.power_w == pytest.approx(5.5e-12 * 8 * 63e9)
    assert get_link(pcie) is pcie
    with pytest.raises(ValueError, match="unknown link preset"):
        get_link("carrier-pigeon")
    with pytest.raises(ValueError, match="bandwidth_gb_s"):
        pcie.replace(bandwidth_gb_s=0)
    with pytest.raises(ValueError, match="latency_ns"):
        LinkSpec("x", "y", 10.0, -1.0, 1.0, 1.0)
    tp = get_tp("nvlink4-tp")
    assert tp.allreduce_s(1, 1e6) == 0.0
    assert tp.allreduce_s(4, 0) == pytest.approx(5e-6)
    assert tp.allreduce_s(4, 1e6) == pytest.approx(5e-6 + 1.5 * 1e6 / (450e9 * 0.77))
    with pytest.raises(ValueError, match="fraction"):
        tp.replace(bus_efficiency=1.5)


def test_one_die_system_is_the_one_chip_model():
    """A one-die system with the sized chip's SRAM is priced exactly as the single chip (timing, users,
    power, area, cost)."""
    for spec, plan in ((L8, HC1_PLAN), (SMOL, get_plan("int4")), (Q30, HC1_PLAN)):
        chip = size_for_model("hc1", spec, plan)
        sm = SystemModel("hc1", kv_sram_bytes_per_die=chip.kv_sram_bytes)
        r = sm.evaluate(spec, plan, 1, 1024, 1024)
        si = SiliconModel(chip).evaluate(spec, plan, 1024, 1024)
        assert r.n_dies == 1 and r.hops_s_per_token == 0 and r.link_power_w == 0
        assert r.per_user_tok_s == pytest.approx(si.per_user_tok_s, rel=1e-12)
        assert r.users == si.users and r.aggregate_tok_s == pytest.approx(si.aggregate_tok_s, rel=1e-12)
        assert r.dynamic_energy_j_per_token == pytest.approx(si.dynamic_energy_j_per_token, rel=1e-9)
        assert r.prefill_s == pytest.approx(si.prefill_s, rel=1e-12)
        assert r.power_w == pytest.approx(si.power_w, rel=1e-9)
        assert r.area_mm2 == pytest.approx(si.area_mm2, rel=1e-12)
        assert sm.cost(r).cents_per_mtok == pytest.approx(
            CostModel().chip(chip, si.aggregate_tok_s, si.power_w).cents_per_mtok, rel=1e-9)
    # the default die SRAM is the preset's (an HC1-class die's 288 MiB), whatever the model
    assert SystemModel().kv_sram_bytes_per_die == 288 * 2**20


@pytest.mark.parametrize("spec", [L70, Q30], ids=lambda s: s.name)
@pytest.mark.parametrize("n", [2, 3, 10])
def test_split_adds_hops_and_keeps_the_regions(n, spec):
    """Dense or mixture of experts (every expert with its layer): the regions' time and energy are the
    one chip's, the hops add to them."""
    from hcemu.perf.silicon import pipeline_users

    sm = SystemModel("hc1", "pcie5-x16", "bf16")
    one = sm.evaluate(spec, HC1_PLAN, 1, 1024, 1024)
    r = sm.evaluate(spec, HC1_PLAN, n, 1024, 1024)
    msg = get_link_format("bf16").message_bytes(spec.d_model)
    assert r.compute_s_per_token == pytest.approx(one.compute_s_per_token, rel=1e-12)
    assert r.hops_s_per_token == pytest.approx((n - 1) * get_link("pcie5-x16").hop_s(msg))
    assert r.latency_s_per_token == pytest.approx(r.compute_s_per_token + r.hops_s_per_token)
    assert r.link_bytes_per_token == (n - 1) * msg
    assert sum(d.compute_s_per_token for d in r.dies) == pytest.approx(r.compute_s_per_token)
    assert sum(d.dynamic_energy_j_per_token for d in r.dies) == pytest.approx(one.dynamic_energy_j_per_token)
    assert r.area_mm2 == pytest.approx(sum(d.area_mm2 for d in r.dies))
    assert r.power_w == pytest.approx(sum(d.power_w for d in r.dies))
    part = partition_model(spec, HC1_PLAN, n)
    assert [d.rom_bits for d in r.dies] == [b.total for b in part.die_rom_bits()]
    assert r.users == min(r.users_kv_limit, r.users_power_limit, pipeline_users(spec) + n - 1)
    assert r.aggregate_tok_s == pytest.approx(min(r.users * r.per_user_tok_s, 1 / r.slowest_stage_s))
    for d in r.dies:   # every die within the card's power limit
        assert d.power_w <= size_for_model("hc1", spec, HC1_PLAN).power_limit_w + 1e-9


def test_slow_links_limit_the_pipeline():
    slow = get_link("pcie5-x16").replace(name="slow", bandwidth_gb_s=2.0)
    r = SystemModel("hc1", slow).evaluate(L70, HC1_PLAN, 10, 1024, 1024)
    assert r.slowest_stage == "link serialization"
    assert r.slowest_stage_s == pytest.approx(4 * L70.d_model / 2e9)
    fast = SystemModel("hc1", "ucie-2.5d").evaluate(L70, HC1_PLAN, 10, 1024, 1024)
    assert fast.slowest_stage == "a die region" and fast.per_user_tok_s > r.per_user_tok_s


def test_auto_partition_and_die_budget():
    assert reference_die_rom_bits() == rom_bits_for_model(L8, HC1_PLAN).total
    sm = SystemModel()
    part = sm.partition(L70, HC1_PLAN)
    assert part.n_dies == 10 and max(b.total for b in part.die_rom_bits()) <= reference_die_rom_bits()
    r = sm.evaluate(L70, HC1_PLAN, None, 1024, 1024)
    assert r.n_dies == 10 and r.largest_die_mm2 < RETICLE_MM2
    assert sm.evaluate(L8, HC1_PLAN, None, 1024, 1024).n_dies == 1


def test_system_cost_counts_cards_masks_and_power():
    sm = SystemModel()
    r = sm.evaluate(L70, HC1_PLAN, 10, 1024, 1024)
    c = sm.cost(r)
    cm = CostModel()
    assert c.hardware_usd_per_hour == pytest.approx(10 * 9000 / cm.chip_life_hours())
    assert c.nre_usd_per_hour == pytest.approx((10 * 2e6 + 3e6) / (10_000 * 2 * 8760))
    assert c.energy_usd_per_hour == pytest.approx(cm.energy_usd_per_hour(r.power_w))
    assert c.cents_per_mtok == pytest.approx(float(cm.cents_per_mtok(c.hourly_usd, r.aggregate_tok_s)))
    starved = SystemModel(kv_sram_bytes_per_die=1).evaluate(L70, HC1_PLAN, 10, 1024, 1024)
    assert starved.users == 0 and math.isinf(starved.energy_j_per_token)
    with pytest.raises(ValueError, match="no user"):
        sm.cost(starved)
    with pytest.raises(ValueError, match="units"):
        sm.cost(r, units=0)
    with pytest.raises(ValueError, match="decode step"):
        sm.evaluate(L70, HC1_PLAN, 2, 16, 1)
    with pytest.raises(ValueError, match="partition is of"):
        sm.price(L8, HC1_PLAN, partition_model(L70, HC1_PLAN, 2), 1, 2, None, None, None)


def test_area_without_the_head():
    chip = size_for_model("hc1", L70, HC1_PLAN)
    with_head = area_breakdown(chip, rom_bits=10**9, sram_bytes=0, n_layers=8, head_lane_scale=1.2)
    without = area_breakdown(chip, rom_bits=10**9, sram_bytes=0, n_layers=8, head_lane_scale=0.0)
    vec = (chip.vec_flops_per_cycle + chip.vec_transcendentals_per_cycle) * chip.vec_lane_transistors
    assert with_head.logic_transistors - without.logic_transistors == pytest.approx(
        1.2 * chip.cim_macs_per_cycle_w4 * chip.cim_lane_transistors + vec)
    with pytest.raises(ValueError, match="head_lane_scale"):
        area_breakdown(chip, rom_bits=1, sram_bytes=0, n_layers=1, head_lane_scale=-1.0)
    assert chip_area_breakdown(chip, L70, HC1_PLAN).total_mm2 > RETICLE_MM2


def test_link_events_from_shapes():
    ev = link_events_from_shapes(L70, 3, "int8", 5)
    assert ev.n_hops == 3 and ev.messages == 15 and ev.bytes == 15 * 9216
    assert link_events_from_shapes(L70, 0, "fp32", 5).bytes == 0
    with pytest.raises(ValueError):
        link_events_from_shapes(L70, -1, "fp32", 5)


def test_tensor_parallel_gpus():
    one, tp1 = GpuModel("h100"), TensorParallelGpuModel("h100", 1)
    assert tp1.evaluate(L8, 1024, 1024).per_user_tok_s == pytest.approx(one.evaluate(L8, 1024, 1024).per_user_tok_s)
    tp4 = TensorParallelGpuModel("h100", 4)
    assert tp4.weight_bytes(L70) == pytest.approx(one.weight_bytes(L70) / 4)
    t = float(tp4.step_seconds(L70, 1, 1000))
    ar = 2 * 80 * get_tp("nvlink4-tp").allreduce_s(4, L70.d_model * 2)
    assert float(tp4.allreduce_seconds(L70, 1)) == pytest.approx(ar)
    assert t > ar
    r = tp4.evaluate(L70, 1024, 1024)
    assert r.gpu == "h100 x4" and r.power_w == 2800 and r.energy_j_per_token == pytest.approx(2800 / r.aggregate_tok_s)
    assert tensor_parallel_degree(L70, "h100", 2047) == 2 and tensor_parallel_degree(L70, "b200", 2047) == 1
    assert tensor_parallel_degree(L70, "h100", 2047, degrees=(1,)) is None
    tp, res, cents = cheapest_tensor_parallel(L70, "h100", 1024, 1024)
    assert tp in (2, 4, 8) and cents > 0
    assert cheapest_tensor_parallel(L8, "b200", 1024, 1024)[0] == 1
    with pytest.raises(ValueError, match="tp"):
        TensorParallelGpuModel("h100", 0)


def test_compare_rows_for_70b():
    rows = compare_rows("llama-3.1-70b", 1024, 1024, host=False)
    names = [r["system"] for r in rows]
    assert names[0] == "hc1/llama-3.1-70b" and names[1] == "hc1/llama-3.1-70b x10"
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    single, system = rows[0], rows[1]
    assert "reticle" in single["note"] and system["chips"] == 10
    assert system["area_mm2"] > single["area_mm2"] and system["cost_cents_per_mtok"] > 0
    gpus = rows[2:]
    b200, h200, h100 = gpus   # B200 holds 70B in bf16 (141 of 180 GB); H200 and H100 need several
    assert b200["chips"] == 1 and "tensor parallel over 2 GPUs would serve" in b200["note"]
    assert h200["chips"] >= 2 and h100["chips"] >= 2
    assert all("tensor parallel" in r["note"] for r in gpus)
    assert system["per_user_tok_s"] > 20 * max(r["per_user_tok_s"] for r in gpus)
    # 8B: one die is enough, no system row; GPUs one each
    rows8 = compare_rows("llama-3.1-8b", 1024, 1024, host=False)
    assert [r["chips"] for r in rows8] == [1, 1, 1, 1]
    assert compare_rows("llama-3.1-8b", 1024, 1024, host=False, chips=2)[1]["chips"] == 2


def test_compare_command_options(capsys):
    assert main(["compare", "--model", "mistral-large-2", "--no-host", "--json", "--chips", "12",
                 "--link", "ucie-2d", "--link-format", "int8"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[1]["chips"] == 12 and "ucie-2d" in rows[1]["note"] and "int8" in rows[1]["note"]
    assert main(["compare", "--model", "llama-3.1-70b", "--no-host", "--chips", "none"]) == 0
    assert " x10 " not in capsys.readouterr().out
    for bad, msg in ((["--chips", "many"], "--chips"), (["--link", "smoke"], "unknown link preset"),
                     (["--link-format", "fp8"], "unknown link format")):
        assert main(["compare", "--model", "llama-3.1-70b", "--no-host", *bad]) == 1
        assert msg in capsys.readouterr().err


def test_system_sweep_and_plot(tmp_path):
    from hcemu.perf.system import system_sweep

    sw = system_sweep(L70, HC1_PLAN, dies=(1, 4, 10, 40, 81), bandwidths_gb_s=(4.0, 63.0, 1024.0))
    assert list(sw["n_dies"]) == [1, 4, 10, 40]            # 81 > 80 layers is dropped
    assert sw["per_user_tok_s"].shape == (4, 3)
    # more hops cost per-user speed, faster links win it back; one die has no hop
    assert np.all(np.diff(sw["per_user_tok_s"], axis=0) < 0)
    assert np.all(np.diff(sw["per_user_tok_s"][1:], axis=1) > 0)
    assert np.ptp(sw["per_user_tok_s"][0]) == 0
    assert np.all(np.diff(sw["die_rom_gbit"]) < 0) and np.all(np.diff(sw["largest_die_mm2"]) < 0)
    assert np.isnan(sw["cost_cents_per_mtok"][0]).all()      # one 70B die serves no user (power)
    assert np.all(sw["cost_cents_per_mtok"][1:] > 0)
    with pytest.raises(ValueError):
        system_sweep(L70, HC1_PLAN, dies=(100,))
    pytest.importorskip("matplotlib")
    from hcemu.perf.plots import plot_system_sweep

    out = plot_system_sweep(tmp_path / "sweep.png", L70, sweep=sw)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000 and out.endswith("sweep.png")


def test_compare_plot_for_a_multi_die_model(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    stem = tmp_path / "c70.png"
    assert main(["compare", "--model", "llama-3.1-70b", "--no-host", "--plot", str(stem)]) == 0
    assert (tmp_path / "c70.png").exists() and (tmp_path / "c70-system.png").exists()
    assert not (tmp_path / "c70-cost.png").exists()


def test_die_region_bits_are_the_die_images():
    """Each die's region bits (from the whole model's regions) sum to its image's ROM bits, the head
    die's tied copy of the embedding included."""
    from hcemu.perf.system import die_region_bits

    for spec, plan, n in ((SMOL, get_plan("int4"), 3), (Q30, HC1_PLAN, 3), (SMOL, get_plan("int4"), 1)):
        part = partition_model(spec, plan, n)
        assert die_region_bits(spec, plan, part).sum(axis=1).tolist() == [b.total for b in part.die_rom_bits()]


@pytest.mark.parametrize("n", [3])
def test_moe_pipeline_keeps_every_expert_with_its_layer(n):
    """A mixture-of-experts model split by layers: each die holds its layers' expert regions (and only
    those) and waits for one pass of each layer's experts."""
    from hcemu.events import Events
    from hcemu.perf.analytic import balanced_expert_passes, decode_positions, events_from_shapes

    part = partition_model(Q30, HC1_PLAN, n)
    rows = die_regions(Q30, part)
    ev = Events.for_spec(Q30)
    assert rows.shape == (n, ev.counts.shape[0]) and np.all(rows.sum(axis=0) == 1)   # every region on one die
    names = ev.region_names()
    for d in part.dies:
        held = {names[i] for i in np.flatnonzero(rows[d.index])}
        want = ({str(i) for i in d.layers} | {f"expert.{i}.{e}" for i in d.layers for e in range(Q30.n_experts)}
                | ({"head"} if d.head else set()) | ({"embed"} if d.embedding else set()))
        assert held == want
    sm = SystemModel("hc1", "pcie5-x16", "bf16")
    one = sm.evaluate(Q30, HC1_PLAN, 1, 1024, 1024)
    r = sm.evaluate(Q30, HC1_PLAN, part, 1024, 1024)
    # each die's compute is its layers' passes plus one expert pass per layer (a token's k experts at once)
    chip = size_for_model("hc1", Q30, HC1_PLAN)
    si = SiliconModel(chip)
    dec = events_from_shapes(Q30, HC1_PLAN, positions=decode_positions(1024, 1024))
    t = si.timing(dec)
    hz = chip.clock_ghz * 1e9
    for d, fig in zip(part.dies, r.dies):
        lay = sum(t.total_cycles[i] for i in d.layers)
        exp = sum(t.total_cycles[ev.expert_index(i, e)] for i in d.layers for e in range(Q30.n_experts))
        extra = t.total_cycles[ev.head] * d.head + t.total_cycles[ev.embed] * d.embedding
        assert fig.compute_s_per_token == pytest.approx((lay + exp / Q30.n_experts_used + extra) / hz / 1023,
                                                        rel=1e-12)
    # the expert passes priced are the analytical generator's balanced routes
    assert np.array_equal(dec.experts()[0, :, 0], balanced_expert_passes(Q30, 1023))
    # the dies' areas hold their experts' lanes: the system's lanes equal the one chip's
    assert r.area_mm2 > one.area_mm2


def test_moe_events_must_match_the_model():
    sm = SystemModel()
    part = partition_model(Q30, HC1_PLAN, 2)
    from hcemu.events import Events, LinkEvents

    dense = Events(Q30.n_layers)
    dense.counts[:, 0] = 1
    with pytest.raises(ValueError, match="experts"):
        sm.price(Q30, HC1_PLAN, part, 1, 2, dense, dense, LinkEvents(1, np.ones((1, 2), np.int64)))


def test_compare_rows_for_the_100b_class_moe():
    """qwen3-235b-a22b (235 B parameters, 22 B active): many dies; GPUs tensor parallel over enough of them
    to hold every expert (not only the experts one token fires)."""
    assert Q235.n_params == pytest.approx(235.1e9, rel=1e-3) and Q235.n_active_params == pytest.approx(22.2e9, rel=1e-2)
    for g in ("b200", "h200", "h100"):
        deg = tensor_parallel_degree(Q235, g, 2047)
        assert TensorParallelGpuModel(g, deg).weight_bytes(Q235) == pytest.approx(
            GpuModel(g).weight_bytes(Q235) / deg)
        assert deg >= 4 and TensorParallelGpuModel(g, deg // 2).max_batch(Q235, 2047) == 0
    rows = compare_rows(Q235, 1024, 1024, host=False)
    single, system, *gpus = rows
    assert single["chips"] == 1 and "reticle" in single["note"]
    assert system["kind"] == "hard-coded system (modeled)" and system["chips"] > 20
    assert system["cost_cents_per_mtok"] > 0 and system["aggregate_tok_s"] > 0
    assert all(r["kind"] == "GPUs, tensor parallel (roofline)" and r["chips"] >= 4 for r in gpus)
    assert system["per_user_tok_s"] > 5 * max(r["per_user_tok_s"] for r in gpus)
    # the 30B mixture-of-experts preset on a chosen number of dies
    assert [r["chips"] for r in compare_rows(Q30, 1024, 1024, host=False, chips=3, gpus=())] == [1, 3]


def test_expert_parallel_traffic_follows_the_rule():
    """Every expert pass whose expert sits on an expert die (block b >= 1 of its layer's experts) costs
    one dispatch and one combine message of d_model values, on the link from its layer's pipeline die."""
    from hcemu.events import Events
    from hcemu.perf.system import expert_blocks, expert_dispatch_passes, expert_link_events

    part = partition_model(Q30, HC1_PLAN, 3)
    ev = Events.for_spec(Q30)
    rng = np.random.default_rng(1)
    fired = rng.integers(0, 5, size=(Q30.n_layers, Q30.n_experts))
    ev.experts()[:, :, 0] = fired
    msg = get_link_format("int8").message_bytes(Q30.d_model)
    for ep in (2, 4, 8):
        assert list(expert_blocks(Q30, ep)) == [e * ep // Q30.n_experts for e in range(Q30.n_experts)]
        links = expert_link_events(Q30, part, ev, ep, "int8")
        assert links.n_hops == 3 * (ep - 1)
        for d in part.dies:
            for b in range(1, ep):
                want = sum(2 * int(fired[i, e]) for i in d.layers for e in range(Q30.n_experts)
                           if e // (Q30.n_experts // ep) == b)
                assert links.counts[d.index * (ep - 1) + b - 1].tolist() == [want, want * msg]
        assert expert_dispatch_passes(Q30, ev, ep).sum() == fired.sum()
    assert expert_link_events(Q30, part, ev, 1, "int8").n_hops == 0
    with pytest.raises(ValueError, match="divide evenly"):
        expert_blocks(Q30, 3)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        expert_blocks(L70, 2)
    with pytest.raises(ValueError, match="expert_parallel"):
        SystemModel(expert_parallel=0)


def test_expert_parallel_system():
    """Expert parallelism over ep dies per pipeline die: the same regions (compute, energy), ep times the
    dies, the dispatch/combine round trips added to each token's latency."""
    from hcemu.perf.analytic import balanced_expert_passes

    part = partition_model(Q30, HC1_PLAN, 2)
    base = SystemModel("hc1", "ucie-2.5d").evaluate(Q30, HC1_PLAN, part, 1024, 1024)
    sm = SystemModel("hc1", "ucie-2.5d", expert_parallel=4)
    r = sm.evaluate(Q30, HC1_PLAN, part, 1024, 1024)
    assert r.n_dies == 8 and r.expert_parallel == 4 and [d.expert_block for d in r.dies] == [0, 0, 1, 2, 3, 1, 2, 3]
    assert r.compute_s_per_token == pytest.approx(base.compute_s_per_token, rel=1e-12)
    assert r.dynamic_energy_j_per_token == pytest.approx(base.dynamic_energy_j_per_token, rel=1e-9)
    assert sum(d.dynamic_energy_j_per_token for d in r.dies) == pytest.approx(r.dynamic_energy_j_per_token)
    assert sum(d.compute_s_per_token for d in r.dies) == pytest.approx(r.compute_s_per_token)
    assert sum(d.rom_bits for d in r.dies) == sum(d.rom_bits for d in base.dies)
    steps, link = 1023, get_link("ucie-2.5d")
    bal = balanced_expert_passes(Q30, steps)
    remote = [bal[32 * b:32 * (b + 1)].sum() / steps for b in (1, 2, 3)]    # the same in every layer
    ser = link.serialization_s(4 * Q30.d_model)
    assert r.expert_hops_s_per_token == pytest.approx(Q30.n_layers * 2 * (link.latency_ns * 1e-9 + max(remote) * ser))
    assert r.latency_s_per_token == pytest.approx(r.compute_s_per_token + r.hops_s_per_token + r.expert_hops_s_per_token)
    assert r.expert_link_bytes_per_token == round(Q30.n_layers * 2 * sum(remote) * 4 * Q30.d_model)
    assert r.per_user_tok_s < base.per_user_tok_s and r.link_power_w == pytest.approx((1 + 2 * 3) * link.power_w)
    assert r.area_mm2 == pytest.approx(sum(d.area_mm2 for d in r.dies)) and r.largest_die_mm2 < base.largest_die_mm2
    assert all(d.kv_sram_bytes == 0 for d in r.dies if d.expert_block)
    assert sm.cost(r).cents_per_mtok > 0


def test_compare_command_with_expert_parallelism(capsys):
    assert main(["compare", "--model", "qwen3-30b-a3b", "--no-host", "--json", "--chips", "2",
                 "--expert-parallel", "4", "--link", "ucie-2.5d"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    system = rows[1]
    assert system["chips"] == 8 and "over 4 dies (2 pipeline dies)" in system["note"]
    assert main(["compare", "--model", "llama-3.1-70b", "--no-host", "--expert-parallel", "2"]) == 1
    assert "mixture-of-experts" in capsys.readouterr().err
