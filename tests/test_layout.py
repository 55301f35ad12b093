"""The ROM tile layout (hcemu.layout): round trips, row reads, stacking, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hcemu.kernels import cim
from hcemu.formats import WeightFormat
from hcemu.layout import dequantize, dequantize_rows, pack, stack_rows, unpack_codes, unpack_meta

FORMATS = [WeightFormat(8, 32), WeightFormat(8, 0), WeightFormat(4, 64), WeightFormat(4, 32, True),
           WeightFormat(4, 128)]


def random_matrix(fmt, n, k, rng):
    lo, hi = (0, 15) if fmt.asymmetric else ((-8, 7) if fmt.bits == 4 else (-128, 127))
    q = rng.integers(lo, hi + 1, (n, k))
    shape = (n,) if fmt.per_channel else (n, k // fmt.group)
    s = rng.uniform(0.01, 1, shape).astype(np.float16)
    return q, s, (-(s * 4) if fmt.asymmetric else None)


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(1, 50), blocks=st.integers(1, 5), seed=st.integers(0, 99))
def test_pack_round_trip(fmt, n, blocks, seed):
    rng = np.random.default_rng(seed)
    k = blocks * fmt.tile_k - (seed % 7 if fmt.per_channel else 0)  # per channel: K need not fill a tile
    q, s, o = random_matrix(fmt, n, k, rng)
    pw = pack(q, s, fmt, o)
    np.testing.assert_array_equal(unpack_codes(pw), q)
    np.testing.assert_array_equal(unpack_meta(pw), s)
    w = dequantize(pw)
    rows = rng.integers(0, n, 3)
    np.testing.assert_array_equal(dequantize_rows(pw, rows), w[rows])


def test_int4_nibble_order_and_sign():
    """Byte j of a row's 4-byte group: input 8kq+j in the low nibble, 8kq+4+j in the high one."""
    fmt = WeightFormat(4, 32)
    q = np.zeros((16, 32), np.int64)
    q[0, 0], q[0, 4], q[1, 1] = -8, 7, -1
    pw = pack(q, np.ones((16, 1), np.float16), fmt)
    line = pw.codes[0, 0]
    assert line[0] == (0x8 | (0x7 << 4))   # row 0, j=0: q=-8 low (1000b), q=7 high
    assert line[4 + 1] == 0xF              # row 1, j=1: q=-1 -> 1111b
    assert unpack_codes(pw)[0, 0] == -8


def test_stack_rows_equals_separate_products():
    rng = np.random.default_rng(3)
    fmt = WeightFormat(4, 32, True)

    def part(n):
        q, s, o = random_matrix(fmt, n, 64, rng)
        return pack(q, s, fmt, o)
    parts = [part(n) for n in (32, 16, 48)]
    stacked = stack_rows(parts)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    y = cim.cim_linear(x, 32, stacked)
    sep = np.concatenate([cim.cim_linear(x, 32, p) for p in parts], axis=1)
    np.testing.assert_array_equal(y.view(np.int32), sep.view(np.int32))
    assert stack_rows(parts + [part(5)]) is None   # 5 rows do not fill a tile


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: pack(np.zeros((4, 30), np.int8), np.ones((4, 1), np.float16), WeightFormat(8, 32)), ValueError, "does not divide"),
    (lambda: pack(np.full((4, 32), 8), np.ones((4, 1), np.float16), WeightFormat(4, 32)), ValueError, "out of range"),
    (lambda: pack(np.zeros((4, 32), np.float32), np.ones((4, 1), np.float16), WeightFormat(8, 32)), TypeError, "integers"),
    (lambda: pack(np.zeros((4, 32), np.int8), np.ones((4, 2), np.float16), WeightFormat(8, 32)), ValueError, "shape"),
    (lambda: pack(np.zeros((4, 32), np.int8), np.ones((4, 1), np.float16), WeightFormat(4, 32, True)), ValueError, "offsets"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()
