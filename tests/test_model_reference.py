"""FloatLlama, the float32 reference: coherent text, plausible perplexity, logits pinned against an
independent float64 implementation, and incremental decode == whole-sequence logits."""
import math

import numpy as np
import pytest

from hcemu.model.gguf_source import GGUFSource
from hcemu.model.reference import FloatLlama, perplexity_from_logits, sample
from model_helpers import TINY_SPEC, write_tiny_gguf

# "The capital of France is" in SmolLM2 token ids (checked in test_pinned_prompt_tokens)
PROMPT_IDS = [504, 3575, 282, 4649, 314]
# logits at the last prompt position, from float64_llama_logits below (recorded once, then pinned):
# the four best next tokens (7042 = " Paris"), the worst one, and two arbitrary ids
PINNED = {7042: 17.371259238316302, 260: 14.888588701587826, 4528: 13.24497357677468,
          2250: 13.00946693663823, 38362: -19.793087586970408, 0: 1.6136390668220617, 1000: 2.867228695250596}


def float64_llama_logits(path, tokens):
    """A deliberately separate Llama: float64, token by token, head by head, explicit pair rotation.

    It reads the file with gguf.GGUFReader itself (no hcemu code), dequantizes with gguf.quants, and
    shares nothing with hcemu.model.reference or hcemu.model.ops.
    """
    import gguf

    r = gguf.GGUFReader(str(path))
    tens = {t.name: t for t in r.tensors}

    def meta(key):
        return r.fields[key].contents()

    def weight(name):
        t = tens[name]
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        return np.asarray(a, dtype=np.float64).reshape([int(d) for d in t.shape[::-1]])

    n_layer = meta("llama.block_count")
    n_head = meta("llama.attention.head_count")
    n_kv = meta("llama.attention.head_count_kv")
    d = meta("llama.embedding_length")
    hd = d // n_head
    eps = meta("llama.attention.layer_norm_rms_epsilon")
    base = meta("llama.rope.freq_base")
    emb = weight("token_embd.weight")
    out_w = weight("output.weight") if "output.weight" in tens else emb

    def norm(v, w):
        return v / math.sqrt(float(np.dot(v, v)) / v.size + eps) * w

    pair = np.arange(hd // 2)
    inv_freq = 1.0 / np.power(float(base), 2.0 * pair / hd)

    def rotate(vec, pos):
        """Rotate (vec[2i], vec[2i+1]) by pos * base^(-2i/hd), pair by pair."""
        a, b = vec[0::2], vec[1::2]
        c, s = np.cos(pos * inv_freq), np.sin(pos * inv_freq)
        out = np.empty_like(vec)
        out[0::2] = a * c - b * s
        out[1::2] = a * s + b * c
        return out

    xs = [emb[t].copy() for t in tokens]
    for li in range(n_layer):
        Wq, Wk, Wv, Wo = (weight(f"blk.{li}.attn_{k}.weight") for k in ("q", "k", "v", "output"))
        Wg, Wu, Wd = (weight(f"blk.{li}.ffn_{k}.weight") for k in ("gate", "up", "down"))
        an, fn = weight(f"blk.{li}.attn_norm.weight"), weight(f"blk.{li}.ffn_norm.weight")
        keys, vals = [], []  # per position: list over kv heads
        for p, x in enumerate(xs):
            h = norm(x, an)
            k_all, v_all = Wk @ h, Wv @ h
            keys.append([rotate(k_all[j * hd:(j + 1) * hd], p) for j in range(n_kv)])
            vals.append([v_all[j * hd:(j + 1) * hd] for j in range(n_kv)])
        new_xs = []
        for p, x in enumerate(xs):
            h = norm(x, an)
            q_all = Wq @ h
            heads = []
            for hh in range(n_head):
                kvh = hh // (n_head // n_kv)
                q = rotate(q_all[hh * hd:(hh + 1) * hd], p)
                s = [float(np.dot(q, keys[j][kvh])) / math.sqrt(hd) for j in range(p + 1)]
                m = max(s)
                e = [math.exp(z - m) for z in s]
                tot = math.fsum(e)
                o = np.zeros(hd)
                for j in range(p + 1):
                    o += (e[j] / tot) * vals[j][kvh]
                heads.append(o)
            x = x + Wo @ np.concatenate(heads)
            h = norm(x, fn)
            g, u = Wg @ h, Wu @ h
            x = x + Wd @ (g / (1.0 + np.exp(-g)) * u)
            new_xs.append(x)
        xs = new_xs
    on = weight("output_norm.weight")
    return np.array([out_w @ norm(x, on) for x in xs])


# ---------------------------------------------------------------- tiny model (no download needed)
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "tiny.gguf"
    write_tiny_gguf(path, seed=5)
    return path


def test_tiny_matches_float64_implementation(tiny_path):
    toks = [3, 17, 42, 5, 79, 0, 11]
    want = float64_llama_logits(tiny_path, toks)
    got = FloatLlama(GGUFSource(tiny_path)).logits(toks)
    assert got.dtype == np.float32 and got.shape == (7, TINY_SPEC.vocab_size)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)


def test_tiny_incremental_decode_equals_full(tiny_path):
    m = FloatLlama(GGUFSource(tiny_path))
    toks = list(np.random.default_rng(1).integers(0, TINY_SPEC.vocab_size, 140))
    full = m.logits(toks, chunk=16)
    rows = [m.prefill(toks[:10])]
    rows += [m.decode(t) for t in toks[10:]]
    inc = np.array(rows)
    np.testing.assert_allclose(inc, full[9:], atol=1e-4 * np.abs(full).max(), rtol=0)
    assert m.pos == len(toks)
    # chunk size does not matter beyond rounding
    np.testing.assert_allclose(m.logits(toks, chunk=7), full, atol=1e-4 * np.abs(full).max(), rtol=0)


def test_tiny_errors_and_sampling(tiny_path):
    m = FloatLlama(GGUFSource(tiny_path))
    with pytest.raises(ValueError, match="80"):
        m.logits([1, 80])
    with pytest.raises(ValueError, match="context"):
        m.logits(list(range(60)) * 5)  # 300 > max_context 256
    with pytest.raises(ValueError, match="float32"):
        FloatLlama(GGUFSource(tiny_path), dtype=np.float64)
    a = m.generate([1, 2, 3], 8, greedy=False, temperature=0.8, top_k=5, seed=3)
    b = m.generate([1, 2, 3], 8, greedy=False, temperature=0.8, top_k=5, seed=3)
    assert a == b and len(a) == 8
    g = m.generate([1, 2, 3], 5)
    assert g[0] == int(np.argmax(m.prefill([1, 2, 3])))
    assert sample(np.array([0.0, 5.0, 1.0])) == 1
    lg = np.zeros((3, 4))
    assert perplexity_from_logits(lg, [0, 1, 2]) == pytest.approx(4.0)  # uniform over 4 tokens


# ---------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    from hcemu.model.tokenizer import Tokenizer

    src = GGUFSource(smollm2_gguf)
    return FloatLlama(src), Tokenizer.from_gguf(src)


@pytest.mark.model
def test_pinned_prompt_tokens(smol):
    _, tok = smol
    assert tok.encode("The capital of France is") == PROMPT_IDS
    assert tok.id_to_token(7042) == "ĠParis"


@pytest.mark.model
def test_smollm2_logits_match_float64_implementation(smol, smollm2_gguf):
    model, _ = smol
    want = float64_llama_logits(smollm2_gguf, PROMPT_IDS)
    got = model.logits(PROMPT_IDS)
    scale = np.abs(want).max()
    # measured: max |float32 - float64| = 4.7e-5 with max |logit| = 27.4 (1.7e-6 relative)
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)
    assert np.array_equal(np.argmax(got, -1), np.argmax(want, -1))
    assert int(np.argmax(want[-1])) == 7042
    for tid, value in PINNED.items():
        assert want[-1, tid] == pytest.approx(value, abs=1e-6), tid
        assert got[-1, tid] == pytest.approx(value, abs=2e-5 * scale), tid


@pytest.mark.model
def test_smollm2_answers_paris(smol):
    model, tok = smol
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    out = tok.decode(model.generate(prompt, 12, stop_ids=[tok.eos_id]), skip_special=True)
    assert "Paris" in out, out


@pytest.mark.model
def test_smollm2_licence_perplexity(smol):
    from hcemu.model.texts import licence_text

    model, tok = smol
    ids = tok.encode(licence_text())[:1024]
    assert len(ids) == 1024
    ppl = model.perplexity(ids)
    print(f"SmolLM2-135M Q4_1 float32 reference perplexity on 1024 licence tokens: {ppl:.3f}")
    assert 5.0 < ppl < 40.0


@pytest.mark.model
def test_smollm2_incremental_decode(smol):
    model, tok = smol
    ids = tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")
    full = model.logits(ids)
    inc = [model.prefill(ids[:5])] + [model.decode(t) for t in ids[5:]]
    np.testing.assert_allclose(np.array(inc), full[4:], atol=1e-4 * np.abs(full).max(), rtol=0)
