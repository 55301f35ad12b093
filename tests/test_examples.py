"""The examples under examples/ run, and what they compute is checked against the chip and the models."""
import csv
import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from model_helpers import TINY_SPEC

from hcemu.chip import Chip
from hcemu.perf.silicon import SiliconModel

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def image(tiny_image):
    return tiny_image


def test_simpy_serving(image):
    pytest.importorskip("simpy")
    ex = load("simpy_serving")
    reqs = ex.poisson_requests(TINY_SPEC.vocab_size, 7, rate_per_s=2e5, seed=1)
    reqs, end = ex.simulate(image, reqs, n_chips=2, chunk=8)
    assert {r.chip for r in reqs} == {0, 1}
    for r in reqs:
        # the served tokens are the chip's greedy decode of the prompt
        gen = Chip(image, kv_capacity_tokens=64).generate(r.prompt, r.n_generate)
        assert r.ids == gen.ids
        assert r.arrival_s < r.first_token_s <= r.finish_s <= end
    # a request alone on an idle chip: its first token comes after the modeled prefill time exactly
    alone = ex.Request(0.5, reqs[0].prompt[:8], 1)
    ex.simulate(image, [alone], n_chips=1, chunk=8)
    sm = SiliconModel("hc1")
    ev = Chip(image, kv_capacity_tokens=64).prefill(alone.prompt).events
    assert alone.first_token_s - 0.5 == pytest.approx(sm.prefill_seconds(ev, len(alone.prompt)), rel=1e-9)


# the columns Vidur's sklearn execution-time predictor reads from its compute profiles (vidur 0.0.26,
# vidur/execution_time_predictor/sklearn_execution_time_predictor.py)
VIDUR_MLP = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp", "vocab_size",
             "num_tensor_parallel_workers", "num_tokens"] + [
    f"time_stats.{op}.median" for op in ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj",
                                         "mlp_act", "input_layernorm", "post_attention_layernorm", "attn_rope",
                                         "add")]
VIDUR_ATTENTION = ["n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers", "batch_size",
                   "prefill_chunk_size", "kv_cache_size", "time_stats.attn_prefill.median",
                   "time_stats.attn_decode.median", "time_stats.attn_kv_cache_save.median"]


def test_vidur_profiles(image, tmp_path):
    from hcemu.step import ChipStepper

    ex = load("vidur_profiles")
    mlp_path, att_path = ex.export(image, tmp_path / "profiles", max_tokens=256)
    with open(mlp_path) as f:
        mlp = list(csv.DictReader(f))
    with open(att_path) as f:
        att = list(csv.DictReader(f))
    assert set(VIDUR_MLP) <= set(mlp[0]) and set(VIDUR_ATTENTION) <= set(att[0])
    assert {int(r["n_head"]) for r in mlp} == {TINY_SPEC.n_heads}
    assert {int(r["num_tokens"]) for r in mlp} == {1, 2, 4, 8, 16, 32, 64, 128, 256}
    # one decode token after 16 cached: the ops of one layer add up to the step API's mean layer pass
    row = next(r for r in mlp if r["num_tokens"] == "1")
    dec = next(r for r in att if r["batch_size"] == "1" and r["prefill_chunk_size"] == "0"
               and r["kv_cache_size"] == "16")
    total_ms = (sum(float(row[c]) for c in VIDUR_MLP if c.startswith("time_stats"))
                + float(dec["time_stats.attn_decode.median"]) + float(dec["time_stats.attn_kv_cache_save.median"]))
    st = ChipStepper(image, kv_capacity_tokens=48)
    u = st.open_user()
    st.step([(u, np.arange(16))])
    it = st.step([(u, [3])]).items[0]
    layer_cycles = np.mean([s.busy_cycles for s in it.timeline if s.region.isdigit()])
    assert total_ms == pytest.approx(layer_cycles / (st.clock_ghz * 1e9) * 1e3, rel=1e-9)
    # a prefill chunk's attention (with its softmax) is what the step API times for that chunk
    pre = next(r for r in att if r["prefill_chunk_size"] == "32" and r["kv_cache_size"] == "16")
    v = st.open_user()
    st.step([(v, np.arange(16))])
    it = st.step([(v, np.arange(32) % TINY_SPEC.vocab_size)]).items[0]
    cyc = np.mean([s.attention_cycles + s.vector_cycles for s in it.timeline if s.region.isdigit()])
    cyc -= 32 * float(row["time_stats.mlp_act.median"]) * (st.clock_ghz * 1e9) / 1e3
    assert float(pre["time_stats.attn_prefill.median"]) == pytest.approx(cyc / (st.clock_ghz * 1e9) * 1e3, rel=1e-9)
