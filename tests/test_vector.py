"""The vector unit (hcemu.kernels.vector) against its numpy oracle (hcemu.kernels.vector_ref): bit-exact on every
ISA path, close to float64 math, and clear errors on bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hcemu
from hcemu import _core
from hcemu.kernels import vector
from hcemu.kernels.vector_ref import add_ref, exp_ref, lane_sum, rmsnorm_ref, rope_ref, silu_mul_ref

ISAS = _core.isa_supported()


@pytest.fixture(params=ISAS)
def isa(request):
    before = _core.isa_active()
    hcemu.set_isa(request.param)
    yield request.param
    hcemu.set_isa(before)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- exp and fp16 conversion ------------------------------------------------------------------

def test_exp_matches_oracle_and_is_accurate():
    x = np.concatenate([np.linspace(-100, 100, 400_001, dtype=np.float32),
                        np.float32([0, -0.0, -87, -87.0001, 88, 88.0001, np.inf, -np.inf, np.nan])])
    got = vector.exp_f32(x)
    np.testing.assert_array_equal(got, exp_ref(x))
    inside = (x >= -80) & (x <= 80)
    rel = np.abs(got[inside].astype(np.float64) / np.exp(x[inside].astype(np.float64)) - 1)
    assert rel.max() < 3 * 2.0 ** -24  # within 3 ulp-ish of the true value
    assert got[x < -87].max() == 0 and np.all(np.isinf(got[(x > 88) & ~np.isnan(x)]))
    assert np.isnan(got[-1]) and got[x == 0].min() == 1.0


def test_f16_rounding_matches_numpy_everywhere():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32)
    edges = np.float32([65504, 65519.99, 65520, 65536, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001,
                        2.0**-14, 2.0**-14 * (1 - 2**-11), 1 + 2**-11, 1 + 3 * 2**-11, 0, -0.0])
    x = np.concatenate([bits.view(np.float32), edges, -edges])
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_core.f32_to_f16_bits(x), want)
    assert (_core.f32_to_f16_bits(np.float32([np.nan])) & 0x7fff) > 0x7c00


# ---- kernels vs oracle, every ISA path ----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 5), d=st.integers(1, 300), seed=st.integers(0, 2**31),
       eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_rmsnorm_exact(m, d, seed, eps):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, m, d, scale=3), rand(rng, d)
    want = rmsnorm_ref(x, w, eps)
    for name in ISAS:
        hcemu.set_isa(name)
        np.testing.assert_array_equal(vector.rmsnorm(x, w, eps), want)
    hcemu.set_isa(ISAS[-1])


def test_rmsnorm_close_to_float64_and_in_place():
    rng = np.random.default_rng(2)
    x, w = rand(rng, 4, 576, scale=5), rand(rng, 576)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    got = vector.rmsnorm(x, w, 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    y = x.copy()
    assert vector.rmsnorm(y, w, 1e-5, out=y) is y
    np.testing.assert_array_equal(y, got)


def test_lane_sum_order_is_the_documented_one():
    # 16 interleaved lanes folded 8,4,2,1 differs from a sequential sum for these values
    x = np.float32([1e8] + [1.0] * 31 + [-1e8])[None]
    seq = np.float32(0)
    for v in x[0]:
        seq = seq + v
    # lane 0 takes 1e8 + 1 - 1e8 = 0 (the 1 is lost), lanes 1..15 take 1 + 1 each
    assert lane_sum(x)[0] == np.float32(30.0) and seq == 0


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 4), heads=st.integers(1, 6), half=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_rope_exact(t, heads, half, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, t, heads, 2 * half)
    ang = rng.uniform(-50, 50, (t, half))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    want = rope_ref(x, cos, sin)
    np.testing.assert_array_equal(vector.rope(x, cos, sin), want)
    y = x.copy()
    vector.rope(y, cos, sin, out=y)
    np.testing.assert_array_equal(y, want)
    # consecutive pairs rotate: norms of (x[2j], x[2j+1]) are preserved
    np.testing.assert_allclose(np.hypot(want[..., 0::2], want[..., 1::2]),
                               np.hypot(x[..., 0::2], x[..., 1::2]), rtol=1e-5, atol=1e-6)


def test_rope_pairs_are_consecutive():
    x = np.zeros((1, 1, 4), np.float32)
    x[0, 0, 0] = 1.0  # pair 0 = (x0, x1)
    cos = np.float32([[0, 1]])
    sin = np.float32([[1, 0]])  # pair 0 by 90 degrees, pair 1 unchanged
    np.testing.assert_array_equal(vector.rope(x, cos, sin)[0, 0], [0, 1, 0, 0])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 4), f=st.integers(1, 600), seed=st.integers(0, 2**31))
def test_silu_mul_and_add_exact(m, f, seed):
    rng = np.random.default_rng(seed)
    g, u = rand(rng, m, f, scale=10), rand(rng, m, f)
    g.flat[::7] *= 20  # reach exp's clamps (|g| > 87)
    want = silu_mul_ref(g, u)
    for name in ISAS:
        hcemu.set_isa(name)
        np.testing.assert_array_equal(vector.silu_mul(g, u), want)
        gg = g.copy()
        np.testing.assert_array_equal(vector.silu_mul(gg, u, out=gg), want)
    hcemu.set_isa(ISAS[-1])
    x = rand(rng, m, f)
    want = add_ref(x, u)
    assert vector.add_(x, u) is x
    np.testing.assert_array_equal(x, want)


def test_silu_close_to_float64_and_extremes():
    g = np.float32([[-200, -88.5, -20, -1, -1e-8, 0, 1e-8, 1, 20, 88.5, 200]])
    u = np.ones_like(g)
    got = vector.silu_mul(g, u)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        want = g64 / (1 + np.exp(-g64))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)
    assert np.isfinite(got).all()


# ---- bad input --------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 8), np.float32)
    w = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="rmsnorm: x .*float32.*float64"):
        vector.rmsnorm(x.astype(np.float64), w, 1e-5)
    with pytest.raises(TypeError, match="rmsnorm: x .*list"):
        vector.rmsnorm([[1.0]], w, 1e-5)
    with pytest.raises(ValueError, match="C-contiguous"):
        vector.rmsnorm(np.zeros((8, 2), np.float32).T, w, 1e-5)
    with pytest.raises(ValueError, match="w has 7 values, x rows have 8"):
        vector.rmsnorm(x, w[:7], 1e-5)
    with pytest.raises(ValueError, match=r"out has shape \(2, 7\), expected \(2, 8\)"):
        vector.rmsnorm(x, w, 1e-5, out=np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        vector.rmsnorm(x[0], w, 1e-5)
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        vector.add_(ro, x)
    with pytest.raises(ValueError, match="even"):
        vector.rope(np.zeros((1, 1, 3), np.float32), np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match=r"cos has shape \(1, 3\), expected \(1, 2\)"):
        vector.rope(np.zeros((1, 2, 4), np.float32), np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"up has shape"):
        vector.silu_mul(x, x[:1].copy())
    with pytest.raises(ValueError, match=r"y has shape"):
        vector.add_(x, x[:, :4].copy())


def test_empty_batches_are_fine():
    assert vector.rmsnorm(np.zeros((0, 4), np.float32), np.ones(4, np.float32), 1e-5).shape == (0, 4)
    assert vector.silu_mul(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)).shape == (0, 3)
