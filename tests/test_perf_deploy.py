"""GPU deployment precisions, the continuous-batching step model and the engine presets."""
import dataclasses

import numpy as np
import pytest

from hcemu.model.spec import get_preset
from hcemu.perf.deploy import (ENGINES, PRECISIONS, EngineSpec, Precision, deploy_sources, get_engine,
                               get_precision, gpu_at_precision, supports)
from hcemu.perf.gpu import GpuModel, GpuWork
from hcemu.perf.specs import DTYPE_BYTES, get_gpu
from hcemu.report import compare_rows

LLAMA = get_preset("llama-3.1-8b")


def test_every_preset_field_has_a_source():
    for registry in (PRECISIONS, ENGINES):
        for name, obj in registry.items():
            src = deploy_sources(name)
            assert {f.name for f in dataclasses.fields(obj)} - {"name"} <= set(src)
            assert all(v.text.strip() for v in src.values())
    with pytest.raises(ValueError, match="unknown deployment preset"):
        deploy_sources("tpu")


def test_bf16_is_the_preset_itself_and_fp8_halves_the_weights():
    assert gpu_at_precision("h200", "bf16") is get_gpu("h200")
    fp8 = gpu_at_precision("h200", "fp8")
    assert fp8.weight_dtype == fp8.kv_dtype == "fp8" and fp8.name == "h200-fp8"
    w16, w8 = GpuWork.of(LLAMA, get_gpu("h200")), GpuWork.of(LLAMA, fp8)
    assert w8.weight_bytes == pytest.approx(w16.weight_bytes / 2)
    assert w8.kv_bytes_per_key == pytest.approx(w16.kv_bytes_per_key / 2)
    # NVFP4: 4-bit values + one FP8 scale per 16 = 4.5 bits per weight; its KV stays FP8 unless asked
    fp4 = gpu_at_precision("b200", "fp4")
    assert fp4.weight_dtype == "nvfp4" and fp4.kv_dtype == "fp8"
    assert GpuWork.of(LLAMA, fp4).weight_bytes == pytest.approx(w16.weight_bytes * 4.5 / 16)
    kv4 = gpu_at_precision("b200", "nvfp4", "nvfp4")
    assert GpuWork.of(LLAMA, kv4).kv_bytes_per_key == pytest.approx(w16.kv_bytes_per_key * 4.5 / 16)
    assert DTYPE_BYTES["nvfp4"] == 0.5625


def test_precisions_the_gpu_lacks_are_refused():
    for g in ("h100", "h200"):
        assert not supports(g, "nvfp4") and supports(g, "fp8")
        with pytest.raises(ValueError, match="no nvfp4 tensor cores"):
            gpu_at_precision(g, "nvfp4")
        with pytest.raises(ValueError, match="no nvfp4"):
            gpu_at_precision(g, "fp8", "nvfp4")
    with pytest.raises(ValueError, match="unknown GPU precision"):
        get_precision("int3")
    with pytest.raises(ValueError, match="unknown serving engine preset"):
        get_engine("tgi")
    with pytest.raises(ValueError, match="kv_read_efficiency"):
        EngineSpec("x", 8, 512, 0.9, 1.5)
    with pytest.raises(ValueError, match="weight_dtype"):
        Precision("x", "int4", "fp8", 0.5)


def test_lower_precision_raises_the_memory_batch_limit_and_batch1_speed():
    ctx = 32768
    b16, b8 = GpuModel("h100"), GpuModel(gpu_at_precision("h100", "fp8"))
    assert b8.kv_capacity_tokens(LLAMA) > 2 * b16.kv_capacity_tokens(LLAMA)
    assert b8.max_batch(LLAMA, ctx) > 2 * b16.max_batch(LLAMA, ctx)
    # batch-1 decode is weight-bandwidth bound: FP8 is nearly twice as fast
    r16, r8 = b16.evaluate(LLAMA, 1024, 1024), b8.evaluate(LLAMA, 1024, 1024)
    assert 1.6 < r8.per_user_tok_s / r16.per_user_tok_s < 2.0
    # memory limit by hand: (80 GB * 0.9 - 8.03 GB of FP8 weights) / 64 KiB of FP8 KV per token
    w = GpuWork.of(LLAMA, gpu_at_precision("h100", "fp8"))
    assert b8.kv_capacity_tokens(LLAMA) == int((80e9 * 0.9 - w.weight_bytes) // (32 * 2 * 1024))


def test_mixed_step_reduces_to_the_decode_step_and_grows_with_prefill():
    m = GpuModel(gpu_at_precision("h200", "fp8"), "vllm")
    b, k = np.array([1, 8, 64]), 1500.0
    assert np.allclose(m.step_seconds(LLAMA, b, k), m.mixed_step_seconds(LLAMA, b, b * k))
    base = float(m.mixed_step_seconds(LLAMA, 8, 8 * k))
    more = [float(m.mixed_step_seconds(LLAMA, 8, 8 * k, c, c * c / 2, c)) for c in (256, 2048, 8192)]
    assert base < more[0] < more[1] < more[2]
    # a big prefill chunk is compute bound: time ~ tokens * 2 * params / (peak * efficiency)
    g = m.gpu
    w = GpuWork.of(LLAMA, g)
    assert more[2] > 8192 * w.flops / (g.fp8_tflops * 1e12 * g.compute_efficiency)
    # the engine's KV efficiency only slows the KV stream; without an engine it is 1
    assert GpuModel(g).kv_efficiency == 1.0
    assert float(GpuModel(g).step_seconds(LLAMA, 64, k)) < float(m.step_seconds(LLAMA, 64, k))


def test_saturated_throughput_regression_pins_and_bounds():
    """Regression pin: the two TensorRT-LLM figures the FP8 compute efficiency and the KV read
    efficiency were tuned to (docs/serving.md); hcemu validate reports the held-out ones."""
    m = GpuModel(gpu_at_precision("h200", "fp8"), "trtllm")
    prefill = m.saturated_throughput(LLAMA, 2048, 128)
    decode = m.saturated_throughput(LLAMA, 128, 2048)
    assert prefill["output_tok_s"] == pytest.approx(3538, rel=0.03) and prefill["bound"] == "token_budget"
    assert decode["output_tok_s"] == pytest.approx(26221, rel=0.03) and decode["bound"] == "kv_memory"
    # flow balance: prefill tokens per step = decode tokens * prompt / decode steps, inside the budget
    assert prefill["prefill_tokens"] == pytest.approx(prefill["decode_tokens"] * 2048 / 127)
    assert prefill["prefill_tokens"] + prefill["decode_tokens"] == pytest.approx(8192)
    small = GpuModel(gpu_at_precision("h200", "fp8"), get_engine("trtllm").replace(max_num_seqs=4))
    r = small.saturated_throughput(LLAMA, 128, 2048)
    assert r["bound"] == "max_num_seqs" and r["resident"] == 4
    with pytest.raises(ValueError, match="does not fit"):
        GpuModel("h100", "vllm").saturated_throughput(get_preset("llama-3.1-70b"), 128, 128)
    # without an engine the model uses vLLM's
    assert GpuModel("h200").saturated_throughput(LLAMA, 512, 256) == GpuModel("h200", "vllm").saturated_throughput(
        LLAMA, 512, 256)


def test_compare_rows_at_a_precision():
    rows = {r["system"]: r for r in compare_rows(LLAMA, 1024, 1024, host=False, gpu_precision="fp8")}
    assert {"h100-fp8", "h200-fp8", "b200-fp8"} <= set(rows)
    bf16 = {r["system"]: r for r in compare_rows(LLAMA, 1024, 1024, host=False)}
    assert rows["h200-fp8"]["per_user_tok_s"] > 1.6 * bf16["h200"]["per_user_tok_s"]
    fp4 = {r["system"]: r for r in compare_rows(LLAMA, 1024, 1024, host=False, gpu_precision="nvfp4")}
    assert fp4["h100"]["per_user_tok_s"] is None and "Blackwell" in fp4["h100"]["note"]
    assert fp4["b200-nvfp4"]["per_user_tok_s"] > rows["b200-fp8"]["per_user_tok_s"]
