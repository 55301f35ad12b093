"""Block formats (k-quants, Q5_0/Q5_1, MXFP4, NVFP4): lossless import against gguf.quants, quantize-to,
corrupt blocks, and the CIM kernels on every ISA path bit for bit against the numpy oracle."""
from __future__ import annotations

import numpy as np
import pytest

import hcemu
from hcemu.formats import BLOCK_KINDS, WeightFormat, fallback_format, get_plan
from hcemu.kernels import cim
from hcemu.kernels.cim_ref import block_parts_ref, cim_matmul_ref, quantize_activations_ref
from hcemu.layout import (block_arrays, block_fields, block_record, dequantize, dequantize_rows, pack_block,
                          record_bytes, stack_rows)
from hcemu.model.spec import ModelSpec
from hcemu.rom import blocks as B

TYPES = sorted(B.BLOCK_BYTES)
F16_AT = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q5_0": (0,),
          "Q5_1": (0, 2)}


def random_blocks(ggml_type, n, n_super, rng, extreme=False):
    """Random GGUF blocks with finite scales (every other bit random); extreme: every code and
    sub-scale at its largest value, scales large."""
    bpb = B.BLOCK_BYTES[ggml_type]
    data = rng.integers(0, 256, (n, n_super, bpb), dtype=np.uint8)
    if extreme:
        data[:] = 0xFF
    for p in F16_AT.get(ggml_type, ()):
        d = (rng.standard_normal((n, n_super)) * (1000 if extreme else 1)).astype(np.float16)
        data[..., p:p + 2] = np.ascontiguousarray(d[..., None]).view(np.uint8)
    if ggml_type == "MXFP4":
        data[..., 0] = rng.integers(0, 200, (n, n_super)) if not extreme else 200
    if ggml_type == "NVFP4":
        data[..., 0:4] = rng.integers(0, 127, (n, n_super, 4)) if not extreme else 0x7E
    return data.reshape(n, -1)


def gguf_dequant(data, ggml_type, n, k):
    import gguf

    return gguf.quants.dequantize(data, gguf.GGMLQuantizationType[ggml_type]).reshape(n, k)


@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("extreme", [False, True])
def test_import_equals_gguf_dequantize_and_round_trips(ggml_type, extreme):
    bk = B.kind_of(ggml_type)
    rng = np.random.default_rng(len(ggml_type) + extreme)
    n, nsb = 21, 3
    k = nsb * bk.super_k
    data = random_blocks(ggml_type, n, nsb, rng, extreme)
    f = B.decode(data, ggml_type, k)
    ref = gguf_dequant(data, ggml_type, n, k)
    np.testing.assert_array_equal(B.dequantize_fields(f, ggml_type), ref)
    np.testing.assert_array_equal(B.encode(f, ggml_type), data)
    pw = B.to_packed(f, WeightFormat.of_kind(bk.name))
    np.testing.assert_array_equal(dequantize(pw), ref)
    np.testing.assert_array_equal(dequantize_rows(pw, [0, 17, 20]), ref[[0, 17, 20]])


@pytest.mark.parametrize("ggml_type", TYPES)
def test_quantize_to_is_a_valid_gguf_block(ggml_type):
    bk = B.kind_of(ggml_type)
    rng = np.random.default_rng(3)
    k = 2 * bk.super_k
    w = (rng.standard_normal((16, k)) * 0.02).astype(np.float32)
    f = B.quantize(w, ggml_type)
    got = B.dequantize_fields(f, ggml_type)
    blocks = B.encode(f, ggml_type)
    want = gguf_dequant(blocks, ggml_type, 16, k) * np.float32(f["tensor_scale"])
    np.testing.assert_array_equal(got, want)
    rel = np.sqrt(((got - w) ** 2).mean() / (w ** 2).mean())
    # error halves (or better) per extra bit; loose bounds, checked on Gaussian rows
    limit = {2: 0.40, 3: 0.20, 4: 0.13, 5: 0.06, 6: 0.03}[bk.code_bits]
    assert rel < limit, (ggml_type, rel)


def test_bits_per_weight_are_the_gguf_block_sizes():
    for ggml_type, nbytes in B.BLOCK_BYTES.items():
        bk = B.kind_of(ggml_type)
        assert bk.bits_per_weight == nbytes * 8 / bk.super_k
        fmt = WeightFormat.of_kind(bk.name)
        assert fmt.bits_per_weight(bk.super_k * 4) == bk.bits_per_weight


@pytest.mark.parametrize("ggml_type, patch, match", [
    ("Q4_K", lambda b: b.__setitem__((3, slice(0, 2)), [0x00, 0x7E]), "row 3.*scale d is nan"),
    ("Q6_K", lambda b: b.__setitem__((1, slice(208 + 210, 210 + 210)), [0x00, 0x7C]), "row 1, weights 256..511.*inf"),
    ("Q2_K", lambda b: b.__setitem__((0, slice(82, 84)), [0x00, 0xFC]), "dmin is -inf"),
    ("MXFP4", lambda b: b.__setitem__((2, 17), 0xFF), "row 2, weights 32..63.*0xFF"),
    ("MXFP4", lambda b: b.__setitem__((1, slice(0, 17)), [254] + [0x77] * 16), "row 1, weights 0..31.*overflows"),
    ("NVFP4", lambda b: b.__setitem__((0, 1), 0x85), "bit 7"),
    ("NVFP4", lambda b: b.__setitem__((0, 2), 0x7F), "0x7F"),
])
def test_corrupt_blocks_are_named(ggml_type, patch, match):
    bk = B.kind_of(ggml_type)
    rng = np.random.default_rng(5)
    data = random_blocks(ggml_type, 4, 2, rng)
    patch(data)
    with pytest.raises(B.CorruptBlockError, match=match):
        B.decode(data, ggml_type, 2 * bk.super_k, "blk.0.ffn_up.weight")


def test_truncated_and_misshapen_blocks():
    data = np.zeros((3, 143), np.uint8)
    with pytest.raises(ValueError, match="needs 144 bytes, got 143"):
        B.decode(data, "Q4_K", 256)
    with pytest.raises(ValueError, match="not a multiple of the 256"):
        B.decode(np.zeros((3, 144), np.uint8), "Q4_K", 255)
    with pytest.raises(TypeError, match="uint8"):
        B.decode(np.zeros((3, 144), np.int8), "Q4_K", 256)
    with pytest.raises(ValueError, match="not a block format"):
        B.decode(data, "IQ4_XS", 256)


def test_fallback_formats_follow_llama_cpp():
    assert fallback_format(WeightFormat.of_kind("q4_k"), 576).kind == "q5_0"
    assert fallback_format(WeightFormat.of_kind("q5_k"), 576).kind == "q5_1"
    assert fallback_format(WeightFormat.of_kind("q6_k"), 576) == WeightFormat(8, 32)
    assert fallback_format(WeightFormat.of_kind("q3_k"), 576) == WeightFormat(4, 32)
    assert fallback_format(WeightFormat.of_kind("q4_k"), 1536).kind == "q4_k"
    mix = get_plan("q3k-mix")
    assert mix.format_for("attn_v", "blk.0.attn_v.weight", 512).kind == "q6_k"
    assert mix.format_for("attn_q", "blk.0.attn_q.weight", 512).kind == "q3_k"
    with pytest.raises(ValueError, match="unknown weight format kind"):
        WeightFormat(4, 32, kind="q7_k")
    with pytest.raises(ValueError, match="q6_k weights are WeightFormat"):
        WeightFormat(4, 32, kind="q6_k")


# ---- kernels


def _packed(ggml_type, n, n_super, seed, extreme=False):
    bk = B.kind_of(ggml_type)
    rng = np.random.default_rng(seed)
    f = B.decode(random_blocks(ggml_type, n, n_super, rng, extreme), ggml_type, n_super * bk.super_k)
    if ggml_type == "NVFP4" and not extreme:
        f["tensor_scale"] = 0.25
    return B.to_packed(f, WeightFormat.of_kind(bk.name))


@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("extreme", [False, True])
def test_every_isa_path_equals_the_oracle(ggml_type, extreme, restore_isa):
    # 133 rows: 9 row tiles, the last partial (M = 1 takes them in pairs and the odd one alone)
    pw = _packed(ggml_type, 133, 2 if B.kind_of(ggml_type).super_k == 256 else 3, 11, extreme)
    k = pw.k
    rng = np.random.default_rng(12)
    for m in (1, 3, 70):
        q = rng.integers(-128, 128, (m, k)).astype(np.int8)
        if extreme:
            q[:] = -128
            q[1::2] = 127
        for ag in (32, k):
            s = (rng.random((m, k // ag)) * 0.01).astype(np.float32)
            ref = cim_matmul_ref(q, s, pw)
            S = block_parts_ref(q, pw)["S"]
            for isa in hcemu.capabilities()["supported"]:
                dots = np.zeros((m, pw.n_row_tiles * 16, pw.n_blocks), np.int32)
                got = cim.cim_matmul(q, s, pw, isa=isa, dots=dots)
                np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32), err_msg=f"{isa} m={m} ag={ag}")
                np.testing.assert_array_equal(dots[:, :pw.n], S)
                if m in (1, 3):  # without the dots hook (M = 1: the multi-tile body), one and two threads
                    hcemu.set_isa(isa)
                    for threads in (1, 2):
                        got2 = cim.cim_matmul(q, s, pw, n_threads=threads)
                        np.testing.assert_array_equal(got2.view(np.uint32), ref.view(np.uint32),
                                                      err_msg=f"{isa} m={m} ag={ag} threads={threads}")


@pytest.mark.parametrize("ggml_type", ["Q3_K", "Q5_1", "NVFP4"])
def test_fused_linear_and_stacked_rows(ggml_type):
    a, b = _packed(ggml_type, 32, 2, 1), _packed(ggml_type, 16, 2, 2)
    b = type(b)(b.fmt, b.n, b.k, b.codes, tensor_scale=a.tensor_scale)
    x = np.random.default_rng(3).standard_normal((5, a.k)).astype(np.float32)
    ya = cim.cim_linear(x, 32, a)
    np.testing.assert_array_equal(ya, cim_matmul_ref(*quantize_activations_ref(x, 32), a))
    both = stack_rows([a, b])
    yb = cim.cim_linear(x, 32, both)
    np.testing.assert_array_equal(yb[:, :32], ya)
    np.testing.assert_array_equal(yb[:, 32:], cim.cim_linear(x, 32, b))


def test_product_is_close_to_the_float_product():
    rng = np.random.default_rng(8)
    for ggml_type in TYPES:
        bk = B.kind_of(ggml_type)
        w = (rng.standard_normal((48, 2 * bk.super_k if bk.super_k > 32 else 96)) * 0.05).astype(np.float32)
        f = B.quantize(w, ggml_type)
        pw = B.to_packed(f, WeightFormat.of_kind(bk.name))
        x = rng.standard_normal((4, w.shape[1])).astype(np.float32)
        want = x @ dequantize(pw).T
        got = cim.cim_linear(x, 32, pw)
        assert np.abs(got - want).max() < 0.02 * np.abs(want).max(), ggml_type


def test_bad_block_weights_are_refused():
    pw = _packed("Q4_K", 16, 1, 0)
    assert pw.codes.shape == (1, 1, 2368)   # one record: d, dmin, 8 x 16 sub-scales and sub-mins, 8 tiles of codes
    bad = type(pw)(pw.fmt, pw.n, pw.k, np.ascontiguousarray(pw.codes[:, :, :-1]))
    with pytest.raises(ValueError, match=r"codes of a 16x256 q4_k matrix must be C-contiguous uint8 \(1, 1, 2368\)"):
        cim.prepare(bad)
    sep = block_arrays(pw)   # the levels as separate arrays are not a layout the kernels read
    bad = type(pw)(pw.fmt, pw.n, pw.k, pw.codes, sep["scales"])
    with pytest.raises(ValueError, match="scales are not allowed for q4_k"):
        cim.prepare(bad)


def test_record_layout_round_trip():
    """The records hold every level in block_record's order; block_arrays takes them apart again."""
    for ggml_type in TYPES:
        pw = _packed(ggml_type, 40, 2, 5)
        fmt, bk = pw.fmt, pw.fmt.block
        parts = block_record(fmt)
        assert [p[0] for p in parts][-1] == "codes" and pw.codes.shape[2] == record_bytes(fmt)
        a = block_arrays(pw)
        nt = pw.n_row_tiles
        assert a["codes"].shape == (nt, pw.k // 32, 16 * 32 * fmt.bits // 8)
        for name, dt, cnt in parts[:-1]:
            assert a[name].dtype == dt and a[name].shape == (nt, pw.k // bk.super_k * cnt, 16)
        f = block_fields(pw)
        again = pack_block(f["codes"], fmt, f["d"], f["sc"], f["mn"], f["o"], pw.tensor_scale)
        np.testing.assert_array_equal(again.codes, pw.codes)
        # the first record starts with tile 0's scales for rows 0..15, its codes end it
        np.testing.assert_array_equal(pw.codes[0, 0, :16 * parts[0][1].itemsize].view(parts[0][1]),
                                      a["scales"][0, 0])
        np.testing.assert_array_equal(pw.codes[0, 0, -parts[-1][2]:].reshape(bk.blocks_per_super, -1),
                                      a["codes"][0, :bk.blocks_per_super])


# ---- a model in k-quants: compile --plan gguf, exact import, run on the chip

KQ_SPEC = ModelSpec("tiny-kq", n_layers=2, d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, d_ff=512,
                    vocab_size=64, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False, max_context=64)
KQ_TYPES = {"token_embd": "Q6_K", "attn_q": "Q3_K", "attn_k": "Q2_K", "attn_v": "Q6_K", "attn_output": "Q4_K",
            "ffn_gate": "MXFP4", "ffn_up": "Q5_K", "ffn_down": "Q5_1", "output": "NVFP4"}


@pytest.fixture(scope="module")
def kq_gguf(tmp_path_factory):
    from model_helpers import write_tiny_gguf

    path = tmp_path_factory.mktemp("kq") / "kq.gguf"
    stored = write_tiny_gguf(path, spec=KQ_SPEC, types=KQ_TYPES)
    return path, stored


def test_gguf_plan_imports_every_tensor_exactly(kq_gguf, tmp_path):
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model

    path, stored = kq_gguf
    with GGUFSource(path) as src:
        rep = compile_model(src, "gguf", tmp_path / "kq.hcrom", progress=False)
    assert all(t["method"] == "import" and t["exact"] for t in rep.tensors)
    assert rep.totals["exact_tensors"] == len(rep.tensors)
    img = RomImage.load(tmp_path / "kq.hcrom")
    for t in rep.tensors:
        kind = t["name"].split(".")[-2] if t["name"].startswith("blk.") else t["name"].split(".")[0]
        assert t["format"] == B.kind_of(KQ_TYPES[kind]).name
        np.testing.assert_array_equal(dequantize(img.matrix(t["name"])), stored[t["name"]])
    assert img.plan.format_for("attn_q", "blk.1.attn_q.weight").kind == "q3_k"
    from hcemu.commands.inspect import describe

    rows = {t["name"]: t for t in describe(img)["report"]["tensors"]}
    assert rows["blk.0.ffn_gate.weight"]["format"] == "mxfp4" and rows["blk.0.ffn_gate.weight"]["exact"]
    assert rows["blk.0.attn_k.weight"]["bits_per_weight"] == 2.625


@pytest.mark.parametrize("plan", ["gguf", "q3k-mix", "nvfp4"])
def test_block_plans_run_on_the_chip(kq_gguf, tmp_path, plan):
    """Compiled layer pass == interpreted loop to the bit; logits near the float reference's."""
    from hcemu.chip import Chip
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.reference import FloatLlama
    from hcemu.rom.image import RomImage, compile_model

    path, _ = kq_gguf
    with GGUFSource(path) as src:
        compile_model(src, plan, tmp_path / "m.hcrom", progress=False)
        ref = FloatLlama(src)
        ids = np.arange(1, 21, dtype=np.int64) * 3 % KQ_SPEC.vocab_size
        want = ref.forward(ids)
    img = RomImage.load(tmp_path / "m.hcrom")
    outs = []
    for compiled, fuse in ((True, True), (False, False)):
        chip = Chip(img, kv_capacity_tokens=32, compiled=compiled, fuse_products=fuse)
        outs.append(chip.prefill(ids, all_logits=True).logits)
    np.testing.assert_array_equal(outs[0].view(np.int32), outs[1].view(np.int32))
    # events: what the chip counts == the analytical generator (per-tensor formats); ROM bits by shapes
    from hcemu.perf.analytic import events_from_shapes
    from hcemu.rom.image import rom_bits_for_model

    gen = Chip(img, kv_capacity_tokens=32).generate(list(ids[:5]), 3)
    want_ev = events_from_shapes(img.spec, img.plan, n_prompt=5, n_generated=len(gen.ids))
    assert gen.prefill_events + gen.decode_events == want_ev
    assert rom_bits_for_model(img.spec, img.plan) == img.rom_bits
    err = np.abs(outs[0] - want).max() / np.abs(want).max()
    assert err < (0.05 if plan == "gguf" else 0.6), err  # this random model: int8 0.035, int4 0.23


def test_corrupt_block_in_a_file_is_a_compile_time_error(kq_gguf, tmp_path):
    """A bit flip that makes a Q4_K super-scale NaN: the compiler names the tensor and leaves no image."""
    import os
    import shutil

    import gguf

    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import compile_model

    path, _ = kq_gguf
    bad = tmp_path / "bad.gguf"
    shutil.copy(path, bad)
    t = next(t for t in gguf.GGUFReader(str(bad)).tensors if t.name == "blk.1.attn_output.weight")
    with open(bad, "r+b") as f:
        f.seek(int(t.data_offset) + 144 * 3)  # K = 256: row 3, its fp16 d
        f.write(bytes([0x00, 0x7E]))
    with GGUFSource(bad) as src, pytest.raises(B.CorruptBlockError, match=r"blk\.1\.attn_output\.weight.*row 3, "
                                                                            r"weights 0\.\.255.*nan"):
        compile_model(src, "gguf", tmp_path / "x.hcrom", progress=False)
    assert not os.path.exists(tmp_path / "x.hcrom")


@pytest.mark.parametrize("ggml_type", ["Q4_K", "Q3_K", "Q6_K", "MXFP4", "NVFP4", "Q5_1"])
def test_requantized_gguf_imports_losslessly(tmp_path, ggml_type):
    """requantize_gguf writes a valid GGUF (metadata kept) whose matrices the gguf plan imports exactly;
    rows that are not a multiple of the super-block fall back as llama.cpp does."""
    from model_helpers import TINY_SPEC, write_tiny_gguf

    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import compile_model
    from hcemu.rom.requantize import requantize_gguf, type_for

    src = tmp_path / "f32.gguf"
    write_tiny_gguf(src, spec=KQ_SPEC, types={}, tokenizer=True)
    out = tmp_path / "q.gguf"
    written = requantize_gguf(src, out, ggml_type)
    assert set(written.values()) == {ggml_type, "F32"}
    with GGUFSource(src) as a, GGUFSource(out) as b:
        assert a.spec == b.spec.__class__(**{**b.spec.__dict__, "source": a.spec.source})
        assert b.metadata["tokenizer.ggml.tokens"] == a.metadata["tokenizer.ggml.tokens"]
        rep = compile_model(b, "gguf", tmp_path / "q.hcrom", progress=False)
    assert all(t["exact"] and t["method"] == "import" for t in rep.tensors)
    assert type_for("Q4_K", TINY_SPEC.d_model) == "Q5_0" and type_for("Q6_K", 576) == "Q8_0"
    assert type_for("Q3_K", 576) == "Q4_0" and type_for("MXFP4", 576) == "MXFP4"


@pytest.mark.parametrize("plan", ["mxfp4", "nvfp4"])
def test_fp4_macs_are_counted_and_priced_apart_from_integer_ones(plan):
    """FP4 codes count ``macs_fp4`` (n*k per product), never ``macs_w4``; their energy is
    ``mac_fp4_pj`` per MAC exactly, their time the 4-bit lanes'; an int4 plan counts none."""
    from dataclasses import replace

    from hcemu.formats import get_plan
    from hcemu.model.spec import get_preset
    from hcemu.perf.analytic import events_from_shapes
    from hcemu.perf.silicon import SiliconModel
    from hcemu.perf.specs import get_chip

    spec = get_preset("llama-3.1-8b")
    ev = events_from_shapes(spec, get_plan(plan), positions=[100])
    layer = ev.region(0)
    assert layer["macs_fp4"] == spec.layer_own_params and layer["macs_w4"] == 0
    assert events_from_shapes(spec, get_plan("int4"), positions=[100]).macs_fp4 == 0
    chip = get_chip("hc1")
    base = SiliconModel(chip)
    dear = SiliconModel(replace(chip, mac_fp4_pj=chip.mac_fp4_pj + 0.1))
    a, b = base.evaluate(spec, get_plan(plan), 64, 64), dear.evaluate(spec, get_plan(plan), 64, 64)
    assert b.dynamic_energy_j_per_token > a.dynamic_energy_j_per_token
    assert b.per_user_tok_s == a.per_user_tok_s   # energy only: same lanes
    # the energy difference per decode token is 0.1 pJ per FP4 MAC of a token pass
    fp4_per_pass = sum(ev.region(i)["macs_fp4"] for i in range(spec.n_layers)) + ev.region("head")["macs_fp4"]
    assert b.dynamic_energy_j_per_token - a.dynamic_energy_j_per_token == pytest.approx(fp4_per_pass * 0.1e-12, rel=1e-6)


def test_every_ue4m3_scale_byte_on_every_isa(restore_isa):
    """Each of the 128 NVFP4 scale bytes (subnormal e = 0, 0x7F = 0 included) decodes exactly on every path."""
    fmt = WeightFormat.of_kind("nvfp4")
    rng = np.random.default_rng(11)
    n, k = 32, 16 * 128
    d = ((np.arange(k // 16)[None, :] + 7 * np.arange(n)[:, None]) % 128).astype(np.uint8)
    pw = pack_block(rng.integers(0, 16, (n, k)), fmt, d)
    x = rng.standard_normal((1, k)).astype(np.float32)
    q, s = quantize_activations_ref(x, 32)
    ref = cim_matmul_ref(q, s, pw)
    for isa in hcemu.capabilities()["supported"]:
        hcemu.set_isa(isa)
        np.testing.assert_array_equal(cim.cim_matmul(q, s, pw).view(np.uint32), ref.view(np.uint32), err_msg=isa)
