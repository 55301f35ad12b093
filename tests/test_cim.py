"""CIM kernels vs the numpy oracle: exact int32 block sums and bit-identical float32 outputs on every
ISA path this machine has, every format and group, odd shapes and adversarial values."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

import hcemu
from hcemu import _core
from hcemu.kernels import cim, cim_ref
from hcemu.events import Events
from hcemu.formats import WeightFormat
from hcemu.layout import pack

ISAS = hcemu.capabilities()["supported"]
FORMATS = ([WeightFormat(8, g) for g in (32, 64, 128)] + [WeightFormat(8, 0)]
           + [WeightFormat(4, g) for g in (32, 64, 128)]
           + [WeightFormat(4, g, asymmetric=True) for g in (32, 64, 128)])
FMT_IDS = [f.name for f in FORMATS]


@contextlib.contextmanager
def isa(name):
    before = hcemu.capabilities()["active"]
    hcemu.set_isa(name)
    try:
        yield
    finally:
        hcemu.set_isa(before)


def code_range(fmt):
    if fmt.asymmetric:
        return 0, 15
    return (-8, 7) if fmt.bits == 4 else (-128, 127)


def random_fp16(rng, shape):
    """fp16 scales over the whole finite range (subnormals and large values included), random signs."""
    bits = rng.integers(0, 0x7C00, size=shape, dtype=np.uint16)  # finite magnitudes
    bits |= (rng.integers(0, 2, size=shape, dtype=np.uint16) << 15)
    # mostly ordinary magnitudes, but keep a share of extreme bit patterns
    ordinary = rng.standard_normal(shape).astype(np.float16).view(np.uint16)
    pick = rng.random(shape) < 0.8
    return np.where(pick, ordinary, bits).view(np.float16)


def make_weights(fmt, n, k, rng, codes=None):
    lo, hi = code_range(fmt)
    q = rng.integers(lo, hi + 1, size=(n, k)) if codes is None else np.broadcast_to(codes, (n, k))
    shape = (n,) if fmt.per_channel else (n, k // fmt.group)
    scales = random_fp16(rng, shape)
    offsets = random_fp16(rng, shape) if fmt.asymmetric else None
    return pack(q, scales, fmt, offsets)


def run_all_paths(q, s, pw, threads=(1,)):
    """Check every ISA path (and thread count) against the oracle; returns the oracle output."""
    ref = cim_ref.cim_matmul_ref(q, s, pw)
    D, _ = cim_ref.block_sums_ref(q, pw)
    m = q.shape[0]
    for name in ISAS:
        for th in threads:
            dots = np.full((m, pw.n_row_tiles * 16, pw.n_blocks), 12345, np.int32)
            y = _core.cim_matmul(q, s, pw, n_threads=th, isa=name, dots=dots)
            np.testing.assert_array_equal(dots, D, err_msg=f"int32 block sums, {pw.fmt.name} {name} t={th}")
            np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32),
                                          err_msg=f"float32 bits, {pw.fmt.name} {name} t={th}")
            with isa(name):
                y2 = cim.cim_matmul(q, s, pw, n_threads=th)
            np.testing.assert_array_equal(y2.view(np.int32), ref.view(np.int32))
    return ref


def act_groups(fmt, k):
    out = {k}
    for g in (fmt.tile_k, 2 * fmt.tile_k, 4 * fmt.tile_k):
        if k % g == 0 and g % fmt.tile_k == 0:
            out.add(g)
    return sorted(out)


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("n,k,m", [(1, 128, 1), (17, 256, 3), (16, 128, 8), (33, 384, 9), (5, 512, 64), (40, 128, 65)])
def test_random_matches_oracle(fmt, n, k, m):
    rng = np.random.default_rng(n * 1000 + k + m)
    pw = make_weights(fmt, n, k, rng)
    for ag in act_groups(fmt, k):
        q = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        s = (rng.random((m, k // ag)) * 0.1).astype(np.float32)
        run_all_paths(q, s, pw, threads=(1, 2))
        # without a -128 (as the quantizer's output): the AVX2 int8 kernel's |w| x sign(x, w) form
        run_all_paths(np.maximum(q, -127), s, pw, threads=(1,))


@pytest.mark.parametrize("fmt", [WeightFormat(8, 32), WeightFormat(8, 0)], ids=["int8_g32", "int8_ch"])
@pytest.mark.parametrize("n,k", [(16, 96), (32, 128), (33, 96), (48, 128), (100, 96), (161, 128), (520, 96),
                                 (6200, 2048)])
def test_one_token_row_tile_streams(fmt, n, k):
    """M = 1 int8 reads several row tiles at once (tiles_ms_vnni): tile counts that do and do not
    divide among the streams and threads, against the oracle on every path (no dots hook, which
    takes another path).  Only the largest shape (> 12 MiB) gets 3 threads
    (HC_CIM_BYTES_PER_THREAD); the others run on fewer, with the same results."""
    rng = np.random.default_rng(n)
    pw = make_weights(fmt, n, k, rng)
    q = rng.integers(-128, 128, size=(1, k), dtype=np.int8)
    s = (rng.random((1, k // 32)) * 0.1).astype(np.float32)
    ref = cim_ref.cim_matmul_ref(q, s, pw)
    for name in ISAS:
        with isa(name):
            for th in (1, 2, 3):
                y = cim.cim_matmul(q, s, pw, n_threads=th)
                np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32),
                                              err_msg=f"{fmt.name} n={n} {name} t={th}")


@pytest.mark.parametrize("k", [1, 31, 33, 100, 96, 160])
def test_per_channel_k_not_multiple_of_tile(k):
    rng = np.random.default_rng(k)
    fmt = WeightFormat(8, 0)
    pw = make_weights(fmt, 19, k, rng)
    for m in (1, 5):
        q = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        s = rng.random((m, 1)).astype(np.float32)
        run_all_paths(q, s, pw, threads=(1, 2))


@pytest.mark.parametrize("fmt", FORMATS, ids=FMT_IDS)
@pytest.mark.parametrize("extreme", ["low", "low127", "high", "mixed"])
def test_adversarial_extremes(fmt, extreme):
    """All -128 activations with the lowest codes (and all 127 / highest): exact, no saturation.
    "low127" (-127 against the lowest codes) is the largest pair sum of the AVX2 int8 sign trick
    (2 * 128 * 127), which runs only when no activation is -128."""
    rng = np.random.default_rng(7)
    lo, hi = code_range(fmt)
    n, k, m = 33, 256, 9
    if extreme == "low":
        codes, act = lo, -128
    elif extreme == "low127":
        codes, act = lo, -127
    elif extreme == "high":
        codes, act = hi, 127
    else:
        codes, act = np.where(np.arange(k) % 2, lo, hi), -128
    pw = make_weights(fmt, n, k, rng, codes=np.asarray(codes))
    q = np.full((m, k), act, np.int8)
    s = np.ones((m, 1), np.float32)
    ref = run_all_paths(q, s, pw, threads=(1, 2))
    D, _ = cim_ref.block_sums_ref(q, pw)
    if extreme != "mixed":
        assert np.all(D[:, :n] == int(np.asarray(codes).flat[0]) * act * fmt.tile_k)
    assert np.isfinite(ref).all() or not np.isfinite(pw.scales.astype(np.float32)).all()


def test_threads_identical_and_many_threads():
    rng = np.random.default_rng(3)
    fmt = WeightFormat(4, 32, asymmetric=True)
    pw = make_weights(fmt, 100, 256, rng)
    q = rng.integers(-127, 128, size=(4, 256), dtype=np.int8)
    s = rng.random((4, 8)).astype(np.float32)
    base = cim.cim_matmul(q, s, pw, n_threads=1)
    for th in (2, 3, 7, 256):  # more threads than row tiles is allowed
        np.testing.assert_array_equal(cim.cim_matmul(q, s, pw, n_threads=th).view(np.int32), base.view(np.int32))


@pytest.mark.parametrize("isa_name", hcemu.capabilities()["supported"])
@pytest.mark.parametrize("group", [32, 64, 128, 256, 9, 250])
def test_quantizer_matches_oracle(group, isa_name):
    rng = np.random.default_rng(group)
    k = 256 if 256 % group == 0 else 3 * group  # odd groups exercise the SIMD tails
    x = (rng.standard_normal((7, k)) * rng.choice([1e-3, 1.0, 1e4], size=(7, 1))).astype(np.float32)
    x[0, :group] = 0.0                            # an all-zero group: scale 0, codes 0
    x[1, :group] = np.float32(1e-41)              # subnormal amax: 127/amax overflows to inf
    x[1, 1] = 0.0
    x[2, :group] = np.float32(3e38)               # huge values
    x[3, :4] = [0.5, -0.5, 1.5, 2.5]              # ties
    x[4, :group] = np.float32(1e-41) * np.arange(group)  # subnormals: 0 * inf -> code 0
    with isa(isa_name):
        q, s = cim.quantize_activations(x, group)
    qr, sr = cim_ref.quantize_activations_ref(x, group)
    np.testing.assert_array_equal(q, qr)
    np.testing.assert_array_equal(s.view(np.int32), sr.view(np.int32))
    assert q.min() >= -127 and q.max() <= 127
    assert q[1, 1] == 0


@pytest.mark.parametrize("isa_name", hcemu.capabilities()["supported"])
def test_quantizer_round_half_even(isa_name):
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 63.5, -63.5]], np.float32)
    with isa(isa_name):
        q, s = cim.quantize_activations(x, 8)
    assert s[0, 0] == np.float32(1.0)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, 64, -64]]


@pytest.mark.parametrize("fmt", [WeightFormat(8, 32), WeightFormat(8, 0), WeightFormat(4, 64), WeightFormat(4, 32, True)],
                         ids=lambda f: f.name)
@pytest.mark.parametrize("per_token", [False, True])
def test_linear_fused_matches_oracle(fmt, per_token):
    rng = np.random.default_rng(11)
    n, k = 45, 256
    pw = make_weights(fmt, n, k, rng)
    ag = k if per_token else fmt.tile_k
    for m in (1, 8, 13):
        x = rng.standard_normal((m, k)).astype(np.float32)
        ref = cim_ref.cim_linear_ref(x, ag, pw)
        for name in ISAS:
            with isa(name):
                y = cim.cim_linear(x, ag, pw)
                q, s = cim.quantize_activations(x, ag)
                y2 = cim.cim_matmul(q, s, pw)
            np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32))
            np.testing.assert_array_equal(y2.view(np.int32), ref.view(np.int32))


def test_out_parameter_and_empty_batch():
    rng = np.random.default_rng(5)
    pw = make_weights(WeightFormat(8, 32), 20, 64, rng)
    q = rng.integers(-127, 128, size=(3, 64), dtype=np.int8)
    s = rng.random((3, 2)).astype(np.float32)
    out = np.empty((3, 20), np.float32)
    assert cim.cim_matmul(q, s, pw, out=out) is out
    np.testing.assert_array_equal(out, cim_ref.cim_matmul_ref(q, s, pw))
    y = cim.cim_matmul(q[:0], s[:0], pw)
    assert y.shape == (0, 20)


def test_events_counts():
    rng = np.random.default_rng(9)
    for fmt in (WeightFormat(8, 32), WeightFormat(8, 0), WeightFormat(4, 32, True), WeightFormat(4, 64)):
        pw = make_weights(fmt, 40, 128 if not fmt.per_channel else 100, rng)
        ev = Events(3)
        k = pw.k
        q = rng.integers(-127, 128, size=(5, k), dtype=np.int8)
        s = rng.random((5, 1)).astype(np.float32)
        cim.cim_matmul(q, s, pw, events=ev, region=1)
        cim.cim_linear(rng.standard_normal((2, k)).astype(np.float32), k, pw, events=ev, region="head")
        want5, want2 = cim_ref.event_counts_ref(pw, 5), cim_ref.event_counts_ref(pw, 2)
        for name, v in want5.items():
            assert ev.region(1)[name] == v
        for name, v in want2.items():
            assert ev.region("head")[name] == v
        assert ev.region(0) == Events(3).region(0)
        # the formula of docs/events.md, spelled out for one case
        if fmt == WeightFormat(8, 32):
            assert ev.region(1)["rom_code_bits"] == 3 * 4 * 512 * 8 * 5
            assert ev.region(1)["rom_meta_bits"] == 3 * 4 * 16 * 16 * 5
            assert ev.region(1)["macs_w8"] == 40 * 128 * 5


def test_prepared_cache_follows_object_lifetime():
    rng = np.random.default_rng(1)
    pw = make_weights(WeightFormat(8, 32), 16, 64, rng)
    cw = cim.prepare(pw)
    assert cim.prepare(pw) is cw
    assert cim.prepare(cw) is cw
    q = rng.integers(-127, 128, size=(1, 64), dtype=np.int8)
    s = np.ones((1, 1), np.float32)
    np.testing.assert_array_equal(cim.cim_matmul(q, s, cw), cim.cim_matmul(q, s, pw))
    size = len(_core._PREPARED) if hasattr(_core, "_PREPARED") else None
    del pw
    import gc

    gc.collect()
    if size is not None:
        assert len(_core._PREPARED) == size - 1


# ---- bad inputs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(2)
    pw = make_weights(WeightFormat(8, 32), 20, 128, rng)
    q = rng.integers(-127, 128, size=(2, 128), dtype=np.int8)
    s = np.ones((2, 4), np.float32)
    return pw, q, s


def test_bad_dtype(small):
    pw, q, s = small
    with pytest.raises(TypeError, match="int8"):
        cim.cim_matmul(q.astype(np.int16), s, pw)
    with pytest.raises(TypeError, match="float32"):
        cim.cim_matmul(q, s.astype(np.float64), pw)
    with pytest.raises(TypeError, match="float32"):
        cim.cim_linear(q.astype(np.float64), 32, pw)
    with pytest.raises(TypeError, match="float32"):
        cim.quantize_activations(q.astype(np.float64), 32)
    with pytest.raises(TypeError):
        cim.quantize_activations([[1.0, 2.0]], 2)
    with pytest.raises(TypeError, match="float32"):
        cim.cim_matmul(q, s, pw, out=np.empty((2, 20), np.float64))


def test_non_contiguous(small):
    pw, q, s = small
    wide = np.zeros((2, 256), np.int8)
    with pytest.raises(ValueError, match="C-contiguous"):
        cim.cim_matmul(wide[:, ::2], s, pw)
    with pytest.raises(ValueError, match="C-contiguous"):
        cim.cim_linear(np.zeros((2, 256), np.float32)[:, ::2], 32, pw)
    with pytest.raises(ValueError, match="C-contiguous"):
        cim.quantize_activations(np.zeros((256, 2), np.float32).T, 32)


def test_mismatched_shapes(small):
    pw, q, s = small
    with pytest.raises(ValueError, match="K=64.*K=128"):
        cim.cim_matmul(q[:, :64].copy(), s[:, :2].copy(), pw)
    with pytest.raises(ValueError, match="3 rows for 2 tokens"):
        cim.cim_matmul(q, np.ones((3, 4), np.float32), pw)
    with pytest.raises(ValueError, match=r"out must be \(2, 20\)"):
        cim.cim_matmul(q, s, pw, out=np.empty((2, 21), np.float32))
    with pytest.raises(ValueError, match="K=96"):
        cim.cim_linear(np.zeros((1, 96), np.float32), 32, pw)
    with pytest.raises(ValueError, match="2-D"):
        cim.quantize_activations(np.zeros(5, np.float32), 5)


def test_bad_groups(small):
    pw, q, s = small
    with pytest.raises(ValueError, match="does not divide K=128"):
        cim.quantize_activations(np.zeros((1, 128), np.float32), 48)
    with pytest.raises(ValueError, match="does not divide K=128"):
        cim.cim_linear(np.zeros((1, 128), np.float32), 48, pw)
    with pytest.raises(ValueError, match="3 activation scales"):
        cim.cim_matmul(q, np.ones((2, 3), np.float32), pw)
    # activation group 16 is not a multiple of tile width 32 (and not K)
    with pytest.raises(ValueError, match="multiple of the weight tile width 32"):
        cim.cim_matmul(q, np.ones((2, 8), np.float32), pw)
    with pytest.raises(ValueError, match="multiple of the weight tile width 32"):
        cim.cim_linear(np.zeros((1, 128), np.float32), 16, pw)


def test_bad_threads(small):
    pw, q, s = small
    for th in (0, -1, 257):
        with pytest.raises(ValueError, match="n_threads must be in 1..256"):
            cim.cim_matmul(q, s, pw, n_threads=th)
        with pytest.raises(ValueError, match="n_threads"):
            cim.cim_linear(np.zeros((1, 128), np.float32), 32, pw, n_threads=th)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_activations(small, bad):
    pw, q, s = small
    x = np.ones((2, 128), np.float32)
    x[1, 77] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        cim.quantize_activations(x, 32)
    with pytest.raises(ValueError, match="NaN or infinity"):
        cim.cim_linear(x, 32, pw)
    with pytest.raises(ValueError, match="NaN or infinity"):
        cim_ref.quantize_activations_ref(x, 32)


def test_bad_packed_weights(small):
    pw, q, s = small
    from dataclasses import replace

    with pytest.raises(ValueError, match="codes"):
        cim.prepare(replace(pw, codes=pw.codes[:1].copy()))
    with pytest.raises(ValueError, match="scales"):
        cim.prepare(replace(pw, scales=pw.scales.astype(np.float32)))
    with pytest.raises(ValueError, match="offsets"):
        cim.prepare(replace(pw, fmt=WeightFormat(4, 32, asymmetric=True), codes=pw.codes[:, :, :256].copy()))


def test_capabilities_report_openmp():
    caps = hcemu.capabilities()
    assert caps["openmp"] == cim.OPENMP
    assert "scalar" in caps["supported"] and caps["active"] in caps["supported"]


@pytest.mark.parametrize("name", ISAS)
def test_env_forcing_in_subprocess(name):
    code = ("import hcemu, numpy as np; from hcemu.kernels import cim; "
            "print(hcemu.capabilities()['active'])")
    env = dict(os.environ, HCEMU_ISA=name, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(hcemu.__file__)))] + sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


def test_env_forcing_unknown_fails():
    env = dict(os.environ, HCEMU_ISA="sse9", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(hcemu.__file__)))] + sys.path))
    out = subprocess.run([sys.executable, "-c", "import hcemu"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "sse9" in out.stderr


def test_stream_read_checksum():
    """The bandwidth peer reads every byte: its checksum is the wrapped sum of the 64-bit words."""
    rng = np.random.default_rng(4)
    # the small buffer runs on one thread (HC_CIM_BYTES_PER_THREAD); the ~13 MiB one takes the
    # two-thread split (1 MiB chunks from both ends, meeting in a partial chunk)
    for size in (64 * 4 * 2 * 1001, 128 * (13 * 8192 + 3)):
        buf = rng.integers(0, 256, size=size, dtype=np.uint8)
        want = int(buf.view(np.uint64).sum(dtype=np.uint64))
        for name in ISAS:
            with isa(name):
                assert _core.stream_read(buf, 1) == want
                assert _core.stream_read(buf, 2) == want


def test_read_only_weights_and_inputs():
    """ROM images are memory-mapped read-only: the kernels take const views."""
    from dataclasses import replace

    rng = np.random.default_rng(8)
    pw = make_weights(WeightFormat(4, 32, asymmetric=True), 20, 64, rng)
    arrays = {}
    for name in ("codes", "scales", "offsets"):
        a = getattr(pw, name).copy()
        a.flags.writeable = False
        arrays[name] = a
    ro = replace(pw, **arrays)
    q = rng.integers(-127, 128, size=(2, 64), dtype=np.int8)
    s = rng.random((2, 2)).astype(np.float32)
    q.flags.writeable = False
    s.flags.writeable = False
    np.testing.assert_array_equal(cim.cim_matmul(q, s, ro), cim_ref.cim_matmul_ref(q, s, pw))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x.flags.writeable = False
    np.testing.assert_array_equal(cim.cim_linear(x, 32, ro), cim_ref.cim_linear_ref(x, 32, pw))
    with pytest.raises(ValueError, match="writeable"):
        cim.cim_matmul(q, s, ro, out=_readonly(np.empty((2, 20), np.float32)))


def _readonly(a):
    a.flags.writeable = False
    return a


def test_linear_large_batch_uses_heap_scratch():
    """m * k beyond the one-token stack buffer of hc_cim_linear (32 KiB): the heap path."""
    rng = np.random.default_rng(12)
    pw = make_weights(WeightFormat(8, 32), 24, 1024, rng)
    x = rng.standard_normal((70, 1024)).astype(np.float32)
    for ag in (32, 1024):
        np.testing.assert_array_equal(cim.cim_linear(x, ag, pw, n_threads=2).view(np.int32),
                                      cim_ref.cim_linear_ref(x, ag, pw).view(np.int32))
