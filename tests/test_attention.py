"""KV cache and streaming attention (hcemu.kernels.attention) against the numpy oracle
(hcemu.kernels.attention_ref): integer parts exact, float outputs bit-identical on every ISA path, close to
float64 softmax attention within the quantization tolerance of docs/numerics.md."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hcemu
from hcemu import _core
from hcemu.kernels.attention import (ATTN_BLOCK, ContextOverflowError, KVCache, attention,
                             kv_bytes_per_token_layer)
from hcemu.kernels.attention_ref import (BLOCK, attention_float64, attention_ref, qk_ref, quantize_act_ref,
                                 quantize_kv_ref)
from hcemu.events import Events

ISAS = _core.isa_supported()


pytestmark = pytest.mark.usefixtures("restore_isa")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def filled_cache(rng, n_layers, hkv, hd, n, fmt="int8", capacity=None, scale=1.0):
    cache = KVCache(n_layers, hkv, hd, capacity or n + 8, fmt=fmt)
    ks, vs = [], []
    for layer in range(n_layers):
        k, v = rand(rng, n, hkv, hd, scale=scale), rand(rng, n, hkv, hd, scale=scale)
        cache.append(layer, k, v)
        ks.append(k)
        vs.append(v)
    cache.commit(n)
    return cache, ks, vs


def oracle(q, cache, layer, start):
    if cache.fmt == "int8":
        return attention_ref(q, cache.k_codes[layer], cache.v_codes[layer], start,
                             k_scales=cache.k_scales[layer].view(np.float16),
                             v_scales=cache.v_scales[layer].view(np.float16))
    return attention_ref(q, cache.k[layer].view(np.float16), cache.v[layer].view(np.float16), start)


def test_block_constant_agrees():
    assert ATTN_BLOCK == BLOCK == 64


# ---- KV cache storage -------------------------------------------------------------------------

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [64, 40, 6])
def test_int8_store_matches_oracle_and_dequantizes_consistently(isa, hd):
    hcemu.set_isa(isa)
    rng = np.random.default_rng(0)
    x = rand(rng, 50, 3, hd, scale=2)
    x[3] = 0  # all-zero rows: scale 0, codes 0
    x[4, 1] *= 1e-9  # scale underflows fp16 to 0 or subnormal
    x[5, 0] = (np.arange(hd) - hd / 2) * 0.5 + 0.25  # scale 0.5 (amax 63.5): x / s = k + 0.5, ties
    x[5, 0, 0] = 127 * 0.5
    x[6, 2] = -x[5, 0]
    cache = KVCache(1, 3, hd, 64)
    cache.append(0, x, x)
    codes, s16 = quantize_kv_ref(x.transpose(1, 0, 2))
    np.testing.assert_array_equal(cache.k_codes[0, :, :50], codes)
    np.testing.assert_array_equal(cache.k_scales[0, :, :50], s16.view(np.uint16))
    if hd != 64:
        return
    assert cache.k_codes.min() >= -127
    # codes were computed against the STORED fp16 scale: |x - q*s| <= s/2 (+ rounding slack)
    k, _ = cache.keys_values(0)
    s = s16.astype(np.float32).T[..., None]
    normal = s >= 2.0 ** -14  # fp16 normal scales; rows whose amax/127 underflows fp16 store 0
    assert np.all((np.abs(k - x) <= s * 0.5 * (1 + 1e-6)) | ~normal)
    assert np.all(s[4, 1] == 0) and np.all(k[4, 1] == 0) and np.all(k[3] == 0)


def test_fp16_store_is_round_to_nearest_even():
    rng = np.random.default_rng(1)
    x = rand(rng, 20, 2, 16, scale=100)
    cache = KVCache(2, 2, 16, 32, fmt="fp16")
    cache.append(1, x, -x)
    np.testing.assert_array_equal(cache.k[1, :, :20], x.astype(np.float16).view(np.uint16).transpose(1, 0, 2))
    k, v = cache.keys_values(1)
    np.testing.assert_array_equal(k, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(v, -k)


def test_sizes_and_capacity_bytes():
    assert kv_bytes_per_token_layer(8, 128, "int8") == 2 * 8 * (128 + 2)
    assert kv_bytes_per_token_layer(8, 128, "fp16") == 2 * 8 * 256
    c = KVCache(32, 8, 128, capacity_bytes=10 * 32 * 2080 + 5)
    assert c.bytes_per_token == 32 * 2080 and c.capacity_tokens == 10 and c.nbytes == 10 * 32 * 2080
    c16 = KVCache(30, 3, 64, 7, fmt="fp16")
    assert c16.bytes_per_token == 30 * 2 * 3 * 128 and c16.nbytes == 7 * c16.bytes_per_token
    with pytest.raises(ValueError, match="exactly one"):
        KVCache(1, 1, 8)
    with pytest.raises(ValueError, match="exactly one"):
        KVCache(1, 1, 8, 4, capacity_bytes=100)
    with pytest.raises(ValueError, match="fmt"):
        KVCache(1, 1, 8, 4, fmt="int4")
    with pytest.raises(ContextOverflowError, match="hold no token"):
        KVCache(2, 1, 8, capacity_bytes=10)


def test_context_overflow_error_says_what_fits():
    cache = KVCache(2, 1, 8, 10)
    x = np.ones((6, 1, 8), np.float32)
    cache.append(0, x, x)
    cache.append(1, x, x)
    cache.commit(6)
    with pytest.raises(ContextOverflowError) as info:
        cache.append(0, x, x)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "12 tokens" in msg and "10 tokens" in msg and f"{cache.nbytes} bytes" in msg
    assert cache.filled(0) == 6  # nothing was written


def test_commit_and_reset():
    cache = KVCache(2, 1, 8, 10)
    x = np.ones((3, 1, 8), np.float32)
    cache.append(0, x, x)
    with pytest.raises(ValueError, match=r"layers \[1\] hold \[0\]"):
        cache.commit(3)
    cache.append(1, x, x)
    cache.commit(3)
    assert cache.length == 3
    cache.reset()
    assert cache.length == 0 and cache.filled(1) == 0


@pytest.mark.parametrize("isa", ISAS)
def test_store_rejects_bad_values(isa):
    hcemu.set_isa(isa)
    cache = KVCache(1, 2, 8, 10)
    ok = np.ones((1, 2, 8), np.float32)
    for poison in (np.nan, np.inf, -np.inf):
        bad = ok.copy()
        bad[0, 1, 3] = poison
        with pytest.raises(ValueError, match="NaN or infinity"):
            cache.append(0, bad, ok)
    with pytest.raises(ValueError, match="fp16 range"):
        cache.append(0, ok * 1e7, ok)
    assert cache.filled(0) == 0
    c16 = KVCache(1, 2, 8, 10, fmt="fp16")
    with pytest.raises(ValueError, match="65520"):
        c16.append(0, ok * 70000, ok)
    with pytest.raises(TypeError, match="float32.*float64"):
        cache.append(0, ok.astype(np.float64), ok.astype(np.float64))
    with pytest.raises(ValueError, match=r"expected \(t, 2, 8\)"):
        cache.append(0, np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="v has shape"):
        cache.append(0, ok, ok[:, :1])
    with pytest.raises(ValueError, match="layer 1 outside"):
        cache.append(1, ok, ok)


# ---- integer parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [1, 8, 16, 40, 64, 80, 128, 200])
def test_qk_exact_on_every_path(isa, hd):
    rng = np.random.default_rng(hd)
    n = 150
    q = rng.integers(-128, 128, hd, dtype=np.int8)
    k = rng.integers(-128, 128, (n, hd), dtype=np.int8)
    k[0] = -128
    k[1] = 127
    q[:1] = -128
    np.testing.assert_array_equal(_core.attn_qk_i8(q, k, isa), qk_ref(q, k))


def test_query_quantization_is_the_activation_rule():
    rng = np.random.default_rng(3)
    q = rand(rng, 4, 64)
    codes, scale = quantize_act_ref(q)
    assert np.abs(codes).max() == 127
    np.testing.assert_array_equal(scale, np.abs(q).max(-1) / np.float32(127))


# ---- attention ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(hkv=st.integers(1, 3), group=st.integers(1, 4), hd=st.sampled_from([8, 16, 24, 64, 80, 128]),
       n=st.integers(1, 200), t=st.integers(1, 4), fmt=st.sampled_from(["int8", "fp16"]),
       seed=st.integers(0, 2**31))
def test_attention_bit_exact_vs_oracle_on_every_path(hkv, group, hd, n, t, fmt, seed):
    rng = np.random.default_rng(seed)
    t = min(t, n)
    cache, _, _ = filled_cache(rng, 2, hkv, hd, n, fmt)
    q = rand(rng, t, hkv * group, hd, scale=2)
    start = n - t
    want = oracle(q, cache, 1, start)
    for name in ISAS:
        hcemu.set_isa(name)
        np.testing.assert_array_equal(attention(q, cache, 1, start), want, err_msg=name)


@pytest.mark.parametrize("fmt, tol", [("int8", 0.03), ("fp16", 2e-3)])
@pytest.mark.parametrize("heads", [(9, 3, 64), (32, 8, 128)])
def test_attention_close_to_float64(fmt, tol, heads):
    H, hkv, hd = heads
    rng = np.random.default_rng(4)
    n = 300
    cache, ks, vs = filled_cache(rng, 1, hkv, hd, n, fmt)
    q = rand(rng, 3, H, hd, scale=1.5)
    got = attention(q, cache, 0, n - 3)
    want = attention_float64(q, ks[0], vs[0], n - 3)
    assert np.abs(got - want).max() < tol
    # against the dequantized cache the only differences are q quantization and float rounding
    kd, vd = cache.keys_values(0)
    np.testing.assert_allclose(got, attention_float64(q, kd, vd, n - 3), atol=tol / 2)


def test_peaked_softmax_and_large_scores():
    rng = np.random.default_rng(5)
    cache, ks, vs = filled_cache(rng, 1, 1, 64, 130, scale=30)
    q = ks[0][-1:, :, :] * 3  # attends almost only to itself; scores in the hundreds
    got = attention(q, cache, 0, 129)
    np.testing.assert_allclose(got, attention_float64(q, ks[0], vs[0], 129), atol=0.03 * 30)
    np.testing.assert_array_equal(got, oracle(q, cache, 0, 129))


def test_prefill_chunk_equals_single_steps():
    rng = np.random.default_rng(6)
    hkv, H, hd, n = 3, 9, 64, 140
    for fmt in ("int8", "fp16"):
        cache, _, _ = filled_cache(rng, 1, hkv, hd, n, fmt)
        q = rand(rng, 70, H, hd)
        chunk = attention(q, cache, 0, n - 70)
        steps = np.concatenate([attention(q[i:i + 1], cache, 0, n - 70 + i) for i in range(70)])
        np.testing.assert_array_equal(chunk, steps)


def test_causal_mask_ignores_later_keys():
    rng = np.random.default_rng(7)
    hkv, H, hd = 2, 4, 32
    cache = KVCache(1, hkv, hd, 200)
    k, v = rand(rng, 100, hkv, hd), rand(rng, 100, hkv, hd)
    cache.append(0, k, v)
    q = rand(rng, 5, H, hd)
    before = attention(q, cache, 0, 50)  # queries at 50..54 see keys 0..54 only
    cache.append(0, rand(rng, 60, hkv, hd, scale=50), rand(rng, 60, hkv, hd, scale=50))
    cache.k_codes[0, :, 55:100] = 127  # and even overwriting keys 55.. changes nothing
    np.testing.assert_array_equal(attention(q, cache, 0, 50), before)
    np.testing.assert_allclose(before, attention_float64(q, k, v, 50), atol=0.03)


def test_gqa_heads_read_their_group():
    rng = np.random.default_rng(8)
    hkv, group, hd, n = 3, 4, 64, 90
    cache, ks, vs = filled_cache(rng, 1, hkv, hd, n)
    q = rand(rng, 2, hkv * group, hd)
    got = attention(q, cache, 0, n - 2).reshape(2, hkv * group, hd)
    for g in range(hkv):
        single = KVCache(1, 1, hd, n)
        single.append(0, ks[0][:, g:g + 1].copy(), vs[0][:, g:g + 1].copy())
        qg = q[:, g * group:(g + 1) * group].copy()
        np.testing.assert_array_equal(attention(qg, single, 0, n - 2).reshape(2, group, hd),
                                      got[:, g * group:(g + 1) * group])


def test_events_follow_docs_events_md():
    rng = np.random.default_rng(9)
    L, hkv, H, hd = 3, 2, 6, 16
    for fmt, b, s in (("int8", 1, 2), ("fp16", 2, 0)):
        ev = Events(L)
        cache = KVCache(L, hkv, hd, 64, fmt=fmt)
        per_token = 2 * hkv * (hd * b + s)
        t, start = 5, 0
        for step in range(3):  # a prefill of 5, then two decode steps
            for layer in range(L):
                cache.append(layer, rand(rng, t, hkv, hd), rand(rng, t, hkv, hd), events=ev)
                attention(rand(rng, t, H, hd), cache, layer, start, events=ev)
            cache.commit(t)
            start += t
            t = 1
        keys = sum(p + 1 for p in range(7))  # positions 0..6, each attending p + 1 keys
        for layer in range(L):
            r = ev.region(layer)
            assert r["sram_kv_bytes_written"] == 7 * per_token
            assert r["sram_kv_bytes_read"] == keys * per_token
            assert r["attn_macs"] == 2 * H * hd * keys
            assert r["vec_flops"] == 5 * H * keys
            assert r["vec_transcendentals"] == H * keys
        head = Events(L)
        attention(rand(rng, 1, H, hd), cache, 0, 6, events=head, region="head")
        assert head.region("head")["attn_macs"] == 2 * H * hd * 7 and head.region(0)["attn_macs"] == 0


def test_out_argument_and_empty_query():
    rng = np.random.default_rng(10)
    cache, _, _ = filled_cache(rng, 1, 1, 16, 10)
    q = rand(rng, 2, 2, 16)
    out = np.full((2, 32), np.nan, np.float32)
    assert attention(q, cache, 0, 8, out=out) is out
    np.testing.assert_array_equal(out, attention(q, cache, 0, 8))
    assert attention(np.zeros((0, 2, 16), np.float32), cache, 0, 10).shape == (0, 32)


def test_zero_query_averages_values():
    rng = np.random.default_rng(11)
    cache, _, _ = filled_cache(rng, 1, 1, 16, 70)
    got = attention(np.zeros((1, 1, 16), np.float32), cache, 0, 69)
    _, vd = cache.keys_values(0)
    np.testing.assert_allclose(got[0], vd[:, 0].mean(0), rtol=1e-5, atol=1e-6)


def test_attention_bad_inputs():
    rng = np.random.default_rng(12)
    cache, _, _ = filled_cache(rng, 2, 2, 16, 10)
    q = rand(rng, 1, 4, 16)
    with pytest.raises(TypeError, match="attention: q .*float32.*float64"):
        attention(q.astype(np.float64), cache, 0, 9)
    with pytest.raises(ValueError, match="C-contiguous"):
        attention(rand(rng, 1, 4, 32)[:, :, ::2], cache, 0, 9)
    with pytest.raises(ValueError, match=r"q has shape \(1, 4, 8\)"):
        attention(rand(rng, 1, 4, 8), cache, 0, 9)
    with pytest.raises(ValueError, match="multiple of the cache's 2 kv heads"):
        attention(rand(rng, 1, 3, 16), cache, 0, 9)
    with pytest.raises(ValueError, match=r"positions \[10, 11\).*holds 10 tokens"):
        attention(q, cache, 0, 10)
    with pytest.raises(ValueError, match=r"positions \[-1, 0\)"):
        attention(q, cache, 0, -1)
    with pytest.raises(ValueError, match="layer 2 outside"):
        attention(q, cache, 2, 0)
    with pytest.raises(ValueError, match=r"out has shape \(1, 8\), expected \(1, 64\)"):
        attention(q, cache, 0, 9, out=np.zeros((1, 8), np.float32))
    bad = q.copy()
    bad[0, 2, 5] = np.inf
    with pytest.raises(ValueError, match="finite"):
        attention(bad, cache, 0, 9)
    ones = KVCache(1, 2, 16, 4)
    ones.append(0, np.ones((4, 2, 16), np.float32), np.ones((4, 2, 16), np.float32))
    with pytest.raises(ValueError, match="float32 range"):  # finite q, q.k overflows float32
        attention(np.full((1, 4, 16), 1e38, np.float32), ones, 0, 3)


def test_rollback_drops_uncommitted_tokens():
    rng = np.random.default_rng(13)
    cache, _, _ = filled_cache(rng, 2, 1, 16, 5, capacity=8)
    cache.append(0, rand(rng, 3, 1, 16), rand(rng, 3, 1, 16))
    assert cache.filled(0) == 8 and cache.filled(1) == 5
    cache.rollback()
    assert cache.filled(0) == 5 and cache.length == 5
    with pytest.raises(ValueError, match=r"positions \[5, 6\).*holds 5 tokens"):
        attention(rand(rng, 1, 1, 16), cache, 0, 5)
    with pytest.raises(ValueError, match="layer 2 outside"):
        cache.filled(2)
