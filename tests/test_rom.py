"""The compiler: quantization rules, lossless GGUF import, the ROM image file, errors, atomic writes."""
from __future__ import annotations

import json
import os
import struct

import gguf
import numpy as np
import pytest

from hcemu.formats import INT8_G32, WeightFormat, get_plan
from hcemu.layout import dequantize, pack
from hcemu.model.source import ModelSource, RawTensor
from hcemu.model.spec import ModelSpec
from hcemu.perf.area import floorplan
from hcemu.rom import RomImage, RomImageError, compile_model
from hcemu.rom.image import MAGIC, PREAMBLE_BYTES
from hcemu.rom.quantize import ErrorStats, import_blocks, lossless_import, quantize_codes, represented

Q = gguf.GGMLQuantizationType
SPEC = ModelSpec("fake-tiny", 2, 64, 4, 2, 16, 96, 200)
SPEC_TIED = ModelSpec("fake-tied", 1, 64, 4, 2, 16, 96, 200, tied_embeddings=True)
# source type of each tensor kind: every lossless and lossy path is exercised
TYPES = {"embedding": "Q8_0", "attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "F16", "attn_output": "Q8_0",
         "ffn_gate": "Q4_1", "ffn_up": "BF16", "ffn_down": "Q4_0", "output": "Q4_1"}


class FakeSource(ModelSource):
    """Random tensors in GGUF block formats (real block bytes from gguf.quants) and floats."""

    def __init__(self, spec=SPEC, seed=0, fail_at=None):
        self.spec = spec
        self.fail_at = fail_at
        self.calls = 0
        rng = np.random.default_rng(seed)
        self.tensors = {}
        for name, kind, _layer, (n, k) in spec.matrices():
            w = (rng.standard_normal((n, k)) * k ** -0.5).astype(np.float32)
            w[0, :5] = [3.0, -2.5, 0.0, 1e-3, -1e-3]  # an outlier row
            t = TYPES[kind]
            if t in ("Q8_0", "Q4_0", "Q4_1"):
                self.tensors[name] = RawTensor(name, t, (n, k), gguf.quants.quantize(w, Q[t]))
            elif t == "BF16":  # bit patterns, as GGUF sources hand them over
                self.tensors[name] = RawTensor(name, t, (n, k), (w.view(np.uint32) >> 16).astype(np.uint16))
            else:
                self.tensors[name] = RawTensor(name, t, (n, k), w.astype(np.float16 if t == "F16" else np.float32))
        for name, _layer, n in spec.norms():
            self.tensors[name] = RawTensor(name, "F32", (n,), (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    def tensor_names(self):
        return list(self.tensors)

    def raw(self, name):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated failure mid-compile")
        return self.tensors[name]

    def float32(self, name):
        t = self.tensors[name]
        if t.ggml_type in ("Q8_0", "Q4_0", "Q4_1"):
            return gguf.quants.dequantize(t.data, Q[t.ggml_type]).reshape(t.shape)
        if t.ggml_type == "BF16":
            return (t.data.astype(np.uint32) << 16).view(np.float32)
        return t.data.astype(np.float32)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("rom")
    src = FakeSource()
    out = {}
    for plan in ("int4", "int8", "int4-sym", "int8-pt"):
        path = d / f"{plan}.hcrom"
        rep = compile_model(src, plan, path, progress=False)
        out[plan] = (path, rep)
    return src, out


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


# ---- quantization rules


def _reference_symmetric(w, fmt):
    qmax = 127 if fmt.bits == 8 else 7
    g = w.shape[1] if fmt.per_channel else fmt.group
    q = np.zeros(w.shape, np.int64)
    d = np.zeros((w.shape[0], w.shape[1] // g), np.float16)
    for i in range(w.shape[0]):
        for b in range(w.shape[1] // g):
            blk = w[i, b * g:(b + 1) * g]
            s = np.float16(np.float32(np.abs(blk).max()) / np.float32(qmax))
            d[i, b] = s
            for j, x in enumerate(blk):
                v = 0.0 if s == 0 else np.rint(np.float32(x) / np.float32(s))
                q[i, b * g + j] = int(min(max(v, -qmax), qmax))
    return q, d


@pytest.mark.parametrize("fmt", [WeightFormat(8, 32), WeightFormat(8, 64), WeightFormat(8, 0), WeightFormat(4, 32),
                                 WeightFormat(4, 128)])
def test_symmetric_quantization_matches_scalar_rule(fmt):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 128)).astype(np.float32)
    w[1, :32] = 0.0  # all-zero block: scale 0, codes 0
    q, d, m = quantize_codes(w, fmt)
    rq, rd = _reference_symmetric(w, fmt)
    assert m is None
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d.reshape(rd.shape).view(np.uint16), rd.view(np.uint16))


def test_ties_round_half_to_even():
    w = np.zeros((1, 32), np.float32)
    w[0, :6] = [127.0, 0.5, 1.5, 2.5, -0.5, -3.5]   # d = 1.0 exactly, so w / d hits the ties
    q, d, _ = quantize_codes(w, INT8_G32)
    assert float(d[0, 0]) == 1.0
    assert list(q[0, :6]) == [127, 0, 2, 2, 0, -4]


def test_asymmetric_quantization_rule():
    rng = np.random.default_rng(2)
    fmt = WeightFormat(4, 32, asymmetric=True)
    w = rng.uniform(-1, 3, (7, 64)).astype(np.float32)
    w[2, 32:] = 0.25  # constant block: d = 0, codes 0, value = m
    q, d, m = quantize_codes(w, fmt)
    assert q.min() >= 0 and q.max() <= 15
    lo, hi = w.reshape(7, 2, 32).min(2), w.reshape(7, 2, 32).max(2)
    np.testing.assert_array_equal(d, ((hi - lo) / np.float32(15)).astype(np.float16))
    np.testing.assert_array_equal(m, lo.astype(np.float16))
    x = w.reshape(7, 2, 32)
    want = np.clip(np.rint((x - m.astype(np.float32)[..., None]) /
                           np.where(d == 0, 1, d).astype(np.float32)[..., None]), 0, 15)
    want[d == 0] = 0
    np.testing.assert_array_equal(q, want.reshape(7, 64))
    w_hat = represented(q, d, m, fmt)
    np.testing.assert_array_equal(_bits(w_hat), _bits(dequantize(pack(q, d, fmt, m))))
    assert np.abs(w_hat - w).max() <= float(d.max()) / 2 + 2e-3


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        quantize_codes(np.full((1, 32), np.nan, np.float32), INT8_G32)
    with pytest.raises(ValueError, match="fp16"):
        quantize_codes(np.full((1, 32), 1e7, np.float32), INT8_G32)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_codes(np.zeros((1, 48), np.float32), INT8_G32)
    with pytest.raises(TypeError, match="floats"):
        quantize_codes(np.zeros((1, 32), np.int32), INT8_G32)


# ---- lossless import


@pytest.mark.parametrize("gtype,fmt", [("Q8_0", WeightFormat(8, 32)), ("Q4_0", WeightFormat(4, 32)),
                                       ("Q4_0", WeightFormat(4, 32, True)), ("Q4_0", WeightFormat(8, 32)),
                                       ("Q4_1", WeightFormat(4, 32, True))])
def test_import_blocks_is_bit_exact(gtype, fmt):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((33, 96)).astype(np.float32) * 0.1
    blocks = gguf.quants.quantize(w, Q[gtype])
    assert lossless_import(gtype, fmt)
    pw = import_blocks(blocks, gtype, 96, fmt)
    want = gguf.quants.dequantize(blocks, Q[gtype]).reshape(33, 96)
    got = dequantize(pw)
    if gtype == "Q4_0" and fmt.asymmetric:
        # equal values; only the sign of zero differs (gguf: d * 0 = -0.0 for d < 0; here 8d + (-8d) = +0.0)
        np.testing.assert_array_equal(got, want)
        assert (got != want).sum() == 0 and (_bits(got) != _bits(want)).sum() == (np.signbit(want) & (want == 0)).sum()
    else:
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_import_refuses_lossy_and_bad_blocks():
    assert not lossless_import("Q4_1", WeightFormat(8, 32))
    assert not lossless_import("Q8_0", WeightFormat(4, 32, True))
    assert not lossless_import("Q8_0", WeightFormat(8, 64))
    blocks = gguf.quants.quantize(np.ones((2, 64), np.float32), Q.Q8_0)
    with pytest.raises(ValueError, match="without loss"):
        import_blocks(blocks, "Q8_0", 64, WeightFormat(4, 32))
    with pytest.raises(ValueError, match="needs 68 bytes, got 67"):
        import_blocks(blocks[:, :67], "Q8_0", 64, INT8_G32)
    with pytest.raises(TypeError, match="uint8"):
        import_blocks(blocks.astype(np.int16), "Q8_0", 64, INT8_G32)


# ---- compile and the image


@pytest.mark.parametrize("plan", ["int4", "int8", "int4-sym", "int8-pt"])
def test_image_matrices_match_source(images, plan):
    src, imgs = images
    path, rep = imgs[plan]
    p = get_plan(plan)
    by_name = {t["name"]: t for t in rep.tensors}
    with RomImage.load(path) as img:
        assert img.plan == p and img.spec == SPEC
        for name, kind, _layer, (n, k) in SPEC.matrices():
            raw = src.tensors[name]
            fmt = p.format_for(kind)
            pw = img.matrix(name)
            assert pw.fmt == fmt and (pw.n, pw.k) == (n, k)
            assert not pw.codes.flags.writeable and pw.codes.ctypes.data % 4096 == 0
            ref = src.float32(name)
            got = dequantize(pw)
            t = by_name[name]
            if raw.ggml_type in ("Q8_0", "Q4_0", "Q4_1") and lossless_import(raw.ggml_type, fmt):
                assert t["method"] == "import" and t["exact"] and t["rmse"] == 0 and t["sqnr_db"] is None
                np.testing.assert_array_equal(got, ref)  # Q4_0 -> int4a may differ in the sign of zero
                if not (raw.ggml_type == "Q4_0" and fmt.asymmetric):
                    np.testing.assert_array_equal(_bits(got), _bits(ref))
            else:
                assert t["method"] == ("requantize" if raw.ggml_type.startswith("Q") else "quantize")
                q, d, m = quantize_codes(ref, fmt)
                want = pack(q, d, fmt, m)
                np.testing.assert_array_equal(pw.codes, want.codes)
                np.testing.assert_array_equal(pw.scales.view(np.uint16), want.scales.view(np.uint16))
                e = got.astype(np.float64) - ref.astype(np.float64)
                assert t["rmse"] == pytest.approx(np.sqrt(np.mean(e * e)), rel=1e-9)
                assert t["max_abs"] == pytest.approx(np.abs(e).max(), rel=1e-12)
                assert t["sqnr_db"] == pytest.approx(10 * np.log10((ref.astype(np.float64) ** 2).sum() / (e * e).sum()),
                                                     rel=1e-9)
                assert not t["exact"] and t["sqnr_db"] > 15
        for name, _layer, n in SPEC.norms():
            np.testing.assert_array_equal(img.vector(name), src.tensors[name].data)
        T = img.report.totals
        assert T["count"] == SPEC.n_params and T["tensors"] == len(list(SPEC.matrices()))
        assert T["exact_tensors"] == sum(t["exact"] for t in rep.tensors)


def test_report_totals_combine_tensors(images):
    _src, imgs = images
    rep = imgs["int4"][1]
    s = ErrorStats()
    for t in rep.tensors:
        s.merge(ErrorStats.from_dict(t))
    assert rep.totals["rmse"] == pytest.approx(s.to_dict()["rmse"])
    assert rep.totals["max_abs"] == max(t["max_abs"] for t in rep.tensors)
    methods = {t["name"]: t["method"] for t in rep.tensors}
    assert methods["blk.0.attn_k.weight"] == "import"      # Q4_1 -> int4a
    assert methods["blk.0.attn_q.weight"] == "import"      # Q4_0 -> int4a (m = -8d)
    assert methods["token_embd.weight"] == "import"        # Q8_0 -> int8
    assert methods["blk.0.attn_output.weight"] == "requantize"  # Q8_0 -> int4a
    assert methods["output.weight"] == "requantize"        # Q4_1 -> int8


def test_tied_embeddings_share_one_copy(tmp_path):
    src = FakeSource(SPEC_TIED)
    path = tmp_path / "tied.hcrom"
    compile_model(src, "int4", path, progress=False)
    with RomImage.load(path) as img:
        assert "output.weight" not in img.names()
        assert img.matrix("output.weight") is img.matrix("token_embd.weight")
        np.testing.assert_array_equal(img.tensor_banks("output.weight")[0], img.tensor_banks("token_embd.weight")[0])


def test_unknown_tensor_type_is_an_error(tmp_path):
    src = FakeSource()
    name = "blk.0.attn_v.weight"
    src.tensors[name] = RawTensor(name, "IQ2_XS", src.tensors[name].shape, src.tensors[name].data)
    with pytest.raises(ValueError, match="unsupported tensor type 'IQ2_XS'"):
        compile_model(src, "int4", tmp_path / "x.hcrom", progress=False)
    assert not os.path.exists(tmp_path / "x.hcrom")


def test_interrupted_compile_leaves_no_file(tmp_path):
    dest = tmp_path / "chip.hcrom"
    with pytest.raises(RuntimeError, match="simulated"):
        compile_model(FakeSource(fail_at=6), "int4", dest, progress=False)
    assert os.listdir(tmp_path) == []
    # an existing image survives a failed recompile untouched
    compile_model(FakeSource(), "int8", dest, progress=False)
    before = dest.read_bytes()
    with pytest.raises(RuntimeError):
        compile_model(FakeSource(fail_at=3), "int4", dest, progress=False)
    assert dest.read_bytes() == before and os.listdir(tmp_path) == ["chip.hcrom"]


# ---- damaged files


def _copy(images, tmp_path, name="damaged.hcrom"):
    path = tmp_path / name
    path.write_bytes(images[1]["int4"][0].read_bytes())
    return path


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_truncated_file(images, tmp_path):
    path = _copy(images, tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(RomImageError, match=f"truncated: {size - 100} bytes, the preamble says {size}"):
        RomImage.load(path)
    with open(path, "r+b") as f:
        f.truncate(50)
    with pytest.raises(RomImageError, match="truncated: 50 bytes"):
        RomImage.load(path)


def test_corrupt_section_is_named(images, tmp_path):
    path = _copy(images, tmp_path)
    with RomImage.load(path) as img:
        sec = img.tensor_info("blk.1.ffn_up.weight")["sections"]["scales"]
    _patch(path, sec["offset"] + 3, b"\x55")
    with pytest.raises(RomImageError, match=r"corrupt section blk\.1\.ffn_up\.weight/scales"):
        RomImage.load(path)
    with RomImage.load(path, verify=False) as img:   # skipping the checksums loads it
        assert img.matrix("blk.1.ffn_up.weight").n == SPEC.d_ff


def test_corrupt_directory_and_preamble(images, tmp_path):
    path = _copy(images, tmp_path)
    size = path.stat().st_size
    _patch(path, size - 10, b"#")
    with pytest.raises(RomImageError, match="corrupt directory"):
        RomImage.load(path, verify=False)
    path = _copy(images, tmp_path, "p.hcrom")
    _patch(path, 16, struct.pack("<Q", 12345))   # directory offset
    with pytest.raises(RomImageError, match="corrupt preamble"):
        RomImage.load(path)


def test_wrong_magic_and_version(images, tmp_path):
    path = _copy(images, tmp_path)
    _patch(path, 0, b"GGUF\x03\x00\x00\x00")
    with pytest.raises(RomImageError, match="not an hcemu ROM image"):
        RomImage.load(path)
    path = _copy(images, tmp_path, "v.hcrom")
    _patch(path, len(MAGIC), struct.pack("<I", 99))
    with pytest.raises(RomImageError, match="unsupported ROM image version 99"):
        RomImage.load(path)
    _patch(path, len(MAGIC), struct.pack("<I", 1))   # before block formats were one stream of records
    with pytest.raises(RomImageError, match="version 1 .*recompile it with this hcemu"):
        RomImage.load(path)
    assert PREAMBLE_BYTES == 4096


# ---- floorplan and CLI


def test_floorplan_sums(images):
    with RomImage.load(images[1]["int4"][0]) as img:
        fp = floorplan(img, "hc1", kv_tokens=100)
        a = fp.area
        assert fp.rom.banks == img.address_map.n_banks and fp.rom.code_used <= fp.rom.code_physical
        assert a.rom_bits == fp.rom.code_physical + img.meta_bits + img.vector_bits
        assert fp.total_mm2 == pytest.approx((a.rom_mm2 + a.sram_mm2 + a.logic_mm2) * 1.1 + a.io_mm2)
        assert fp.kv_sram_bytes == 100 * 2 * SPEC.n_layers * SPEC.n_kv_heads * (SPEC.head_dim + 2)
        bigger = floorplan(img, "hc1", kv_tokens=1000)
        assert bigger.area.sram_mm2 == pytest.approx(a.sram_mm2 * 10)


def test_cli_inspect_json(images, capsys):
    from hcemu.cli import main

    path = images[1]["int4"][0]
    assert main(["inspect", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["plan"]["name"] == "int4" and d["spec"]["name"] == SPEC.name
    assert len(d["report"]["tensors"]) == len(list(SPEC.matrices()))
    assert d["floorplan"]["total_mm2"] > 0
    assert main(["inspect", str(path), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in out and "floorplan (hc1 technology)" in out and "exact" in out


def test_cli_errors_are_clear(tmp_path, capsys):
    from hcemu.cli import main

    bad = tmp_path / "bad.hcrom"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert main(["compile", "no-such-model", "--out", str(tmp_path / "x.hcrom")]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.model
def test_compile_smollm2_cli(smollm2_gguf, tmp_path, capsys):
    pytest.importorskip("hcemu.model.gguf_source")
    from hcemu.cli import main

    out = tmp_path / "smol.hcrom"
    assert main(["compile", smollm2_gguf, "--plan", "int4", "--out", str(out), "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    q41 = [t for t in rep["tensors"] if t["source_type"] == "Q4_1" and t["kind"] != "embedding"]
    assert q41 and all(t["exact"] for t in q41)
    with RomImage.load(out) as img:
        assert img.spec.tied_embeddings and img.spec.n_layers == 30


def test_tied_model_with_different_output_format_notes_it(tmp_path):
    from hcemu.formats import Plan

    plan = Plan("tied-mixed", WeightFormat(4, 32, True), INT8_G32, WeightFormat(8, 64))
    rep = compile_model(FakeSource(SPEC_TIED), plan, tmp_path / "t.hcrom", progress=False)
    assert any("tied embeddings" in n and "int8-g32" in n for n in rep.notes)
    with RomImage.load(tmp_path / "t.hcrom") as img:
        assert img.matrix("output.weight").fmt == INT8_G32
        assert img.plan == plan and img.report.notes == rep.notes


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    compile_model(FakeSource(), "int8", tmp_path / "p.hcrom", progress=True)
    cap = capsys.readouterr()
    assert "compile fake-tiny int8" in cap.err and cap.out == ""
