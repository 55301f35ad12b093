"""Attention decode (one query token per call) over the SRAM KV cache at contexts 256/1024/4096,
for SmolLM2-135M heads (9 q / 3 kv, head_dim 64) and Llama 3.1 8B heads (32 / 8, 128), one layer;
and prefill chunks of 64 queries ending at contexts 64/128/256 (SmolLM2 heads).

Peers in the same run: a numpy float32 (causal) GQA softmax attention over float32 K/V (what a
host framework would run). ``extra_info`` holds the SRAM bytes the chip reads for the step and the
attention MACs, so GB/s and GOPS can be read off the timings. With --benchmark-disable (the
default test run) every case runs once as a smoke test.
"""
import numpy as np
import pytest

from hcemu import _core
from hcemu.kernels.attention import KVCache, attention
from hcemu.events import Events

HEADS = {"smollm2": (9, 3, 64), "llama3.1-8b": (32, 8, 128)}
CONTEXTS = (256, 1024, 4096)
_CACHES = {}


def _setup(model, ctx, fmt):
    key = (model, ctx, fmt)
    if key not in _CACHES:
        H, hkv, hd = HEADS[model]
        rng = np.random.default_rng(ctx)
        k = rng.standard_normal((ctx, hkv, hd), dtype=np.float32)
        v = rng.standard_normal((ctx, hkv, hd), dtype=np.float32)
        cache = KVCache(1, hkv, hd, ctx, fmt=fmt)
        cache.append(0, k, v)
        cache.commit(ctx)
        q = rng.standard_normal((1, H, hd), dtype=np.float32)
        _CACHES[key] = (cache, q, k, v)
    return _CACHES[key]


def numpy_attention(q, k, v):
    """float32 decode attention of q (1, H, hd) over k, v (n, Hkv, hd): the host peer."""
    H, hd = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    qg = q[0].reshape(hkv, H // hkv, hd)
    s = np.einsum("gad,ngd->gan", qg, k) * np.float32(1 / np.sqrt(hd))
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("gan,ngd->gad", s, v).reshape(1, H * hd)


@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("model", list(HEADS))
@pytest.mark.parametrize("backend", ["hcemu-int8", "hcemu-fp16", "numpy-f32"])
def test_attention_decode(benchmark, model, ctx, backend):
    fmt = "fp16" if backend == "hcemu-fp16" else "int8"
    cache, q, k, v = _setup(model, ctx, fmt)
    H, hkv, hd = HEADS[model]
    ev = Events(1)
    attention(q, cache, 0, ctx - 1, events=ev)
    benchmark.group = f"attention-decode-{model}-ctx{ctx}"
    benchmark.extra_info.update(
        context=ctx, heads=H, kv_heads=hkv, head_dim=hd, isa=_core.isa_active(),
        sram_kv_bytes_read=ev.sram_kv_bytes_read, attn_macs=ev.attn_macs,
        host_f32_bytes_read=2 * ctx * hkv * hd * 4)
    if backend == "numpy-f32":
        out = benchmark(numpy_attention, q, k, v)
    else:
        out = np.empty((1, H * hd), np.float32)
        benchmark(attention, q, cache, 0, ctx - 1, out=out)
    assert out.shape == (1, H * hd) and np.isfinite(out).all()


PREFILL_CHUNK = 64
PREFILL_CONTEXTS = (64, 128, 256)


def numpy_attention_chunk(q, k, v, start):
    """float32 causal attention of a chunk q (t, H, hd) at positions start.. over k, v (n, Hkv, hd)."""
    t, H, hd = q.shape
    hkv = k.shape[1]
    n = start + t
    qg = q.reshape(t, hkv, H // hkv, hd)
    s = np.einsum("tgad,ngd->gatn", qg, k[:n]) * np.float32(1 / np.sqrt(hd))
    s = np.where(np.arange(n) <= start + np.arange(t)[:, None], s, np.float32(-np.inf))
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("gatn,ngd->tgad", s, v[:n]).reshape(t, H * hd)


@pytest.mark.parametrize("ctx", PREFILL_CONTEXTS)
@pytest.mark.parametrize("backend", ["hcemu-int8", "hcemu-fp16", "numpy-f32"])
def test_attention_prefill_chunk(benchmark, ctx, backend):
    """A prefill chunk of 64 queries ending at context ``ctx`` (SmolLM2 heads, one layer)."""
    model = "smollm2"
    fmt = "fp16" if backend == "hcemu-fp16" else "int8"
    cache, _, k, v = _setup(model, ctx, fmt)
    H, hkv, hd = HEADS[model]
    t, start = PREFILL_CHUNK, ctx - PREFILL_CHUNK
    q = np.random.default_rng(ctx + 1).standard_normal((t, H, hd), dtype=np.float32)
    ev = Events(1)
    attention(q, cache, 0, start, events=ev)
    benchmark.group = f"attention-prefill{t}-{model}-ctx{ctx}"
    benchmark.extra_info.update(
        context=ctx, queries=t, heads=H, kv_heads=hkv, head_dim=hd, isa=_core.isa_active(),
        sram_kv_bytes_read=ev.sram_kv_bytes_read, attn_macs=ev.attn_macs)
    if backend == "numpy-f32":
        out = benchmark(numpy_attention_chunk, q, k, v, start)
    else:
        out = np.empty((t, H * hd), np.float32)
        benchmark(attention, q, cache, 0, start, out=out)
    assert out.shape == (t, H * hd) and np.isfinite(out).all()
