"""Property test: random shapes, formats, token counts and activation groups, every ISA path,
bit-identical to the numpy oracle."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

import hcemu
from hcemu import _core
from hcemu.kernels import cim_ref
from hcemu.formats import WeightFormat
from hcemu.layout import pack

ISAS = hcemu.capabilities()["supported"]
FORMATS = ([WeightFormat(8, g) for g in (32, 64, 128)] + [WeightFormat(8, 0)]
           + [WeightFormat(4, g, asymmetric=a) for g in (32, 64, 128) for a in (False, True)])


@st.composite
def problems(draw):
    fmt = draw(st.sampled_from(FORMATS))
    n = draw(st.integers(1, 70))
    if fmt.per_channel:
        k = draw(st.integers(1, 300))
    else:
        k = fmt.group * draw(st.integers(1, 6))
    m = draw(st.integers(1, 70))
    groups = [k] + [g for g in (fmt.tile_k, 2 * fmt.tile_k, 3 * fmt.tile_k) if k % g == 0]
    ag = draw(st.sampled_from(groups))
    seed = draw(st.integers(0, 2**32 - 1))
    threads = draw(st.sampled_from([1, 2]))
    return fmt, n, k, m, ag, seed, threads


@settings(max_examples=60, deadline=None)
@given(problems())
def test_any_shape_matches_oracle(problem):
    fmt, n, k, m, ag, seed, threads = problem
    rng = np.random.default_rng(seed)
    lo, hi = (0, 15) if fmt.asymmetric else ((-8, 7) if fmt.bits == 4 else (-128, 127))
    shape = (n,) if fmt.per_channel else (n, k // fmt.group)
    pw = pack(rng.integers(lo, hi + 1, size=(n, k)), rng.standard_normal(shape).astype(np.float16), fmt,
              rng.standard_normal(shape).astype(np.float16) if fmt.asymmetric else None)
    q = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    if seed % 2:  # no -128: the AVX2 int8 kernel's sign form (a -128 takes its sign-extending form)
        q = np.maximum(q, -127)
    s = rng.random((m, k // ag)).astype(np.float32)
    ref = cim_ref.cim_matmul_ref(q, s, pw)
    D, _ = cim_ref.block_sums_ref(q, pw)
    for name in ISAS:
        dots = np.zeros((m, pw.n_row_tiles * 16, pw.n_blocks), np.int32)
        y = _core.cim_matmul(q, s, pw, n_threads=threads, isa=name, dots=dots)
        assert np.array_equal(dots, D), (fmt.name, name)
        assert np.array_equal(y.view(np.int32), ref.view(np.int32)), (fmt.name, name)
