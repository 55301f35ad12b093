"""GGUFSource: metadata -> ModelSpec, raw blocks, dequantisation, bad files."""
import numpy as np
import pytest

from hcemu.model.gguf_source import GGUFSource
from hcemu.model.spec import RopeScaling, get_preset
from hcemu.model.ops import llama3_frequency_divisors
from model_helpers import TINY_SPEC, tiny_weights, write_tiny_gguf


def decode_blocks(raw: np.ndarray, ggml_type: str) -> np.ndarray:
    """Independent block decoder from the GGUF block layouts (not gguf.quants)."""
    n_out = raw.shape[0]
    if ggml_type == "Q8_0":
        b = raw.reshape(n_out, -1, 34)
        d = b[..., :2].copy().view(np.float16).astype(np.float32)
        q = b[..., 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(n_out, -1)
    if ggml_type in ("Q4_0", "Q4_1"):
        hdr = 2 if ggml_type == "Q4_0" else 4
        b = raw.reshape(n_out, -1, hdr + 16)
        d = b[..., :2].copy().view(np.float16).astype(np.float32)
        qs = b[..., hdr:]
        nib = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)  # low nibbles = elements 0..15
        if ggml_type == "Q4_0":
            return ((nib - 8) * d).reshape(n_out, -1)
        m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
        return (nib * d + m).reshape(n_out, -1)
    raise AssertionError(ggml_type)


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    stored = write_tiny_gguf(path, types={"token_embd": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q8_0", "attn_v": "Q4_0",
                                          "attn_output": "F16", "ffn_gate": "BF16", "ffn_up": "Q4_1",
                                          "ffn_down": "F32", "output": "Q8_0"})
    return path, stored


def test_tiny_spec(tiny_gguf):
    path, _ = tiny_gguf
    with GGUFSource(path) as src:
        s = src.spec
        assert (s.n_layers, s.d_model, s.n_heads, s.n_kv_heads, s.head_dim, s.d_ff, s.vocab_size) == \
            (2, 64, 4, 2, 16, 96, 80)
        assert s.rope_theta == 10000.0 and s.norm_eps == 1e-5 and s.max_context == 256
        assert s.rope_scaling is None
        assert s.tied_embeddings is False  # output.weight present
        names = set(src.tensor_names())
        assert {n for n, *_ in s.matrices()} <= names and {n for n, *_ in s.norms()} <= names


def test_tiny_tensors_every_type(tiny_gguf):
    path, stored = tiny_gguf
    exact = tiny_weights(TINY_SPEC)
    src = GGUFSource(path)
    seen = set()
    for name, kind, _layer, shape in TINY_SPEC.matrices():
        r = src.raw(name)
        f = src.float32(name)
        seen.add(r.ggml_type)
        assert r.shape == shape and f.shape == shape and f.dtype == np.float32
        if r.ggml_type in ("Q8_0", "Q4_0", "Q4_1"):
            bpb = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[r.ggml_type]
            assert r.data.dtype == np.uint8 and r.data.shape == (shape[0], shape[1] // 32 * bpb)
            np.testing.assert_array_equal(f, decode_blocks(r.data, r.ggml_type))
            # quantisation error is bounded by the block step
            err = np.abs(f - exact[name]).max() / np.abs(exact[name]).max()
            assert err < {"Q8_0": 0.01, "Q4_0": 0.15, "Q4_1": 0.1}[r.ggml_type], (name, err)
        elif r.ggml_type == "F16":
            assert r.data.dtype == np.float16
            np.testing.assert_array_equal(f, exact[name].astype(np.float16).astype(np.float32))
        elif r.ggml_type == "BF16":
            assert r.data.dtype == np.uint16
            np.testing.assert_array_equal(f, (exact[name].view(np.uint32) & 0xFFFF0000).view(np.float32))
        else:
            np.testing.assert_array_equal(f, exact[name])
        np.testing.assert_array_equal(f, stored[name])
    assert seen == {"Q8_0", "Q4_0", "Q4_1", "F16", "BF16", "F32"}
    np.testing.assert_array_equal(src.float32("output_norm.weight"), exact["output_norm.weight"])


def test_missing_tensor_and_unsupported_type(tmp_path):
    import gguf

    path = tmp_path / "iq4nl.gguf"
    write_tiny_gguf(path, types={"attn_q": "IQ4_NL"})
    src = GGUFSource(path)
    with pytest.raises(KeyError, match="nope.weight"):
        src.raw("nope.weight")
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.weight.*IQ4_NL"):
        src.raw("blk.0.attn_q.weight")
    with pytest.raises(ValueError, match=r"blk\.1\.attn_q\.weight.*IQ4_NL"):
        src.float32("blk.1.attn_q.weight")
    assert src.float32("blk.0.attn_k.weight").shape == (32, 64)
    assert gguf  # the writer above used gguf


def test_other_architecture_rejected(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, arch="qwen2")
    with pytest.raises(ValueError, match="qwen2"):
        GGUFSource(path)


def test_truncated_and_garbage_files(tmp_path, tiny_gguf):
    path, _ = tiny_gguf
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 200, 10):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"truncated|not a readable GGUF"):
            GGUFSource(p)
    g = tmp_path / "garbage.gguf"
    g.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a readable GGUF"):
        GGUFSource(g)
    # right magic, garbage after it
    g2 = tmp_path / "garbage2.gguf"
    g2.write_bytes(b"GGUF" + bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)))
    with pytest.raises(ValueError):
        GGUFSource(g2)
    with pytest.raises(FileNotFoundError):
        GGUFSource(tmp_path / "absent.gguf")


@pytest.mark.parametrize("scaling", [RopeScaling(8.0, 1.0, 4.0, 8192), RopeScaling(32.0, 2.0, 6.0, 4096)])
def test_rope_freqs_tensor_gives_llama3_scaling(tmp_path, scaling):
    hd, theta = 64, 500000.0
    spec = TINY_SPEC.__class__(**{**TINY_SPEC.to_dict(), "rope_theta": theta, "head_dim": hd})
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    f = llama3_frequency_divisors(inv, scaling)
    assert ((f > 1.01) & (f < scaling.factor - 0.01)).sum() >= 2  # several frequencies in the blend
    path = tmp_path / "l3.gguf"
    write_tiny_gguf(path, spec=spec, rope_freqs=f, extra_kv={"llama.rope.scaling.original_context_length":
                                                              scaling.original_context})
    got = GGUFSource(path).spec.rope_scaling
    assert got == RopeScaling(scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor,
                              scaling.original_context)
    # a rope_freqs that is not Llama 3 scaling is rejected
    path2 = tmp_path / "bad.gguf"
    write_tiny_gguf(path2, spec=spec, rope_freqs=np.linspace(1, 8, hd // 2)[::-1])
    with pytest.raises(ValueError, match="rope_freqs"):
        GGUFSource(path2)


@pytest.mark.model
def test_smollm2_file(smollm2_gguf):
    src = GGUFSource(smollm2_gguf)
    s, p = src.spec, get_preset("smollm2-135m")
    for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "rope_theta",
              "rope_scaling", "norm_eps", "tied_embeddings", "max_context"):
        assert getattr(s, f) == getattr(p, f), f
    types = {}
    for n in src.tensor_names():
        types[src.raw(n).ggml_type] = types.get(src.raw(n).ggml_type, 0) + 1
    assert types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    r = src.raw("blk.0.ffn_down.weight")
    assert r.shape == (576, 1536) and r.data.shape == (576, 1536 // 32 * 20)
    np.testing.assert_array_equal(src.float32("blk.0.ffn_down.weight"), decode_blocks(r.data, "Q4_1"))
    e = src.raw("token_embd.weight")
    assert e.ggml_type == "Q8_0" and e.data.shape == (49152, 576 // 32 * 34)
    np.testing.assert_array_equal(src.float32("token_embd.weight")[:100], decode_blocks(e.data[:100], "Q8_0"))
    assert src.metadata["tokenizer.ggml.pre"] == "smollm"
