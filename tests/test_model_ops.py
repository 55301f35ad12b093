"""hcemu.model.ops: float32 vector-unit math against float64 formulas and RoPE conventions."""
import numpy as np
import pytest

from hcemu.model import ops
from hcemu.model.spec import RopeScaling, get_preset

RNG = np.random.default_rng(7)


def test_rmsnorm_matches_float64_and_is_order_independent():
    x = (RNG.standard_normal((5, 576)) * 3).astype(np.float32)
    w = RNG.standard_normal(576).astype(np.float32)
    y = ops.rmsnorm(x, w, 1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y, ref, rtol=3e-7 * 4, atol=0)
    # float64 accumulation: permuting the inputs permutes the outputs exactly
    perm = RNG.permutation(576)
    np.testing.assert_array_equal(ops.rmsnorm(x[:, perm], w[perm], 1e-5), y[:, perm])
    with pytest.raises(ValueError, match="576"):
        ops.rmsnorm(x, w[:10], 1e-5)
    with pytest.raises(TypeError):
        ops.rmsnorm(np.array(["a"] * 576), w, 1e-5)


def test_llama3_divisors_by_hand():
    s = RopeScaling(8.0, 1.0, 4.0, 8192)
    wl = np.array([100.0, 2000.0, 4096.0, 9000.0, 1e6])
    d = ops.llama3_frequency_divisors(2 * np.pi / wl, s)
    # 4096: s = (8192/4096 - 1) / 3 = 1/3 -> divisor 1 / ((2/3)/8 + 1/3) = 2.4
    np.testing.assert_allclose(d, [1.0, 1.0, 2.4, 8.0, 8.0], rtol=1e-12)


def test_rope_tables_values_and_scaling():
    spec = get_preset("smollm2-135m")
    pos = np.array([0, 1, 5, 8191])
    cos, sin = ops.rope_tables(spec, pos)
    assert cos.shape == sin.shape == (4, 32) and cos.dtype == np.float32
    np.testing.assert_array_equal(cos[0], 1.0)
    np.testing.assert_array_equal(sin[0], 0.0)
    inv = 100000.0 ** (-np.arange(0, 64, 2) / 64)
    np.testing.assert_array_equal(cos, np.cos(pos[:, None] * inv).astype(np.float32))
    np.testing.assert_array_equal(sin, np.sin(pos[:, None] * inv).astype(np.float32))
    # Llama 3.1: the fastest frequency is unscaled, the slowest divided by 8
    f = ops.rope_frequencies(get_preset("llama-3.1-8b"))
    unscaled = 500000.0 ** (-np.arange(0, 128, 2) / 128)
    assert f[0] == unscaled[0] and f[-1] == pytest.approx(unscaled[-1] / 8, rel=1e-12)
    assert np.all(f <= unscaled) and np.all(np.diff(f) < 0)
    with pytest.raises(ValueError):
        ops.rope_tables(spec, np.array([-1]))
    with pytest.raises(ValueError):
        ops.rope_tables(spec, np.array([0.5]))


def _hf_rope(x, pos, inv):
    """Hugging Face rotate-half RoPE in float64 on (t, heads, hd): pairs (i, i + hd/2)."""
    ang = pos[:, None] * inv
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    h = x.shape[-1] // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def test_apply_rope_is_hf_rope_after_the_gguf_permutation():
    """The GGUF converter reorders each head's Q/K rows so HF pair (i, i+hd/2) lands at (2i, 2i+1);
    consecutive-pair RoPE on the reordered vector equals HF's rotate-half RoPE, reordered."""
    spec = get_preset("smollm2-135m")
    hd = spec.head_dim
    pos = np.arange(3, 10)
    x_hf = RNG.standard_normal((7, 3, hd))
    order = np.empty(hd, dtype=int)
    order[0::2] = np.arange(hd // 2)
    order[1::2] = np.arange(hd // 2) + hd // 2
    cos, sin = ops.rope_tables(spec, pos)
    got = ops.apply_rope(x_hf[..., order].astype(np.float32), cos, sin)
    inv = spec.rope_theta ** (-np.arange(0, hd, 2) / hd)
    want = _hf_rope(x_hf, pos.astype(np.float64), inv)[..., order]
    np.testing.assert_allclose(got, want, atol=2e-6)
    # and it is NOT the rotate-half convention applied directly
    assert np.abs(ops.apply_rope(x_hf.astype(np.float32), cos, sin) - _hf_rope(x_hf, pos * 1.0, inv)).max() > 0.1


def test_apply_rope_pairs_and_relative_positions():
    spec = get_preset("llama-3.1-8b")
    cos, sin = ops.rope_tables(spec, np.array([0, 7, 1000, 1007]))
    x = np.zeros((4, 1, 128), np.float32)
    x[:, 0, 0] = 1.0
    y = ops.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(y[:, 0, 0], cos[:, 0])
    np.testing.assert_array_equal(y[:, 0, 1], sin[:, 0])
    assert not y[:, 0, 2:].any()
    q = RNG.standard_normal(128).astype(np.float32)
    k = RNG.standard_normal(128).astype(np.float32)
    rq = ops.apply_rope(np.broadcast_to(q, (4, 1, 128)), cos, sin)[:, 0].astype(np.float64)
    rk = ops.apply_rope(np.broadcast_to(k, (4, 1, 128)), cos, sin)[:, 0].astype(np.float64)
    # <R(7) q, R(0) k> == <R(1007) q, R(1000) k>: attention sees only the relative position
    assert rq[1] @ rk[0] == pytest.approx(rq[3] @ rk[2], abs=2e-3)
    np.testing.assert_allclose(np.linalg.norm(rq, axis=1), np.linalg.norm(q), rtol=1e-5)
    with pytest.raises(ValueError, match="cos/sin"):
        ops.apply_rope(x, cos[:2], sin[:2])


def test_silu_and_softmax():
    x = np.concatenate([RNG.standard_normal(1000) * 6, [-200.0, -89.0, 0.0, 50.0, 200.0]]).astype(np.float32)
    with np.errstate(all="raise"):
        y = ops.silu(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, x64 / (1 + np.exp(-x64)), rtol=4e-7, atol=1e-30)
    assert y.dtype == np.float32 and y[-1] == 200.0 and y[-5] == 0.0
    s = (RNG.standard_normal((4, 50)) * 5).astype(np.float32)
    s[0, 10:] = -np.inf
    p = ops.softmax(s)
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p[0, 10:], 0.0)
    e = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    # x - max is rounded to float32 first (|x| <~ 20: error <~ 1e-6 in the exponent)
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), rtol=3e-6, atol=1e-38)
    np.testing.assert_allclose(p.sum(-1, dtype=np.float64), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="masked"):
        ops.softmax(np.full((2, 3), -np.inf, np.float32))
