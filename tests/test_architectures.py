"""Block kinds beyond Llama on the chip: the vector-unit kernels they add (NeoX RoPE, GELU gate, biases,
scaling, soft-capping) and the attention options (score scale, soft-cap, sliding window) against their
numpy oracles on every ISA path; and every architecture of tests/arch_models.py compiled and run on the
chip, the compiled layer pass bit-identical to the interpreted one, events equal to the analytical
generator's, logits close to the float reference."""
from dataclasses import replace

import numpy as np
import pytest

import hcemu
from hcemu import _core
from hcemu.events import Events, attended_keys
from hcemu.kernels import vector
from hcemu.kernels.attention import KVCache, attention
from hcemu.kernels.attention_ref import attention_float64, attention_ref
from hcemu.kernels.vector_ref import gelu_mul_ref, rope_ref, softcap_ref, tanh_ref

from arch_models import ARCH_SPECS, arch_weights, write_arch_gguf

ISAS = _core.isa_supported()
DENSE = [n for n, s in ARCH_SPECS.items() if not s.is_moe]
MOE = [n for n, s in ARCH_SPECS.items() if s.is_moe]
pytestmark = pytest.mark.usefixtures("restore_isa")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- vector unit ---------------------------------------------------------------------------------

def test_new_vector_kernels_bit_exact_on_every_path():
    rng = np.random.default_rng(0)
    x = rand(rng, 7, 3, 24, scale=3)
    cos, sin = np.cos(rand(rng, 7, 12)), np.sin(rand(rng, 7, 12))
    g, u = rand(rng, 5, 301, scale=4), rand(rng, 5, 301)
    g[0, :6] = [0, -0.0, 12, -12, 40, -40]
    b = rand(rng, 301)
    for isa in ISAS:
        hcemu.set_isa(isa)
        for style in ("normal", "neox"):
            np.testing.assert_array_equal(vector.rope(x, cos, sin, style=style), rope_ref(x, cos, sin, style))
        np.testing.assert_array_equal(vector.gelu_mul(g, u), gelu_mul_ref(g, u), err_msg=isa)
        y = g.copy()
        np.testing.assert_array_equal(vector.softcap_(y, 7.5), softcap_ref(g, 7.5), err_msg=isa)
        y = g.copy()
        np.testing.assert_array_equal(vector.add_rows_(y, b), g + b)
        y = g.copy()
        np.testing.assert_array_equal(vector.scale_(y, 8.0), g * np.float32(8))
    # the halves really are the pairs: neox equals normal RoPE on the interleaved head
    perm = np.arange(24).reshape(2, 12).T.reshape(-1)            # j, j + 12 -> 2j, 2j + 1
    np.testing.assert_array_equal(vector.rope(x, cos, sin, style="neox")[..., perm],
                                  vector.rope(np.ascontiguousarray(x[..., perm]), cos, sin))
    with pytest.raises(ValueError, match="style"):
        vector.rope(x, cos, sin, style="gptj")
    with pytest.raises(ValueError, match="cap must be positive"):
        vector.softcap_(g.copy(), 0.0)


def test_gelu_and_tanh_accuracy():
    x = np.linspace(-12, 12, 200_001, dtype=np.float32)
    t = tanh_ref(x)
    assert np.abs(t - np.tanh(x.astype(np.float64))).max() < 3e-7
    got = vector.gelu_mul(x[None], np.ones_like(x)[None])[0].astype(np.float64)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert np.abs(got - want).max() < 2e-6
    assert got[x <= -10].max() <= 0 and np.array_equal(got[x >= 10], x64[x >= 10])


# ---- attention options -----------------------------------------------------------------------------

def filled(rng, hkv, hd, n, fmt):
    cache = KVCache(1, hkv, hd, n + 4, fmt=fmt)
    cache.append(0, rand(rng, n, hkv, hd), rand(rng, n, hkv, hd))
    cache.commit(n)
    return cache


def oracle(q, cache, start, **kw):
    if cache.fmt == "int8":
        return attention_ref(q, cache.k_codes[0], cache.v_codes[0], start, k_scales=cache.k_scales[0].view(np.float16),
                             v_scales=cache.v_scales[0].view(np.float16), **kw)
    return attention_ref(q, cache.k[0].view(np.float16), cache.v[0].view(np.float16), start, **kw)


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("opts", [dict(window=8), dict(window=70), dict(softcap=2.5), dict(scale=0.05),
                                  dict(window=5, softcap=4.0, scale=0.3)])
def test_attention_options_bit_exact_on_every_path(fmt, opts):
    rng = np.random.default_rng(1)
    hkv, G, hd, n, t = 2, 3, 32, 150, 70
    cache = filled(rng, hkv, hd, n, fmt)
    q = rand(rng, t, hkv * G, hd, scale=2)
    want = oracle(q, cache, n - t, **opts)
    for isa in ISAS:
        hcemu.set_isa(isa)
        got = attention(q, cache, 0, n - t, **opts)
        np.testing.assert_array_equal(got, want, err_msg=isa)
        # a prefill chunk gives exactly what single queries give
        steps = np.concatenate([attention(q[i:i + 1], cache, 0, n - t + i, **opts) for i in range(0, t, 13)])
        np.testing.assert_array_equal(steps, got[::13])


def test_window_and_softcap_mean_what_they_say():
    rng = np.random.default_rng(2)
    hkv, H, hd, n, W = 1, 2, 16, 40, 6
    k, v = rand(rng, n, hkv, hd), rand(rng, n, hkv, hd)
    cache = KVCache(1, hkv, hd, n, fmt="fp16")
    cache.append(0, k, v)
    cache.commit(n)
    q = rand(rng, 3, H, hd)
    got = attention(q, cache, 0, n - 3, window=W)
    want = np.concatenate([attention_float64(q[i:i + 1], k[p - W + 1:p + 1], v[p - W + 1:p + 1], W - 1)
                           for i, p in enumerate(range(n - 3, n))])
    np.testing.assert_allclose(got, want, atol=2e-3)
    # soft-capped scores: a low cap flattens the softmax
    flat = attention(q[-1:], cache, 0, n - 1, softcap=1e-3).reshape(H, hd)   # scores within +-1e-3: uniform
    np.testing.assert_allclose(flat, np.broadcast_to(v[:, 0].mean(0), (H, hd)), atol=5e-3)
    with pytest.raises(ValueError, match="must be >= 0"):
        attention(q, cache, 0, n - 3, window=-1)


def test_attention_events_with_window_and_softcap():
    rng = np.random.default_rng(3)
    hkv, H, hd, W = 1, 4, 16, 5
    cache = KVCache(1, hkv, hd, 32)
    ev = Events(1)
    t, start = 9, 0
    for _ in range(3):
        cache.append(0, rand(rng, t, hkv, hd), rand(rng, t, hkv, hd))
        attention(rand(rng, t, H, hd), cache, 0, start, events=ev, window=W, softcap=3.0)
        cache.commit(t)
        start += t
        t = 1
    keys = attended_keys(np.arange(11), W)
    assert keys == sum(min(p + 1, W) for p in range(11))
    r = ev.region(0)
    assert r["sram_kv_bytes_read"] == keys * 2 * hkv * (hd + 2)
    assert r["attn_macs"] == 2 * H * hd * keys
    assert r["vec_flops"] == 11 * H * keys and r["vec_transcendentals"] == 2 * H * keys


# ---- every architecture on the chip ---------------------------------------------------------------

def small(name):
    return replace(ARCH_SPECS[name], vocab_size=512, max_context=256)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """``images(name, plan)``: (source, RomImage) of a 512-token version of the architecture."""
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model

    root = tmp_path_factory.mktemp("blocks")
    cache = {}

    def get(name, plan="int8"):
        if (name, plan) not in cache:
            spec = small(name)
            path = root / f"{name}.gguf"
            if not path.exists():
                write_arch_gguf(path, spec, arch_weights(spec))
            src = GGUFSource(path)
            out = root / f"{name}-{plan}.hcrom"
            compile_model(src, plan, out, progress=False)
            cache[(name, plan)] = (src, RomImage.load(out))
        return cache[(name, plan)]
    return get


def run(chip, toks, split):
    """Prefill toks[:split] (every position's logits), then decode the rest: logits and events."""
    res = chip.prefill(toks[:split], all_logits=True)
    logits, ev, rows = [res.logits], res.events, res.bank_rows
    for tok in toks[split:]:
        step = chip.decode(int(tok))
        logits.append(step.logits)
        ev += step.events
        rows = rows + step.bank_rows
    return np.concatenate(logits), ev, rows


def run_routes(chip, toks, split):
    res = chip.prefill(toks[:split], all_logits=True)
    routes = [res.routes]
    for tok in toks[split:]:
        routes.append(chip.decode(int(tok)).routes)
    return np.concatenate(routes)


@pytest.mark.parametrize("name", DENSE + MOE)
def test_compiled_pass_equals_interpreted(name, images):
    from hcemu.chip.chip import Chip

    toks = np.random.default_rng(4).integers(0, 512, 90)
    for plan, kv, fuse in (("int8", "int8", True), ("int4", "fp16", False)):
        _src, img = images(name, plan)
        outs = []
        for compiled in (False, True):
            chip = Chip(img, compiled=compiled, kv_format=kv, fuse_products=fuse)
            outs.append(run(chip, toks, 70) + (chip.kv,))      # a two-chunk prefill, then decode
        (la, ea, ra, ka), (lb, eb, rb, kb) = outs
        if name in MOE:
            chips = [Chip(img, compiled=c, kv_format=kv, fuse_products=fuse) for c in (False, True)]
            np.testing.assert_array_equal(*[run_routes(c, toks, 70) for c in chips])
        np.testing.assert_array_equal(la, lb)
        assert ea == eb
        np.testing.assert_array_equal(ra, rb)
        for attr in (("k_codes", "v_codes", "k_scales", "v_scales") if kv == "int8" else ("k", "v")):
            np.testing.assert_array_equal(getattr(ka, attr), getattr(kb, attr))


@pytest.mark.parametrize("name", DENSE)
def test_chip_events_equal_analytic_and_logits_close_to_reference(name, images):
    from hcemu.chip.chip import Chip
    from hcemu.model.reference import FloatLlama
    from hcemu.perf.analytic import events_from_shapes

    src, img = images(name)
    toks = np.random.default_rng(5).integers(0, 512, 40)
    chip = Chip(img)
    gen = chip.generate(toks[:30], 6)
    want = events_from_shapes(img.spec, img.plan, 30, 6)
    assert gen.prefill_events + gen.decode_events == want
    logits, _ev, _rows = run(Chip(img), toks, 30)
    ref = FloatLlama(src).logits(toks)
    lp = lambda z: z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)  # noqa: E731
    p, q = lp(ref.astype(np.float64)), lp(logits.astype(np.float64))
    assert (np.exp(p) * (p - q)).sum(-1).mean() < 0.02


@pytest.mark.parametrize("name", MOE)
def test_moe_routes_match_reference_and_expert_events_add_up(name, images):
    """The chip routes every token to the float reference's experts except at near-ties of the
    reference's router (the k-th and (k+1)-th logits within 5% of the router logits' spread) and
    downstream of one (a later layer of that token or of a later token: a swapped expert changes the
    hidden state, and attention carries it on); each
    expert region's counts are its passes times one expert pass; per layer the passes are k per token;
    the other regions equal the analytical generator's."""
    from hcemu.chip.chip import Chip
    from hcemu.events import FIELD_INDEX, expert_vector_counts, product_counts
    from hcemu.model.reference import FloatLlama
    from hcemu.perf.analytic import events_from_shapes

    src, img = images(name)
    spec = img.spec
    k, E, L = spec.n_experts_used, spec.n_experts, spec.n_layers
    toks = np.random.default_rng(6).integers(0, 512, 48)
    ref = FloatLlama(src)
    ref.logits(toks)
    chip = Chip(img)
    res = chip.prefill(toks, all_logits=True)
    assert res.routes.shape == (48, L, k)
    ours, theirs = np.sort(res.routes, -1), np.sort(ref.routes, -1)
    differ = (ours != theirs).any(-1)                                  # (tokens, layers)
    logits = np.sort(ref.router_logits, -1)[..., ::-1]
    gap = (logits[..., k - 1] - logits[..., k]) / ref.router_logits.std()
    tie = differ & (gap < 0.05)
    downstream = np.zeros_like(differ)
    for r, j in zip(*np.nonzero(tie)):
        downstream[r:, j + 1:] = True
    assert not (differ & ~tie & ~downstream).any(), (np.nonzero(differ & ~tie & ~downstream), gap[differ])
    assert differ[:, 0].mean() < 0.1 and (~differ[~downstream]).mean() > 0.9
    # the reference's own routes are its top-k, in descending order
    assert (np.take_along_axis(ref.router_logits, ref.routes, -1) == logits[..., :k]).all()
    ev = res.events
    fired = ev.experts()[:, :, FIELD_INDEX["tokens"]]
    for i in range(L):
        np.testing.assert_array_equal(fired[i], np.bincount(res.routes[:, i].ravel(), minlength=E))
    assert (fired.sum(axis=1) == k * 48).all()
    one_pass = expert_vector_counts(spec) + sum(product_counts(img.plan.matrices, *shape)
                                                for _n, _k, shape in spec.expert_matrices(0, 0))
    np.testing.assert_array_equal(ev.experts(), fired[..., None] * one_pass)
    want = events_from_shapes(spec, img.plan, positions=np.arange(48))
    want.counts[L:L + 1] = ev.counts[L:L + 1]   # the head ran on every position here
    np.testing.assert_array_equal(ev.counts[:L + 2], want.counts[:L + 2])
    assert ev.total()["tokens"] == want.total()["tokens"]   # balanced or not, k passes per token
    # a decode step's events count the experts its token fired
    step = chip.decode(int(toks[0]))
    for i in range(L):
        assert sorted(np.nonzero(step.events.experts()[i, :, 0])[0]) == sorted(step.routes[0, i])
    # bank rows: each pass reads its layers' and head's rows, and every expert pass its expert's
    def rows_of(names):
        return sum(int(img.tensor_banks(n)[1].sum()) for n in names)
    layers = rows_of(n for i in range(L) for n, *_ in spec.layer_matrices(i))
    head = rows_of(["token_embd.weight" if spec.tied_embeddings else "output.weight"])
    embed = sum(int(img.row_banks("token_embd.weight", int(tk))[1].sum()) for tk in toks)
    experts = sum(int(fired[i, e]) * rows_of(n for n, *_ in spec.expert_matrices(i, e))
                  for i in range(L) for e in range(E))
    assert res.bank_rows.sum() == 48 * layers + 48 * head + embed + experts


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma2", "qwen2moe"])
def test_commands_on_architecture_files(name, tmp_path, smollm2_gguf, capsys):
    """``hcemu compile``, ``inspect``, ``run`` and ``eval`` on a GGUF of another architecture (with the
    SmolLM2 tokenizer, which ``run`` and ``eval`` need)."""
    import json

    from hcemu.cli import main

    spec = ARCH_SPECS[name]
    gguf_path = tmp_path / f"{name}.gguf"
    write_arch_gguf(gguf_path, spec, arch_weights(spec), smollm2_gguf, "Q8_0")
    image = tmp_path / f"{name}.hcrom"
    assert main(["compile", str(gguf_path), "--plan", "int8", "--out", str(image), "--no-progress"]) == 0
    assert main(["inspect", str(image)]) == 0
    out = capsys.readouterr().out
    assert f"({spec.arch})" in out
    if spec.is_moe:
        assert "one region per expert" in out and f"{spec.n_experts} experts" in out
    assert main(["run", str(image), "--prompt", "The quick brown fox", "--raw", "--max-new-tokens", "4",
                 "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["generated_tokens"] == 4 and report["events"]["total"]["tokens"] > 0
    assert main(["eval", str(gguf_path), "--plan", "int8", "--max-tokens", "64", "--ctx", "32", "--json",
                 "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tokens"] == 62 and rep["kld_mean"] < 0.05
    assert main(["compare", "--model", str(gguf_path), "--context", "64", "--no-host", "--json", "--plan",
                 "int8"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["kind"] == "hard-coded chip (modeled)" and rows[0]["per_user_tok_s"] > 0


@pytest.mark.parametrize("name", DENSE + MOE)
def test_lora_adapters_on_every_architecture(name, images, tmp_path):
    """Adapters ride every block kind: compiled and interpreted agree bit for bit with an adapter on the
    attention matrices (and on the FFN of a dense model); a mixture of experts' FFN refuses them."""
    from hcemu.chip.chip import Chip
    from hcemu.model.lora import LoraError, random_lora_pairs, write_lora

    _src, img = images(name, "int8")
    attn = ("attn_q", "attn_k", "attn_v", "attn_output")
    kinds = attn if img.spec.is_moe else attn + ("ffn_gate", "ffn_up", "ffn_down")
    path = tmp_path / "ad.gguf"
    write_lora(path, random_lora_pairs(img.spec, 4, kinds=kinds, seed=5, relative=0.3), alpha=8, dtype="F32")
    toks = np.random.default_rng(6).integers(0, 512, 20)
    outs = []
    for compiled in (True, False):
        chip = Chip(img, kv_capacity_tokens=32, compiled=compiled)
        chip.load_adapter(str(path), name="ad")
        res = chip.prefill(toks[:12], all_logits=True, adapter="ad")
        logits = [res.logits] + [chip.decode(int(t), adapter="ad").logits for t in toks[12:]]
        outs.append(np.concatenate(logits))
        assert res.adapters == ("ad",)
        plain = Chip(img, kv_capacity_tokens=32, compiled=compiled).prefill(toks[:12], all_logits=True).logits
        assert not np.array_equal(plain, res.logits)  # the side path changes the product
    assert np.array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))
    if img.spec.is_moe:
        from hcemu.model.lora import LoraAdapter, LoraPair

        bad = LoraAdapter("bad", 0.0, 1.0, {(0, "ffn_gate"): LoraPair(np.zeros((4, img.spec.d_model), np.float32),
                                                                      np.zeros((8, 4), np.float32), 1.0)})
        with pytest.raises(LoraError, match="mixture-of-experts"):
            Chip(img, kv_capacity_tokens=32).load_adapter(bad)
