"""Throughput of the CIM kernels and their peers on Llama 3.1 8B and SmolLM2-135M matrix shapes.

Run: ``python -m pytest benchmarks/test_bench_cim.py --benchmark-enable`` (default runs are smoke
tests: each case once, on one warm copy). ``extra_info``: weight_bytes and macs per call, format,
m, threads, peer (hcemu | numpy_f32 | numpy_int | read | ort_int8 | ort_int4), copies rotated,
isa. GB/s = weight_bytes / time; GOPS = 2 * macs / time. Weights are cold when benchmarking: each
call touches the next of several copies whose total is 4x the L3 cache.
"""
from __future__ import annotations

import gc

import pytest

import hcemu
from hcemu.bench import kernels as kb
from hcemu.formats import INT4A_G32, INT8_G32

FORMATS = {"int8": INT8_G32, "int4": INT4A_G32}
MODELS = {"llama3.1-8b": kb.LLAMA31_8B_SHAPES, "smollm2-135m": kb.SMOLLM2_135M_SHAPES}


def _cases():
    cases = []
    for model, shapes in MODELS.items():
        for n, k in shapes:
            shape = (model, n, k)
            for fmt in FORMATS:
                for m in (1, 8):
                    for threads in (1, 2):
                        cases.append(pytest.param(shape, "hcemu", fmt, m, threads,
                                                  id=f"{model}-{n}x{k}-hcemu-{fmt}-m{m}-t{threads}"))
                for threads in (1, 2):
                    cases.append(pytest.param(shape, "read", fmt, 1, threads, id=f"{model}-{n}x{k}-read-{fmt}-t{threads}"))
            for m in (1, 8):
                cases.append(pytest.param(shape, "numpy_f32", "f32", m, 1, id=f"{model}-{n}x{k}-numpy_f32-m{m}"))
            cases.append(pytest.param(shape, "numpy_int", "int8", 1, 1, id=f"{model}-{n}x{k}-numpy_int-m1"))
            for peer, fmt in (("ort_int8", "int8"), ("ort_int4", "int4")):
                for m, threads in ((1, 1), (8, 1), (1, 2)):
                    cases.append(pytest.param(shape, peer, fmt, m, threads,
                                              id=f"{model}-{n}x{k}-{peer}-m{m}-t{threads}"))
    return cases


def _runner(peer, fmt, n, k, m, threads, cold):
    if peer == "hcemu":
        return kb.cim_runner(FORMATS[fmt], n, k, m, threads, cold)
    if peer == "read":
        nbytes = kb.synthetic_weights(FORMATS[fmt], 16, k).nbytes * -(-n // 16)
        return kb.read_runner(nbytes, threads, cold)
    if peer == "numpy_f32":
        return kb.numpy_f32_runner(n, k, m, threads, cold)
    if peer == "numpy_int":
        return kb.numpy_int_runner(n, k, m, cold)
    if not kb.have_onnxruntime():
        pytest.skip("onnxruntime or onnx is not installed (the bench extra)")
    if peer == "ort_int8":
        return kb.ort_int8_runner(n, k, m, threads, cold)
    return kb.ort_int4_runner(n, k, m, threads, cold)


@pytest.mark.parametrize("shape,peer,fmt,m,threads", _cases())
def test_cim_throughput(benchmark, shape, peer, fmt, m, threads):
    model, n, k = shape
    if threads > 1 and not hcemu.capabilities()["openmp"] and peer in ("hcemu", "read"):
        pytest.skip("built without OpenMP")
    cold = not benchmark.disabled
    if benchmark.disabled and peer.startswith("ort") and n * k > 100_000_000:
        pytest.skip("smoke run: onnxruntime sessions on the 128256x4096 head take ~10 s to build")
    runner = _runner(peer, fmt, n, k, m, threads, cold)
    benchmark.group = f"{model} {n}x{k} m={m}"
    benchmark.extra_info.update(
        weight_bytes=runner.weight_bytes, macs=runner.macs, format=fmt, m=m, threads=threads, peer=peer,
        copies=runner.copies, isa=hcemu.capabilities()["active"], note=runner.note, n=n, k=k)
    call_bytes = runner.weight_bytes
    if benchmark.disabled:
        benchmark(runner.fn)
    else:
        # about 0.2 s of calls per round, 5 rounds, whole calls only
        import time

        t0 = time.perf_counter()
        runner.fn()
        one = max(time.perf_counter() - t0, 1e-6)
        iterations = max(1, min(2000, int(0.2 / one)))
        benchmark.pedantic(runner.fn, rounds=5, iterations=iterations, warmup_rounds=1)
    del runner
    gc.collect()
    assert call_bytes > 0
