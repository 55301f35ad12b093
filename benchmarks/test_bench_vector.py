"""Vector-unit kernels at SmolLM2-135M and Llama 3.1 8B widths (one decode token), beside numpy
float32 peers in the same run. ``extra_info`` holds the element count."""
import numpy as np
import pytest

from hcemu import _core
from hcemu.kernels import vector

WIDTHS = {"smollm2": (576, 1536, 9, 64), "llama3.1-8b": (4096, 14336, 32, 128)}


def np_rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def np_silu_mul(g, u):
    return g / (1 + np.exp(-g)) * u


def np_rope(x, c, s):
    y = np.empty_like(x)
    y[..., 0::2] = x[..., 0::2] * c[:, None] - x[..., 1::2] * s[:, None]
    y[..., 1::2] = x[..., 0::2] * s[:, None] + x[..., 1::2] * c[:, None]
    return y


@pytest.mark.parametrize("model", list(WIDTHS))
@pytest.mark.parametrize("op", ["rmsnorm", "silu_mul", "rope"])
@pytest.mark.parametrize("backend", ["hcemu", "numpy-f32"])
def test_vector_op(benchmark, model, op, backend):
    d, f, heads, hd = WIDTHS[model]
    rng = np.random.default_rng(0)
    benchmark.group = f"vector-{op}-{model}"
    benchmark.extra_info.update(isa=_core.isa_active())
    if op == "rmsnorm":
        x, w = rng.standard_normal((1, d), np.float32), rng.standard_normal(d, np.float32)
        benchmark.extra_info["elements"] = d
        fn, args = (vector.rmsnorm, (x, w, 1e-5)) if backend == "hcemu" else (np_rmsnorm, (x, w, np.float32(1e-5)))
    elif op == "silu_mul":
        g, u = rng.standard_normal((1, f), np.float32), rng.standard_normal((1, f), np.float32)
        benchmark.extra_info["elements"] = f
        fn, args = (vector.silu_mul, (g, u)) if backend == "hcemu" else (np_silu_mul, (g, u))
    else:
        x = rng.standard_normal((1, heads, hd), np.float32)
        c, s = rng.standard_normal((1, hd // 2), np.float32), rng.standard_normal((1, hd // 2), np.float32)
        benchmark.extra_info["elements"] = heads * hd
        fn, args = (vector.rope, (x, c, s)) if backend == "hcemu" else (np_rope, (x, c, s))
    out = benchmark(fn, *args)
    assert np.isfinite(out).all()
