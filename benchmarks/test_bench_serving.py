"""Serving-simulator speed: events and requests per second, and the plain event loop against a
discrete-event library (SimPy) on the same model.

The peer: a single-slot hard-coded card is an M/G/1 FIFO queue (docs/serving.md), which SimPy
expresses in a few lines (a Resource of capacity 1, one process per request). Both run the same
requests and service times and must agree to the last bit of float arithmetic that differs; the ratio of
their times is reported in ``extra_info``. The fleet benchmarks push ``HCEMU_BENCH_REQUESTS`` requests
(default 20,000 so the normal test run stays fast; the 1 M-request figure in docs/serving.md is
``HCEMU_BENCH_REQUESTS=1000000 python -m pytest benchmarks/test_bench_serving.py --benchmark-enable``).
Wall-clock speed is never asserted.
"""
import os
import time

import numpy as np
import pytest

from hcemu.model.spec import get_preset
from hcemu.serving import Workload, parse_fleet, simulate, synthetic
from hcemu.serving.fleet import chip_prices

SPEC = get_preset("llama-3.1-8b")
N = int(os.environ.get("HCEMU_BENCH_REQUESTS", "20000"))


def _mg1_workload(n):
    rng = np.random.default_rng(11)
    g = np.minimum(rng.geometric(1 / 400, n), 2000)
    return Workload(np.cumsum(rng.exponential(1 / 12.0, n)), np.full(n, 2300), g)


def _simpy_mg1(arrivals, service):
    simpy = pytest.importorskip("simpy")
    env = simpy.Environment()
    card = simpy.Resource(env, capacity=1)
    start = np.empty(len(arrivals))

    def request(i):
        with card.request() as slot:
            yield slot
            start[i] = env.now
            yield env.timeout(service[i])

    def source():
        t = 0.0
        for i, a in enumerate(arrivals):
            yield env.timeout(a - t)
            t = a
            env.process(request(i))

    env.process(source())
    env.run()
    return start


def test_bench_event_loop_vs_simpy_on_mg1(benchmark):
    n = min(N, 200_000)
    w = _mg1_workload(n)
    fleet = parse_fleet("hc1:1")
    prices, _, _ = chip_prices(fleet, SPEC, w.prompt_tokens, w.output_tokens)
    service = (prices["inject_s"] + prices["fill_s"] + (w.output_tokens - 1) * prices["decode_s_per_token"]).tolist()
    t0 = time.perf_counter()
    start = _simpy_mg1(w.arrival_s.tolist(), service)
    simpy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = benchmark.pedantic(simulate, args=(fleet, w, SPEC), rounds=1, iterations=1)
    ours_s = time.perf_counter() - t0
    ttft = out.first_token_s - w.arrival_s
    np.testing.assert_allclose(ttft, start - w.arrival_s + prices["inject_s"] + prices["fill_s"], rtol=1e-9, atol=1e-9)
    benchmark.extra_info.update(requests=n, simpy_seconds=simpy_s, hcemu_seconds=ours_s,
                                simpy_over_hcemu=simpy_s / ours_s, hcemu_events_per_s=out.events / ours_s)


@pytest.mark.parametrize("fleet", ["hc1:10", "h200:8"])
def test_bench_fleet_requests_per_second(benchmark, fleet):
    w = synthetic(50.0, n_requests=N, prompt_mean=1024, output_mean=256, length_dist="exponential",
                  max_tokens=2000, seed=1)
    t0 = time.perf_counter()
    out = benchmark.pedantic(simulate, args=(parse_fleet(fleet), w, SPEC), rounds=1, iterations=1)
    dt = time.perf_counter() - t0
    assert not out.rejected.any() and np.isfinite(out.finish_s).all()
    benchmark.extra_info.update(requests=N, seconds=dt, requests_per_s=N / dt, events=out.events,
                                events_per_s=out.events / dt, gpu_steps=out.gpu_steps)
