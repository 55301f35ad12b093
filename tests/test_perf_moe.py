"""Pricing mixture-of-experts chips: area by total parameters, energy and time by the active ones, the
slowest-region rule seeing expert imbalance, the GPU roofline reading the experts a batch fires, and the
Qwen3-30B-A3B preset beside the GPUs."""
from dataclasses import replace

import numpy as np
import pytest

from hcemu.events import FIELD_INDEX
from hcemu.formats import get_plan
from hcemu.model.spec import get_preset
from hcemu.perf.analytic import balanced_expert_passes, decode_positions, events_from_shapes
from hcemu.perf.area import chip_area_breakdown, expert_lane_scale
from hcemu.perf.gpu import GpuModel, GpuWork
from hcemu.perf.silicon import SiliconModel, decode_sweep
from hcemu.perf.specs import default_plan, get_chip, get_gpu
from hcemu.perf.sizing import size_for_model

QWEN = get_preset("qwen3-30b-a3b")
PLAN = default_plan(QWEN)


def test_preset_parameters():
    """Qwen3-30B-A3B: 30.5 B parameters, 3.3 B activated (its model card)."""
    assert PLAN.name == "hc1-int4"
    assert QWEN.n_params / 1e9 == pytest.approx(30.5, abs=0.1)
    assert QWEN.n_active_params / 1e9 == pytest.approx(3.3, abs=0.1)
    assert QWEN.expert_params == 3 * 2048 * 768
    assert expert_lane_scale(QWEN) == pytest.approx(QWEN.expert_params / QWEN.layer_own_params)


def test_balanced_routing_of_the_analytical_generator():
    passes = balanced_expert_passes(QWEN, 37)
    assert passes.sum() == 37 * 8 and passes.max() - passes.min() <= 1
    ev = events_from_shapes(QWEN, PLAN, positions=np.arange(100, 137))
    fired = ev.experts()[:, :, FIELD_INDEX["tokens"]]
    assert (fired == passes).all()
    assert ev.counts[0, FIELD_INDEX["tokens"]] == 37


def test_vectorized_path_equals_scalar_path():
    chip = size_for_model("hc1", QWEN, PLAN)
    for ctx, gen in ((128, 17), (1024, 33)):   # (gen - 1) * k a multiple of E: both spread evenly
        sw = decode_sweep(QWEN, PLAN, chip, ctx, gen)
        r = SiliconModel(chip).evaluate(QWEN, PLAN, ctx, gen)
        for key in ("per_user_tok_s", "dynamic_energy_j_per_token", "aggregate_tok_s", "power_w"):
            assert float(sw[key]) == pytest.approx(getattr(r, key), rel=1e-9), key
        assert float(sw["users"]) == r.users


def test_area_by_total_parameters_energy_and_time_by_active_ones():
    """Doubling the experts (k fixed) doubles the expert ROM and lanes; a token's work is unchanged."""
    half = replace(QWEN, name="qwen3-half", n_experts=64)
    chip = size_for_model("hc1", QWEN, PLAN)
    big, small = (SiliconModel(chip).evaluate(s, PLAN, 1024, 33) for s in (QWEN, half))
    a_big, a_small = (chip_area_breakdown(chip, s, PLAN) for s in (QWEN, half))
    assert a_big.rom_bits / a_small.rom_bits == pytest.approx(QWEN.n_params / half.n_params, rel=0.03)
    assert a_big.total_mm2 > 1.7 * a_small.total_mm2
    assert big.per_user_tok_s == pytest.approx(small.per_user_tok_s, rel=0.01)
    assert big.dynamic_energy_j_per_token == pytest.approx(small.dynamic_energy_j_per_token, rel=0.01)
    # and a dense model of the same active width costs about as much energy per token
    assert QWEN.n_active_params < 0.12 * QWEN.n_params


@pytest.mark.parametrize("share", [1.0, 1 / 16])
def test_expert_imbalance_in_the_slowest_region(share):
    """Every token routed to the same k experts: one user's latency is unchanged (k expert passes per
    token either way), but those experts' regions carry every token: E / k times their balanced load.
    With weight-proportional lanes (share 1) that load is one layer pass and bounds nothing; with
    experts sharing lanes (share k / E) the busy experts bound the pipeline."""
    chip = size_for_model("hc1", QWEN, PLAN).replace(kv_sram_bytes=2 ** 40, expert_lane_share=share)
    pos = decode_positions(256, 257)
    balanced = events_from_shapes(QWEN, PLAN, positions=pos)
    skewed = balanced.copy()
    rows = skewed.experts()
    per_pass = rows[0, 0] // rows[0, 0, FIELD_INDEX["tokens"]]
    rows[:] = 0
    rows[:, :8] = per_pass * len(pos)
    prefill = events_from_shapes(QWEN, PLAN, 256, 0)
    m = SiliconModel(chip)
    a = m.price(QWEN, PLAN, 256, 257, prefill, balanced)
    b = m.price(QWEN, PLAN, 256, 257, prefill, skewed)
    assert b.latency_s_per_token == pytest.approx(a.latency_s_per_token, rel=1e-9)
    assert b.dynamic_energy_j_per_token == pytest.approx(a.dynamic_energy_j_per_token, rel=1e-9)
    t_a, t_b = m.timing(balanced), m.timing(skewed)
    L = QWEN.n_layers
    load_a, load_b = (t.total_cycles[L + 2:].max() for t in (t_a, t_b))
    assert load_b == pytest.approx(16 * load_a, rel=1e-9)                 # E / k times the balanced load
    layer = t_a.total_cycles[:L].max()
    if share == 1.0:
        assert 0.8 * layer < load_b <= layer and b.aggregate_tok_s == pytest.approx(a.aggregate_tok_s, rel=1e-9)
    else:
        assert b.slowest_region_s == pytest.approx(load_b / 1e9 / len(pos), rel=1e-9)
        assert b.aggregate_tok_s == pytest.approx(1 / b.slowest_region_s, rel=1e-9)   # the busy experts bound it
        assert b.aggregate_tok_s < 0.7 * a.aggregate_tok_s


def test_gpu_reads_the_experts_a_batch_fires():
    gpu = get_gpu("h200")
    w = GpuWork.of(QWEN, gpu)
    emb = QWEN.vocab_size * QWEN.d_model     # read a row per user, not held in the step's weight bytes
    assert w.weight_bytes == pytest.approx((QWEN.n_active_params - emb) * 2, rel=1e-12)
    assert w.resident_bytes == pytest.approx((QWEN.n_params - emb) * 2, rel=1e-12)
    assert float(w.batch_weight_bytes(1)) == w.weight_bytes
    assert float(w.batch_weight_bytes(10_000)) == pytest.approx(w.resident_bytes, rel=1e-6)
    m = GpuModel(gpu)
    t1, t64 = (float(m.step_seconds(QWEN, b, 1024)) for b in (1, 64))
    assert t64 > 2 * t1   # 64 users fire most experts: the step reads far more weights


def test_compare_prices_the_moe_preset(capsys):
    from hcemu.cli import main

    assert main(["compare", "--model", "qwen3-30b-a3b", "--no-host", "--json"]) == 0
    import json

    rows = {r["system"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    chip = rows["hc1/qwen3-30b-a3b"]
    assert chip["kind"] == "hard-coded chip (modeled)" and chip["per_user_tok_s"] > 1000
    assert chip["area_mm2"] > 3000   # 30.5 B parameters in ROM
    assert rows["b200"]["per_user_tok_s"] > 0


def test_floorplan_has_one_region_per_expert(tmp_path):
    from arch_models import ARCH_SPECS, arch_weights, write_arch_gguf
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.perf.area import floorplan
    from hcemu.rom.image import RomImage, compile_model, rom_bits_for_model

    spec = replace(ARCH_SPECS["qwen2moe"], vocab_size=512)
    write_arch_gguf(tmp_path / "m.gguf", spec, arch_weights(spec))
    compile_model(GGUFSource(tmp_path / "m.gguf"), "int8", tmp_path / "m.hcrom", progress=False)
    img = RomImage.load(tmp_path / "m.hcrom")
    amap = img.address_map
    assert amap.n_regions == spec.n_layers + 2 + spec.n_layers * spec.n_experts
    for i in range(spec.n_layers):
        for e in range(spec.n_experts):
            regions = {amap.by_name[n].region for n, *_ in spec.expert_matrices(i, e)}
            assert regions == {spec.n_layers + 2 + i * spec.n_experts + e}
    assert img.rom_bits == rom_bits_for_model(spec, get_plan("int8"))
    fp = floorplan(img, "hc1")
    assert "16 experts x" in fp.table() and "one region per expert" in fp.table()
    assert fp.area.total_mm2 == pytest.approx(chip_area_breakdown(get_chip("hc1"), spec, get_plan("int8")).total_mm2)


def test_events_with_expert_regions_round_trip():
    from hcemu.events import Events

    ev = Events(2, n_experts=3)
    assert ev.counts.shape[0] == 2 + 2 + 6 and ev.expert_index(1, 2) == 9
    ev.add(("expert", 1, 2), tokens=5, macs_w8=7)
    ev.add("head", tokens=1)
    back = Events.from_dict(ev.to_dict(per_region=True))
    assert back == ev and back.n_experts == 3 and back.region(("expert", 1, 2))["tokens"] == 5
    assert ev.experts()[1, 2, FIELD_INDEX["macs_w8"]] == 7 and ev.macs_w8 == 7
    with pytest.raises(IndexError, match="expert region"):
        ev.add(("expert", 2, 0), tokens=1)
    with pytest.raises(ValueError, match="expert counts"):
        ev + Events(2)
    assert "n_experts=3" in repr(ev)


@pytest.mark.parametrize("change, match", [
    (dict(n_experts_used=9, n_experts=8), "n_experts_used"),
    (dict(n_experts=0, n_experts_used=2), "need n_experts"),
    (dict(rope_style="gptj"), "rope_style"),
    (dict(qk_norm="both"), "qk_norm"),
    (dict(swa_layers=(50,), sliding_window=8), "swa_layers"),
    (dict(swa_layers=(0,)), "sliding_window is 0"),
    (dict(attn_softcap=-1.0), "attn_softcap"),
    (dict(embed_scale=0.0), "embed_scale"),
    (dict(shared_expert_gate=True, n_experts=4, n_experts_used=2), "shared expert"),
])
def test_spec_rejects_nonsense_block_kinds(change, match):
    from hcemu.model.spec import ModelSpec

    base = get_preset("smollm2-135m").to_dict()
    with pytest.raises(ValueError, match=match):
        ModelSpec(**{**base, **change})
