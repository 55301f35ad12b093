"""SyntheticSource: lazy, reproducible, realistically scaled weights for any ModelSpec."""
import numpy as np
import pytest

from hcemu.model.spec import get_preset
from hcemu.model.synthetic import SyntheticSource
from model_helpers import TINY_SPEC


def test_names_shapes_and_scales():
    spec = get_preset("llama-3.2-1b")  # tied embeddings
    src = SyntheticSource(spec, seed=3)
    names = src.tensor_names()
    assert "output.weight" not in names and "token_embd.weight" in names
    assert len(names) == 1 + 7 * spec.n_layers + 2 * spec.n_layers + 1
    w = src.float32("blk.2.ffn_down.weight")
    assert w.shape == (2048, 8192) and w.dtype == np.float32
    assert w.std() == pytest.approx(1 / np.sqrt(8192), rel=0.01) and abs(w.mean()) < 1e-4
    n = src.float32("blk.0.attn_norm.weight")
    assert n.shape == (2048,) and n.mean() == pytest.approx(1.0, abs=0.01) and n.std() == pytest.approx(0.05, rel=0.1)
    r = src.raw("blk.0.attn_k.weight")
    assert r.ggml_type == "F32" and r.shape == (512, 2048) and r.data.shape == (512, 2048)
    with pytest.raises(KeyError, match="output.weight"):
        src.float32("output.weight")


def test_reproducible_and_independent_of_order():
    a = SyntheticSource(TINY_SPEC, seed=1)
    b = SyntheticSource(TINY_SPEC, seed=1)
    names = a.tensor_names()
    first = {n: a.float32(n) for n in names}
    for n in reversed(names):
        np.testing.assert_array_equal(b.float32(n), first[n])
    c = SyntheticSource(TINY_SPEC, seed=2)
    assert not np.array_equal(c.float32(names[3]), first[names[3]])
    assert not np.array_equal(first["blk.0.attn_q.weight"], first["blk.1.attn_q.weight"])
    with pytest.raises(ValueError):
        SyntheticSource(TINY_SPEC, seed=-1)
    with pytest.raises(TypeError):
        SyntheticSource("llama-3.1-8b")


def test_load_source(tmp_path):
    from hcemu.model import GGUFSource, SyntheticSource as S, load_source
    from model_helpers import write_tiny_gguf

    s = load_source("llama-3.1-8b")
    assert isinstance(s, S) and s.spec.name == "llama-3.1-8b"
    assert load_source(TINY_SPEC, seed=4).seed == 4
    p = tmp_path / "m.gguf"
    write_tiny_gguf(p)
    g = load_source(p)
    assert isinstance(g, GGUFSource) and g.spec.d_model == 64
    assert load_source(g) is g
    with pytest.raises(ValueError, match="preset"):
        load_source("gpt-5")
    with pytest.raises(TypeError):
        load_source(3)
