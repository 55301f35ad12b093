"""The LoRA side-path kernel (csrc/hc_lora.c) against its numpy oracle, bit for bit, on every ISA path."""
import numpy as np
import pytest

import hcemu
from hcemu.events import FIELDS, adapter_counts
from hcemu.formats import adapter_sram_bytes, adapter_weight_format
from hcemu.kernels.cim_ref import quantize_activations_ref
from hcemu.kernels.lora import CimAdapter, adapter_apply
from hcemu.kernels.lora_ref import adapter_apply_ref
from hcemu.rom.quantize import quantize_matrix

ISAS = hcemu.capabilities()["supported"]


def make(fmt, n, k, r, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    b = (rng.standard_normal((n, r)) * scale).astype(np.float32)
    if fmt == "int8":
        return quantize_matrix(a, adapter_weight_format(k)), quantize_matrix(b, adapter_weight_format(r))
    return a.astype(np.float16), b.astype(np.float16)


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("n, k, r, m, group", [
    (48, 64, 16, 1, 32), (48, 64, 16, 3, 64), (17, 96, 8, 70, 32), (64, 128, 32, 2, 128),
    (35, 64, 48, 5, 32), (16, 40, 1, 4, 40), (576, 576, 64, 1, 32), (200, 1536, 16, 65, 1536)])
def test_adapter_apply_equals_the_oracle(isa_name, fmt, n, k, r, m, group, restore_isa):
    hcemu.set_isa(isa_name)
    a, b = make(fmt, n, k, r, seed=n + k + r)
    ca = CimAdapter(a, b)
    assert (ca.n, ca.k, ca.rank, ca.fmt) == (n, k, r, fmt)
    rng = np.random.default_rng(m)
    x = (rng.standard_normal((m, k)) * 2).astype(np.float32)
    q, s = quantize_activations_ref(x, group)
    col = 3
    y0 = rng.standard_normal((m, n + 7)).astype(np.float32)
    want = adapter_apply_ref(a, b, q, s, x, y0, col)
    got = adapter_apply(ca, q, s, x, y0.copy(), col)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    assert np.array_equal(got[:, :col], y0[:, :col]) and np.array_equal(got[:, col + n:], y0[:, col + n:])
    assert np.abs(got - y0).max() > 0  # the side path adds something


def test_adapter_apply_is_close_to_float():
    """int8 A/B with block scales stay within a few percent of the float update; fp16 closer still."""
    n, k, r, m = 96, 256, 16, 8
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    b = (rng.standard_normal((n, r)) * 0.3).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    exact = (x.astype(np.float64) @ a.T) @ b.T.astype(np.float64)
    q, s = quantize_activations_ref(x, 32)
    for fmt, tol in (("int8", 0.03), ("fp16", 2e-3)):
        A, B = (
            (quantize_matrix(a, adapter_weight_format(k)), quantize_matrix(b, adapter_weight_format(r)))
            if fmt == "int8" else (a.astype(np.float16), b.astype(np.float16)))
        got = adapter_apply(CimAdapter(A, B), q, s, x, np.zeros((m, n), np.float32))
        err = np.sqrt(np.mean((got - exact) ** 2)) / np.sqrt(np.mean(exact ** 2))
        assert err < tol, (fmt, err)


def test_sram_format_sizes_and_counts():
    assert adapter_weight_format(576).group == 32 and adapter_weight_format(16).per_channel
    # A 16 x 576: codes + one fp16 scale per row and 32 inputs; B 576 x 16: codes + one scale per row
    assert adapter_sram_bytes("int8", 576, 576, 16) == (16 * 576 + 2 * 16 * 18) + (576 * 16 + 2 * 576)
    assert adapter_sram_bytes("fp16", 576, 576, 16) == 2 * (16 * 576 + 576 * 16)
    got = dict(zip(FIELDS, adapter_counts("int8", 192, 576, 16).tolist()))
    assert {k: v for k, v in got.items() if v} == {
        "sram_adapter_bytes_read": adapter_sram_bytes("int8", 192, 576, 16), "adapter_macs_w8": 16 * (576 + 192),
        "vec_flops": 192, "act_quant_elems": 16}
    got = dict(zip(FIELDS, adapter_counts("fp16", 192, 576, 16).tolist()))
    assert got["adapter_macs_f16"] == 16 * (576 + 192) and got["act_quant_elems"] == 0
    with pytest.raises(ValueError, match="adapter format"):
        adapter_sram_bytes("int4", 1, 1, 1)


def test_bad_input_is_refused():
    a, b = make("int8", 48, 64, 16)
    ca = CimAdapter(a, b)
    q = np.zeros((2, 64), np.int8)
    s = np.ones((2, 2), np.float32)
    y = np.zeros((2, 48), np.float32)
    with pytest.raises(ValueError, match="do not fit y"):
        adapter_apply(ca, q, s, None, y, 1)
    with pytest.raises(TypeError, match="int8"):
        adapter_apply(ca, q.astype(np.int16), s, None, y)
    with pytest.raises(ValueError, match="K=64"):
        adapter_apply(ca, np.zeros((2, 32), np.int8), np.ones((2, 1), np.float32), None, y)
    with pytest.raises(ValueError, match="rows"):
        adapter_apply(ca, q, np.ones((3, 2), np.float32), None, y)
    with pytest.raises(ValueError, match="needs 16 inputs"):
        CimAdapter(a, make("int8", 48, 64, 8)[1])
    a16, b16 = make("fp16", 48, 64, 16)
    with pytest.raises(TypeError, match="float16"):
        CimAdapter(a16.astype(np.float32), b16)
    with pytest.raises(ValueError, match=r"\(r, k\)"):
        CimAdapter(a16, b16[:, :8].copy())
    with pytest.raises(ValueError, match=r"\(2, 64\)"):
        adapter_apply(CimAdapter(a16, b16), None, None, np.zeros((2, 32), np.float32), y)
    x = np.zeros((2, 64), np.float32)
    x[1, 3] = np.inf
    with pytest.raises(ValueError):
        adapter_apply(CimAdapter(a16, b16), None, None, x, y)


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("r, m", [(16, 1), (8, 5), (1, 2), (31, 70)])
def test_rank_below_32_held_as_one_padded_block_gives_the_same_bits(isa_name, r, m, restore_isa):
    """B of rank r < 32 with one scale per row, or the same codes and scale as one zero-padded block of
    32 (the host layout SramAdapter uses, through the block kernels): identical outputs, both = oracle."""
    from hcemu.chip.lora import _b_layout

    hcemu.set_isa(isa_name)
    n, k = 80, 96
    rng = np.random.default_rng(r)
    a32 = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    b32 = (rng.standard_normal((n, r)) * 0.3).astype(np.float32)
    a = quantize_matrix(a32, adapter_weight_format(k))
    b_row = quantize_matrix(b32, adapter_weight_format(r))
    b_blk = quantize_matrix(*_b_layout(b32))
    assert b_row.fmt.per_channel and b_blk.fmt.group == 32 and b_blk.k == 32
    np.testing.assert_array_equal(b_blk.scales[:, 0, :], b_row.scales)
    x = rng.standard_normal((m, k)).astype(np.float32)
    q, s = quantize_activations_ref(x, 32)
    y0 = rng.standard_normal((m, n)).astype(np.float32)
    got_row = adapter_apply(CimAdapter(a, b_row), q, s, None, y0.copy())
    got_blk = adapter_apply(CimAdapter(a, b_blk), q, s, None, y0.copy())
    np.testing.assert_array_equal(got_row.view(np.int32), got_blk.view(np.int32))
    np.testing.assert_array_equal(got_blk.view(np.int32), adapter_apply_ref(a, b_blk, q, s, None, y0).view(np.int32))
