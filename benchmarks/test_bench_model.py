"""Benchmarks: synthetic weight generation and the float reference's decode step."""
import numpy as np
import pytest

from hcemu.model.spec import get_preset
from hcemu.model.synthetic import SyntheticSource


@pytest.fixture(scope="module")
def smollm2_path():
    from hcemu.model.fetch import fetch

    return fetch("smollm2", quiet=True)


def test_bench_synthetic_ffn_matrix(benchmark):
    """One Llama 3.1 8B ffn_down matrix (4096 x 14336 float32, 235 MB)."""
    src = SyntheticSource(get_preset("llama-3.1-8b"))
    w = benchmark(src.float32, "blk.0.ffn_down.weight")
    assert w.shape == (4096, 14336)


@pytest.mark.model
def test_bench_float_reference_decode(benchmark, smollm2_path):
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.reference import FloatLlama

    m = FloatLlama(GGUFSource(smollm2_path))
    m.prefill(list(range(100, 116)))

    def step():
        if m.pos >= 200:
            m.prefill(list(range(100, 116)))
        return m.decode(42)

    out = benchmark(step)
    assert out.shape == (49152,) and np.isfinite(out).all()
