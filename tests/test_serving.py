"""The serving simulator against closed forms: one request alone (TTFT and TPOT are the modeled
latencies), a single-slot card under Poisson load (Pollaczek-Khinchine), a saturated GPU (the
closed-form steady state), conservation at low load; traces, fleets, sweeps and the command."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hcemu.cli import main
from hcemu.model.spec import get_preset
from hcemu.perf.analytic import decode_positions, events_from_shapes
from hcemu.perf.deploy import get_engine, gpu_at_precision
from hcemu.perf.gpu import GpuModel
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.specs import HC1_PLAN
from hcemu.serving import Slo, Workload, goodput, parse_fleet, read_trace, simulate, summarize, sweep, synthetic
from hcemu.serving.fleet import chip_prices
from hcemu.serving.metrics import latencies
from hcemu.serving.sim import GpuCard

LLAMA = get_preset("llama-3.1-8b")


def one(p, g, t=0.0):
    return Workload(np.array([t]), np.array([p]), np.array([g]))


@pytest.mark.parametrize("p,g", [(1, 2), (300, 40), (1024, 1024)])
def test_one_request_on_a_chip_has_the_modeled_latencies(p, g):
    o = simulate(parse_fleet("hc1:1"), one(p, g), LLAMA)
    lat = latencies(o)
    m = SiliconModel("hc1")
    assert lat["ttft_s"][0] == pytest.approx(m.prefill_seconds(events_from_shapes(LLAMA, HC1_PLAN, p, 0), p), rel=1e-9)
    assert lat["tpot_s"][0] == pytest.approx(m.evaluate(LLAMA, HC1_PLAN, p, g).latency_s_per_token, rel=1e-9)


@pytest.mark.parametrize("fleet", ["h200:1", "h100-fp8:1", "b200-nvfp4:1"])
def test_one_request_on_a_gpu_has_the_modeled_latencies(fleet):
    f = parse_fleet(fleet)
    p, g = 700, 300
    o = simulate(f, one(p, g), LLAMA)
    lat = latencies(o)
    m = GpuModel(gpu_at_precision(f.name, f.precision), get_engine("vllm"))
    # the prompt fits one chunk: one step of p prefill tokens; then batch-1 decode steps
    assert lat["ttft_s"][0] == pytest.approx(float(m.mixed_step_seconds(LLAMA, 0, 0, p, p * (p + 1) / 2, p)))
    per_token = float(m.step_seconds(LLAMA, 1, decode_positions(p, g) + 1.0).mean())
    assert lat["tpot_s"][0] == pytest.approx(per_token, rel=1e-9)
    assert lat["tpot_s"][0] == pytest.approx(m.evaluate(LLAMA, p, g).latency_s_per_token, rel=1e-9)


def test_one_request_on_a_gpu_prices_a_mixture_of_experts_step_by_the_experts_it_fires():
    """A prompt's prefill step reads every expert its tokens fire (``weights_s``), not the batch-1 weights."""
    moe = get_preset("qwen3-30b-a3b")
    f = parse_fleet("h200:1")
    p, g = 700, 50
    lat = latencies(simulate(f, one(p, g), moe))
    m = GpuModel(gpu_at_precision(f.name, f.precision), get_engine("vllm"))
    c = m.step_coefficients(moe)
    assert float(c.weights_s(p)) > 5 * c.mem_s   # 700 tokens fire nearly all 128 experts of a layer
    assert lat["ttft_s"][0] == pytest.approx(float(m.mixed_step_seconds(moe, 0, 0, p, p * (p + 1) / 2, p)))
    assert lat["tpot_s"][0] == pytest.approx(m.evaluate(moe, p, g).latency_s_per_token, rel=1e-9)


def test_bulk_decode_runs_equal_step_by_step_sums():
    m = GpuModel(gpu_at_precision("h200", "fp8"), "vllm")
    P, G = [100] * 3, [50] * 3
    card = GpuCard(0, m, LLAMA, get_engine("vllm"), 10**6, P, G, [0], [0.0] * 3, [0.0] * 3)
    for n_d, keys in ((1, 101), (37, 37 * 900), (250, 250 * 20000)):
        card.n_d, card.sum_keys = n_d, keys
        for n in (1, 2, 7, 100):
            assert card._bulk_seconds(n) == pytest.approx(sum(card._decode_step(j) for j in range(n)), rel=1e-12)


def test_single_slot_card_is_an_mg1_queue():
    """Prompts of 2,300 tokens: one user's KV fills more than half of hc1's SRAM, so each card serves one
    request at a time, FIFO: the mean wait is Pollaczek-Khinchine's lambda E[S^2] / (2 (1 - rho))."""
    rng = np.random.default_rng(7)
    n, rate = 20000, 12.0
    g = np.minimum(rng.geometric(1 / 400, n), 2000)
    w = Workload(np.cumsum(rng.exponential(1 / rate, n)), np.full(n, 2300), g)
    f = parse_fleet("hc1:1")
    prices, lim, _ = chip_prices(f, LLAMA, w.prompt_tokens, w.output_tokens)
    assert (2 * prices["kv_bytes"] > lim.kv_bytes).all() and (prices["kv_bytes"] <= lim.kv_bytes).all()
    s = prices["inject_s"] + prices["fill_s"] + (g - 1) * prices["decode_s_per_token"]
    rho = rate * s.mean()
    assert 0.2 < rho < 0.6
    o = simulate(f, w, LLAMA)
    wait = latencies(o)["ttft_s"] - prices["inject_s"] - prices["fill_s"]
    pk = rate * (s ** 2).mean() / (2 * (1 - rho))
    assert wait.mean() == pytest.approx(pk, rel=0.1)
    assert np.allclose(o.finish_s - o.first_token_s, (g - 1) * prices["decode_s_per_token"])


def test_low_load_conserves_requests_and_meets_slos():
    w = synthetic(5.0, duration_s=200, prompt_mean=512, output_mean=128, length_dist="exponential", seed=3)
    for fleet in ("hc1:2", "h100:2"):
        o = simulate(parse_fleet(fleet), w, LLAMA)
        r = summarize(o, LLAMA)
        assert r["rejected"] == 0 and r["served"] == len(w)
        assert r["throughput_req_s"] == pytest.approx(5.0, rel=0.1)
        assert r["slo_attainment"] > 0.99
        assert 0 < r["utilization"] < 1 and r["cost_cents_per_mtok"] > 0 and r["energy_j_per_request"] > 0
        assert np.all(o.first_token_s >= w.arrival_s) and np.all(o.finish_s >= o.first_token_s)


@pytest.mark.parametrize("p,g", [(128, 2048), (2048, 128), (1000, 1000)])
def test_overloaded_gpu_matches_the_closed_form_steady_state(p, g):
    """Poisson arrivals at twice the capacity: the middle half of the completions runs at
    GpuModel.saturated_throughput (KV-memory bound, token-budget bound, KV bound on H100)."""
    n = 4000
    fleet = parse_fleet("h200-fp8:1" if g != 1000 else "h100-fp8:1", engine="trtllm")
    model = GpuModel(gpu_at_precision(fleet.name, "fp8"), "trtllm").saturated_throughput(LLAMA, p, g)
    rate = 2 * model["output_tok_s"] / g
    arrivals = np.cumsum(np.random.default_rng(0).exponential(1 / rate, n))
    o = simulate(fleet, Workload(arrivals, np.full(n, p), np.full(n, g)), LLAMA)
    done = np.sort(o.finish_s)
    lo, hi = n // 4, 3 * n // 4
    assert (hi - lo) * g / (done[hi] - done[lo]) == pytest.approx(model["output_tok_s"], rel=0.05)


def test_requests_beyond_one_card_are_rejected_and_miss_the_slo():
    w = Workload(np.array([0.0, 1.0]), np.array([100, 6000]), np.array([10, 10]))
    o = simulate(parse_fleet("hc1:3"), w, LLAMA)
    assert o.rejected.tolist() == [False, True] and np.isnan(o.finish_s[1])
    assert summarize(o, LLAMA)["slo_attainment"] == 0.5


def test_arrival_processes():
    p = synthetic(100.0, n_requests=20000, seed=1)
    gaps = np.diff(p.arrival_s)
    assert gaps.mean() == pytest.approx(0.01, rel=0.05) and gaps.std() / gaps.mean() == pytest.approx(1, abs=0.05)
    b = synthetic(100.0, n_requests=20000, arrival="gamma", cv=3.0, seed=1)
    gb = np.diff(b.arrival_s)
    assert gb.mean() == pytest.approx(0.01, rel=0.1) and gb.std() / gb.mean() == pytest.approx(3, rel=0.1)
    ln = synthetic(10.0, n_requests=20000, length_dist="lognormal", prompt_mean=800, seed=2)
    assert ln.prompt_tokens.mean() == pytest.approx(800, rel=0.05) and (ln.output_tokens == 256).sum() < 20000
    d = synthetic(10.0, duration_s=30.0)
    assert d.arrival_s.max() < 30.0 and 200 < len(d) < 400
    for bad in (dict(rate=0, n_requests=5), dict(rate=1, n_requests=5, duration_s=3),
                dict(rate=1, n_requests=5, arrival="weibull"), dict(rate=1, n_requests=5, length_dist="zipf")):
        with pytest.raises(ValueError):
            synthetic(**bad)


def test_azure_trace_replay(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:15:46.6805900,374,44\n"
                    "2023-11-16 18:15:50.9951690,396,109\n"
                    "2023-11-16 18:15:47.0000000,879,0\n")
    w = read_trace(path)
    assert w.arrival_s.tolist() == pytest.approx([0.0, 0.31941, 4.314579])
    assert w.prompt_tokens.tolist() == [374, 879, 396] and w.output_tokens.tolist() == [44, 1, 109]
    fast = read_trace(path, rate_factor=2.0)
    assert fast.arrival_s[-1] == pytest.approx(w.arrival_s[-1] / 2)
    secs = tmp_path / "s.csv"
    secs.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,Extra\n0.5,10,3,x\n0.25,20,4,y\n")
    assert read_trace(secs).prompt_tokens.tolist() == [20, 10]
    bad = tmp_path / "bad.csv"
    bad.write_text("time,ContextTokens\n1,2\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1,two,3\n")
    with pytest.raises(ValueError, match="integers"):
        read_trace(bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,2,3\n")
    with pytest.raises(ValueError, match="TIMESTAMP"):
        read_trace(bad)


def test_fleet_parsing():
    assert parse_fleet("hc1:10").kind == "chip"
    f = parse_fleet("H200-FP8:8")
    assert (f.name, f.kind, f.count, f.precision) == ("h200", "gpu", 8, "fp8") and f.label == "h200-fp8:8"
    assert parse_fleet("b200:2", precision="fp4").precision == "nvfp4"
    for bad in ("hc1", "hc1:0", "tpu:3", "hc1-fp8:2", "h200-int3:2", "h200:-1"):
        with pytest.raises(ValueError):
            parse_fleet(bad)
    with pytest.raises(ValueError, match="no nvfp4"):
        simulate(parse_fleet("h100-nvfp4:1"), one(10, 10), LLAMA)
    with pytest.raises(ValueError, match="does not fit"):
        simulate(parse_fleet("h100:1"), one(10, 10), get_preset("llama-3.1-70b"))


def test_sweep_on_an_executor_equals_the_serial_sweep():
    fleets = [parse_fleet("hc1:2"), parse_fleet("h100-fp8:1")]
    kw = dict(duration_s=40.0, prompt_mean=256, output_mean=64, length_dist="exponential", seed=5)
    serial = sweep(fleets, [2.0, 8.0], LLAMA, **kw)
    with ThreadPoolExecutor(2) as ex:
        threaded = sweep(fleets, [2.0, 8.0], LLAMA, executor=ex, **kw)
    assert serial == threaded
    assert [r["fleet"] for r in serial] == ["hc1:2", "hc1:2", "h100-fp8:1", "h100-fp8:1"]
    good = goodput(serial, Slo())
    assert set(good) == {"hc1:2", "h100-fp8:1"} and all(v in (0.0, 2.0, 8.0) for v in good.values())
    with pytest.raises(ValueError, match="rates"):
        sweep(fleets, [0.0], LLAMA)


def test_serve_sim_command(capsys, tmp_path):
    rc = main(["serve-sim", "--fleet", "hc1:2", "--fleet", "h200:1", "--rate", "4", "--duration", "20",
               "--sweep", "2,4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["fleet"] for r in out["rows"]] == ["hc1:2", "h200:1"] and len(out["sweep"]) == 4
    assert set(out["goodput_req_s"]) == {"hc1:2", "h200:1"}
    rc = main(["serve-sim", "--fleet", "hc1:1", "--rate", "2", "--duration", "10", "--no-progress"])
    assert rc == 0 and "TTFT p50 ms" in capsys.readouterr().out
    assert main(["serve-sim", "--fleet", "warp:3"]) == 1


def test_sweep_on_a_dask_local_cluster():
    distributed = pytest.importorskip("distributed")
    fleets = [parse_fleet("hc1:2"), parse_fleet("h200:1")]
    kw = dict(duration_s=15.0, prompt_mean=512, output_mean=64, seed=9)
    serial = sweep(fleets, [3.0, 12.0], LLAMA, **kw)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            rows = sweep(fleets, [3.0, 12.0], LLAMA, executor=client.get_executor(), **kw)
    assert rows == serial


def test_serve_sim_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "s.png"
    assert main(["serve-sim", "--fleet", "hc1:1", "--fleet", "h100-fp8:1", "--rate", "2", "--duration", "5",
                 "--no-progress", "--plot", str(out)]) == 0
    assert out.stat().st_size > 10000 and (tmp_path / "s-goodput.png").stat().st_size > 10000
    assert "goodput" in capsys.readouterr().out
