"""The streaming attention driver's own corners, bit-exact against the oracle (hcemu.kernels.attention_ref)
on every ISA path: prefill chunks longer than the driver's 64-query chunk, GQA groups wider than the
4 rows processed together, head_dim tails of every kernel, scratch beyond the per-thread buffer,
calls from several threads at once, and queries whose 127/amax overflows float32."""
import threading

import numpy as np
import pytest

import hcemu
from hcemu import _core
from hcemu.kernels.attention import ATTN_BLOCK, KVCache, attention
from hcemu.kernels.attention_ref import attention_ref

ISAS = _core.isa_supported()


pytestmark = pytest.mark.usefixtures("restore_isa")


def filled(rng, hkv, hd, n, fmt, scale=1.0):
    cache = KVCache(1, hkv, hd, n + 3, fmt=fmt)
    cache.append(0, (rng.standard_normal((n, hkv, hd)) * scale).astype(np.float32),
                 (rng.standard_normal((n, hkv, hd)) * scale).astype(np.float32))
    cache.commit(n)
    return cache


def oracle(q, cache, start):
    if cache.fmt == "int8":
        return attention_ref(q, cache.k_codes[0], cache.v_codes[0], start,
                             k_scales=cache.k_scales[0].view(np.float16),
                             v_scales=cache.v_scales[0].view(np.float16))
    return attention_ref(q, cache.k[0].view(np.float16), cache.v[0].view(np.float16), start)


def check_every_path(q, cache, start):
    want = oracle(q, cache, start)
    for name in ISAS:
        hcemu.set_isa(name)
        np.testing.assert_array_equal(attention(q, cache, 0, start), want, err_msg=name)
    return want


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("hkv, group, hd, t, start", [
    (1, 1, 64, 150, 7),     # three query chunks, one head
    (2, 5, 24, 70, 0),      # group of 5 = rows 4 + 1; hd tail below 64 and 16-aligned
    (1, 8, 72, 66, 61),     # group of 8 = 4 + 4; hd = 64 + 8
    (3, 3, 136, 65, 130),   # SmolLM2 group; hd = 2 * 64 + 8; chunk boundary at 64 queries
    (1, 2, 1, 20, 190),     # hd = 1
])
def test_prefill_chunks_bit_exact(fmt, hkv, group, hd, t, start):
    rng = np.random.default_rng(hd * 1000 + t)
    cache = filled(rng, hkv, hd, start + t, fmt)
    q = (rng.standard_normal((t, hkv * group, hd)) * 2).astype(np.float32)
    want = check_every_path(q, cache, start)
    # a chunk gives exactly the outputs of single-query calls
    singles = np.concatenate([attention(q[i:i + 1], cache, 0, start + i) for i in (0, t // 2, t - 1)])
    np.testing.assert_array_equal(singles, want[[0, t // 2, t - 1]])


def test_block_edges_every_path():
    """Contexts ending exactly on, one before and one after a block boundary."""
    rng = np.random.default_rng(1)
    for n in (ATTN_BLOCK - 1, ATTN_BLOCK, ATTN_BLOCK + 1, 2 * ATTN_BLOCK, 3 * ATTN_BLOCK + 17):
        for fmt in ("int8", "fp16"):
            cache = filled(rng, 3, 64, n, fmt)
            check_every_path(rng.standard_normal((1, 9, 64)).astype(np.float32), cache, n - 1)
            check_every_path(rng.standard_normal((min(n, 40), 9, 64)).astype(np.float32), cache,
                             n - min(n, 40))


def test_large_scratch_every_path():
    """Scratch beyond the 4 MiB a thread keeps between calls (its own allocation, then freed)."""
    rng = np.random.default_rng(2)
    t, hd = 64, 2048  # row state alone: 64 queries * 4 heads * 2048 * 4 bytes = 2 MiB, q codes 0.5 MiB
    cache = filled(rng, 2, hd, t + 5, "int8")
    q = rng.standard_normal((t, 8, hd)).astype(np.float32)
    check_every_path(q, cache, 5)


def test_tiny_query_every_path():
    """127/amax overflows float32 for amax below ~1e-36: codes follow the oracle (0 * inf -> 0)."""
    rng = np.random.default_rng(3)
    cache = filled(rng, 1, 16, 20, "int8")
    q = rng.standard_normal((2, 2, 16)).astype(np.float32)
    q[0, 0] *= np.float32(1e-38)
    q[0, 0, :3] = 0.0
    q[1, 1] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        check_every_path(q, cache, 18)


def test_threads_share_nothing():
    """Calls from several threads at once (the GIL is released) give the single-thread bits."""
    rng = np.random.default_rng(4)
    caches = [filled(rng, 3, 64, 200 + 30 * i, "int8") for i in range(4)]
    qs = [rng.standard_normal((1 + 20 * (i % 2), 9, 64)).astype(np.float32) for i in range(4)]
    starts = [c.length - q.shape[0] for c, q in zip(caches, qs)]
    want = [attention(q, c, 0, s) for q, c, s in zip(qs, caches, starts)]
    got = [[] for _ in range(4)]

    def work(i):
        for _ in range(50):
            got[i].append(attention(qs[i], caches[i], 0, starts[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(4):
        for out in got[i]:
            np.testing.assert_array_equal(out, want[i])


def test_unaligned_and_non_ndarray_query():
    """The wrapper's fast path takes aligned float32 ndarrays; other buffers go the typed-memoryview
    way and give the same bits (a misaligned array, a memoryview of q)."""
    rng = np.random.default_rng(5)
    cache = filled(rng, 3, 64, 100, "int8")
    q = rng.standard_normal((5, 9, 64)).astype(np.float32)
    raw = bytearray(q.nbytes + 1)
    qm = np.frombuffer(raw, np.float32, count=q.size, offset=1).reshape(q.shape)
    qm[...] = q
    assert not qm.flags.aligned
    want = oracle(q, cache, 95)
    for name in ISAS:
        hcemu.set_isa(name)
        np.testing.assert_array_equal(attention(qm, cache, 0, 95), want, err_msg=name)
        np.testing.assert_array_equal(attention(memoryview(q), cache, 0, 95), want, err_msg=name)
        out = np.zeros((5, 9 * 64), np.float32)
        assert attention(q, cache, 0, 95, out=memoryview(out)) is not None
        np.testing.assert_array_equal(out, want, err_msg=name)
