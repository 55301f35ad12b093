"""Every supported architecture checked against llama.cpp (llama-cpp-python, the optional ``peer`` extra).

Small GGUFs with random weights of realistic scales (tests/arch_models.py) over the SmolLM2 tokenizer:

* hcemu's float reference against llama.cpp on the F32 file: max |delta logit| <= 1e-3 x the logits'
  standard deviation and the same top-1 at every position. llama.cpp's CPU GELU reads a float16 table
  (``GGML_GELU_FP16``: input and output rounded to half precision), so for the GeGLU architectures
  (gemma2, gemma3) the bound holds against the reference with that table emulated here, and the
  exact-GELU reference stays within 3e-3 x std (mean KLD < 1e-6);
* the chip under the int8 plan against llama.cpp on the Q8_0 file of the same weights: mean KLD <= 0.01.
"""
from __future__ import annotations

import numpy as np
import pytest

from arch_models import ARCH_SPECS, arch_weights, write_arch_gguf

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = [pytest.mark.model, pytest.mark.slow]

ARCHS = list(ARCH_SPECS)
GEGLU = {n for n, s in ARCH_SPECS.items() if s.ffn_act == "gelu"}
N_TOKENS = 40
GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory, smollm2_gguf):
    """``arch_file(name, types)``: the path of that architecture's GGUF (written once per module)."""
    root = tmp_path_factory.mktemp("arch")
    cache = {}

    def get(name, types="F32"):
        key = (name, types)
        if key not in cache:
            path = root / f"{name}-{types}.gguf"
            write_arch_gguf(path, ARCH_SPECS[name], arch_weights(ARCH_SPECS[name], seed=0), smollm2_gguf, types)
            cache[key] = path
        return cache[key]
    return get


def tokens() -> np.ndarray:
    return np.random.default_rng(1).integers(0, ARCH_SPECS["llama"].vocab_size, N_TOKENS)


def llamacpp_logits(path, toks, f32_cache: bool) -> np.ndarray:
    """llama.cpp's logits (t, vocab) for every position, one thread, no flash attention, the whole
    sliding-window cache kept; an F32 KV cache for the float comparison."""
    kw = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_batch=128, n_ubatch=128, logits_all=True,
                          verbose=False, flash_attn=False, n_threads=1, swa_full=True, **kw)
    try:
        llm.eval([int(t) for t in toks])
        return np.array(llm.scores[:len(toks)], dtype=np.float64)
    finally:
        llm.close()


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kld(p_logits, q_logits) -> np.ndarray:
    """KL(p || q) per row, p the peer."""
    p, q = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(p) * (p - q)).sum(axis=-1)


def gelu_fp16_table(x):
    """llama.cpp's CPU GELU: the input rounded to float16 indexes a table of float16 GELU values
    (exact for |x| >= 10: 0 below, x above)."""
    from hcemu.model import ops

    x = np.asarray(x, np.float32)
    y = ops._exact_gelu(x.astype(np.float16).astype(np.float32)).astype(np.float16).astype(np.float32)
    return np.where(x <= -10, np.float32(0), np.where(x >= 10, x, y))


@pytest.mark.parametrize("name", ARCHS)
def test_float_reference_matches_llamacpp(name, arch_file, monkeypatch):
    from hcemu.model import ops
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.reference import FloatLlama

    path = arch_file(name)
    toks = tokens()
    peer = llamacpp_logits(path, toks, f32_cache=True)
    with GGUFSource(path) as src:
        spec = src.spec
        want = ARCH_SPECS[name]
        assert {k: v for k, v in spec.to_dict().items() if k not in ("name", "source")} == \
            {k: v for k, v in want.to_dict().items() if k not in ("name", "source")}
        ref = FloatLlama(src)
        ours = ref.logits(toks).astype(np.float64)
        std = peer.std()
        assert (ours.argmax(-1) == peer.argmax(-1)).all()
        delta = np.abs(ours - peer).max() / std
        if name in GEGLU:
            assert delta <= 3e-3 and kld(peer, ours).mean() < 1e-6, (delta, kld(peer, ours).mean())
            monkeypatch.setattr(ops, "_exact_gelu", ops.gelu, raising=False)
            monkeypatch.setattr(ops, "gelu", gelu_fp16_table)
            ours = ref.logits(toks).astype(np.float64)
            assert (ours.argmax(-1) == peer.argmax(-1)).all()
            delta = np.abs(ours - peer).max() / std
        assert delta <= 1e-3, delta
        assert kld(peer, ours).mean() < 1e-8


@pytest.mark.parametrize("name", ARCHS)
def test_int8_chip_matches_llamacpp_q8_0(name, arch_file, tmp_path_factory):
    """The chip under the int8 plan (Q8_0 matrices imported without loss, int8 activations per block
    of 32, int8 KV) against llama.cpp on the same Q8_0 file (its default f16 KV cache)."""
    from hcemu.chip.chip import Chip
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model

    path = arch_file(name, "Q8_0")
    toks = tokens()
    peer = llamacpp_logits(path, toks, f32_cache=False)
    out = tmp_path_factory.mktemp("q8") / f"{name}.hcrom"
    with GGUFSource(path) as src:
        report = compile_model(src, "int8", out, progress=False)
    assert all(t["method"] == "import" for t in report.tensors if t["source_type"] == "Q8_0")
    chip = Chip(RomImage.load(out))
    ours = chip.prefill(toks, all_logits=True).logits
    k = kld(peer, ours)
    assert k.mean() <= 0.01, (k.mean(), k.max())
