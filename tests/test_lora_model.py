"""LoRA adapters at the model layer: llama.cpp's adapter GGUF read and written, checked against the
model, and applied by the float reference on a side path."""
import numpy as np
import pytest

from hcemu.model.lora import (LoraError, load_lora, lora_scale, parse_lora_arg, random_lora_pairs,
                              write_lora)
from model_helpers import TINY_SPEC, write_tiny_gguf


def _raw_adapter(path, tensors, *, gtype="adapter", atype="lora", arch="llama", alpha=8.0):
    """An adapter GGUF with arbitrary tensors and metadata (to make malformed files)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    if gtype is not None:
        w.add_type(gtype)
    if atype is not None:
        w.add_string("adapter.type", atype)
    if alpha is not None:
        w.add_float32("adapter.lora.alpha", alpha)
    for name, arr in tensors.items():
        if isinstance(arr, tuple):  # (raw bytes, shape, type)
            w.add_tensor(name, arr[0], raw_shape=arr[1], raw_dtype=arr[2])
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _pair(kind="attn_q", r=4, seed=0):
    n, k = TINY_SPEC.matrix_shape(kind)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((r, k)).astype(np.float32), rng.standard_normal((n, r)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["F32", "F16", "Q8_0"])
def test_write_and_load_round_trip(tmp_path, dtype):
    import gguf

    pairs = random_lora_pairs(TINY_SPEC, 32 if dtype == "Q8_0" else 8, seed=1)
    path = tmp_path / "a.gguf"
    write_lora(path, pairs, alpha=16.0, dtype=dtype)
    ad = load_lora(path, TINY_SPEC, scale=0.5)
    assert ad.name == "a" and ad.alpha == 16.0 and ad.user_scale == 0.5
    assert len(ad.pairs) == TINY_SPEC.n_layers * 7
    assert ad.matrices()[0] == (0, "attn_q") and ad.matrices()[-1] == (1, "ffn_down")
    for key, (a, b) in pairs.items():
        p = ad.pairs[key]
        assert p.a.shape == a.shape and p.b.shape == b.shape and p.a.dtype == np.float32
        assert p.scale == 0.5 * 16.0 / a.shape[0]
        if dtype == "F32":
            np.testing.assert_array_equal(p.a, a)
        elif dtype == "F16":
            np.testing.assert_array_equal(p.b, b.astype(np.float16).astype(np.float32))
        else:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(p.a, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
    d = ad.pairs[(1, "ffn_up")].delta()
    np.testing.assert_allclose(d, p_scale_b_a(ad.pairs[(1, "ffn_up")]), rtol=1e-5, atol=1e-7)


def p_scale_b_a(p):
    return p.scale * (p.b.astype(np.float64) @ p.a.astype(np.float64))


def test_scale_rule_is_llama_cpps():
    assert lora_scale(32.0, 16) == 2.0
    assert lora_scale(32.0, 16, 0.5) == 1.0
    assert lora_scale(0.0, 16, 0.75) == 0.75  # alpha 0: the user scale alone
    with pytest.raises(LoraError, match="rank"):
        lora_scale(8.0, 0)


def test_parse_lora_arg():
    assert parse_lora_arg("a.gguf") == ("a.gguf", 1.0)
    assert parse_lora_arg("dir/a.gguf:0.25") == ("dir/a.gguf", 0.25)
    assert parse_lora_arg("C:/x/a.gguf") == ("C:/x/a.gguf", 1.0)
    with pytest.raises(LoraError, match="finite"):
        parse_lora_arg("a.gguf:nan")


def test_random_pairs_have_the_asked_magnitude():
    pairs = random_lora_pairs(TINY_SPEC, 16, relative=0.1, seed=3, layers=[0])
    a, b = pairs[(0, "ffn_down")]
    k = a.shape[1]
    rms = np.sqrt(np.mean((2.0 * b.astype(np.float64) @ a) ** 2))
    assert rms == pytest.approx(0.1 / np.sqrt(k), rel=0.15)


@pytest.mark.parametrize("case, match", [
    ("model", "not 'adapter'"),
    ("ia3", "only 'lora'"),
    ("arch", "architecture"),
    ("unknown", "unknown tensor"),
    ("embedding", "only the layer matrices"),
    ("layer", "layer 7"),
    ("missing_b", "lora_b is missing"),
    ("shape", "do not fit"),
    ("rank_mismatch", "rank"),
    ("nan", "NaN"),
    ("q4_0", "Q4_0"),
    ("empty", "no lora_a"),
    ("alpha", "alpha"),
])
def test_malformed_adapters_are_refused_by_name(tmp_path, case, match):
    import gguf

    a, b = _pair()
    t = {"blk.0.attn_q.weight.lora_a": a, "blk.0.attn_q.weight.lora_b": b}
    kw = {}
    if case == "model":
        kw["gtype"] = "model"
    elif case == "ia3":
        kw["atype"] = "ia3"
    elif case == "arch":
        kw["arch"] = "qwen2"
    elif case == "unknown":
        t["blk.0.attn_q.bias.lora_a"] = a
    elif case == "embedding":
        t = {"blk.0.token_embd.weight.lora_a": a, "blk.0.token_embd.weight.lora_b": b}
    elif case == "layer":
        t = {"blk.7.attn_q.weight.lora_a": a, "blk.7.attn_q.weight.lora_b": b}
    elif case == "missing_b":
        del t["blk.0.attn_q.weight.lora_b"]
    elif case == "shape":
        t["blk.0.attn_q.weight.lora_a"] = a[:, :32].copy()
    elif case == "rank_mismatch":
        t["blk.0.attn_q.weight.lora_b"] = b[:, :3].copy()
    elif case == "nan":
        a = a.copy()
        a[1, 2] = np.nan
        t["blk.0.attn_q.weight.lora_a"] = a
    elif case == "q4_0":
        q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q4_0)
        t["blk.0.attn_q.weight.lora_a"] = (q, q.shape, gguf.GGMLQuantizationType.Q4_0)
    elif case == "empty":
        t = {}
    elif case == "alpha":
        kw["alpha"] = float("inf")
    path = _raw_adapter(tmp_path / f"{case}.gguf", t, **kw)
    with pytest.raises(LoraError, match=match):
        load_lora(path, TINY_SPEC)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_lora(tmp_path / "nope.gguf", TINY_SPEC)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(LoraError, match="not a readable GGUF"):
        load_lora(junk, TINY_SPEC)
    good = tmp_path / "good.gguf"
    write_lora(good, random_lora_pairs(TINY_SPEC, 4), alpha=8)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(LoraError):
        load_lora(cut, TINY_SPEC)
    with pytest.raises(LoraError, match="scale"):
        load_lora(good, TINY_SPEC, scale=float("nan"))
    with pytest.raises(LoraError, match="dtype"):
        write_lora(tmp_path / "x.gguf", {}, alpha=1, dtype="Q4_0")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from hcemu.model.gguf_source import GGUFSource

    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_gguf(path)
    return GGUFSource(path)


def test_reference_with_adapter_equals_merged_weights(tiny_model, tmp_path):
    """The side path s*B(Ax) gives what a model with W + s*B@A merged gives (float32 rounding apart)."""
    from hcemu.model.reference import FloatLlama
    from hcemu.model.source import ModelSource

    pairs = random_lora_pairs(TINY_SPEC, 8, relative=0.3, seed=5)
    path = tmp_path / "a.gguf"
    write_lora(path, pairs, alpha=4.0)
    ad = load_lora(path, TINY_SPEC, scale=1.5)

    class Merged(ModelSource):
        spec = TINY_SPEC

        def tensor_names(self):
            return tiny_model.tensor_names()

        def raw(self, name):
            return tiny_model.raw(name)

        def float32(self, name):
            w = tiny_model.float32(name)
            parts = name.split(".")
            if parts[0] == "blk" and (int(parts[1]), parts[2]) in ad.pairs:
                w = (w + p_scale_b_a(ad.pairs[(int(parts[1]), parts[2])])).astype(np.float32)
            return w

    toks = np.arange(1, 40) % TINY_SPEC.vocab_size
    base = FloatLlama(tiny_model).logits(toks)
    side = FloatLlama(tiny_model, adapters=ad).logits(toks)
    merged = FloatLlama(Merged()).logits(toks)
    scale = np.abs(merged).max()
    assert np.abs(side - base).max() > 0.05 * scale  # the adapter does something
    np.testing.assert_allclose(side, merged, rtol=0, atol=1e-4 * scale)
    # set_adapters switches it off again, and two adapters add up
    m = FloatLlama(tiny_model, adapters=ad)
    m.set_adapters(())
    np.testing.assert_array_equal(m.logits(toks), base)
    half = load_lora(path, TINY_SPEC, scale=0.75)
    m.set_adapters([half, half])
    np.testing.assert_allclose(m.logits(toks), side, rtol=0, atol=1e-4 * scale)
    with pytest.raises(TypeError):
        m.set_adapters(["x"])
