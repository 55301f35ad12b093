"""LoRA adapters on the functional chip (SmolLM2-135M): the SRAM side path, compiled and interpreted
alike, counted events, per-request switching without touching the ROM, the SRAM budget, accuracy
against the float reference with the same adapter."""
import hashlib

import numpy as np
import pytest

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def image_path(smollm2_gguf, tmp_path_factory):
    from hcemu.rom.cache import ensure_image

    return ensure_image(smollm2_gguf, "int4", out=str(tmp_path_factory.mktemp("img") / "smollm2-int4.hcrom"),
                        progress=False)


@pytest.fixture(scope="module")
def image(image_path):
    from hcemu.rom.image import RomImage

    return RomImage.load(image_path, verify=False)


@pytest.fixture(scope="module")
def adapters(image, tmp_path_factory):
    """Two random rank-16 adapters on all seven matrices of every layer (files) and one of rank 8 on q, v."""
    from hcemu.model.lora import random_lora_pairs, write_lora

    root = tmp_path_factory.mktemp("lora")
    paths = {}
    for name, rank, kinds, seed, dtype in (("r16a", 16, None, 1, "F16"), ("r16b", 16, None, 2, "F32"),
                                           ("r8qv", 8, ("attn_q", "attn_v"), 3, "F32")):
        kw = {} if kinds is None else {"kinds": kinds}
        paths[name] = str(root / f"{name}.gguf")
        write_lora(paths[name], random_lora_pairs(image.spec, rank, seed=seed, relative=0.25, **kw), alpha=2 * rank,
                   dtype=dtype)
    return paths


def chip(image, **kw):
    from hcemu.chip import Chip

    return Chip(image, kv_capacity_tokens=kw.pop("kv", 80), **kw)


IDS = np.arange(1000, 1070, dtype=np.int64) * 7 % 49152


@pytest.mark.parametrize("fmt, fuse", [("int8", True), ("int8", False), ("fp16", True)])
def test_compiled_equals_interpreted_and_events_follow_the_rules(image, adapters, fmt, fuse):
    """Side paths in the compiled pass == the interpreted loop, to the bit, with 2 threads too; the
    counted events equal the analytical generator's with the same adapter shape."""
    from hcemu.perf.analytic import LoraShape, events_from_shapes

    chips = [chip(image, compiled=c, n_threads=nt, fuse_products=fuse) for c, nt in ((True, 1), (False, 1), (True, 2))]
    for c in chips:
        c.load_adapter(adapters["r16a"], fmt=fmt)
    runs = [(c.prefill(IDS, all_logits=True, adapter="r16a"), c.decode(5, adapter="r16a")) for c in chips]
    for a, b, c in zip(*runs):
        for other in (b, c):
            np.testing.assert_array_equal(a.logits.view(np.int32), other.logits.view(np.int32))
            assert a.events == other.events
    pre, dec = runs[0]
    assert pre.adapters == ("r16a",)
    shape = LoraShape(16, fmt=fmt)
    assert pre.events == events_from_shapes(image.spec, image.plan, len(IDS), all_logits=True, adapters=shape)
    assert dec.events == events_from_shapes(image.spec, image.plan, positions=[len(IDS)], adapters=shape)
    assert chips[0].adapter_sram_bytes == shape.sram_bytes(image.spec)
    field = "adapter_macs_w8" if fmt == "int8" else "adapter_macs_f16"
    L, s = image.spec.n_layers, image.spec
    assert dec.events.total()[field] == L * 16 * sum(n + k for n, k in map(s.matrix_shape, (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_switching_between_requests_touches_no_rom(image, image_path, adapters):
    """Several adapters resident; each request picks its own; results equal a chip holding only that
    adapter; the ROM image (file, mapping, prepared matrices) is the same before and after."""
    before = _sha(image_path)
    c = chip(image)
    layers = list(c._layers)
    codes = [(L.wq.codes.ctypes.data, L.wd.codes.ctypes.data) for L in layers]
    for name in ("r16a", "r16b", "r8qv"):
        c.load_adapter(adapters[name], name=name)
    assert sorted(c.adapters) == ["r16a", "r16b", "r8qv"]
    results = {}
    for req in ("r16a", "r16b", None, ("r16a", "r8qv"), "r16a", None):
        c.reset()
        g = c.generate(IDS[:20], 4, adapter=req)
        results.setdefault(req, []).append(g)
        assert g.adapters == (() if req is None else (req,) if isinstance(req, str) else req)
    # the same request twice gives the same tokens and logits path
    assert results["r16a"][0].ids == results["r16a"][1].ids and results[None][0].ids == results[None][1].ids
    assert results["r16a"][0].decode_events == results["r16a"][1].decode_events
    # each equals a fresh chip with only that adapter; no adapter equals a chip that never had one
    for req in ("r16b", None):
        ref = chip(image)
        if req:
            ref.load_adapter(adapters[req], name=req)
        want = ref.prefill(IDS[:20], adapter=req).logits
        c.reset()
        np.testing.assert_array_equal(c.prefill(IDS[:20], adapter=req).logits.view(np.int32), want.view(np.int32))
    assert results["r16a"][0].ids != results[None][0].ids or \
        results["r16a"][0].prefill_events != results[None][0].prefill_events
    assert c.image is image and c._layers == layers and all(L.wq.codes.flags.writeable is False for L in layers)
    assert [(L.wq.codes.ctypes.data, L.wd.codes.ctypes.data) for L in c._layers] == codes
    assert _sha(image_path) == before
    c.unload_adapter("r16a")
    with pytest.raises(KeyError, match="r16a"):
        c.prefill(IDS[:3], adapter="r16a")


def test_sram_budget_is_shared_with_the_kv_cache(image, adapters):
    from hcemu.chip import Chip, SramBudgetError
    from hcemu.model.lora import load_lora

    lo = load_lora(adapters["r16a"], image.spec)
    probe = chip(image)
    need = probe.load_adapter(lo).nbytes
    c = chip(image, sram_bytes=probe.kv.nbytes + need + need // 2)
    c.load_adapter(lo, name="one")
    assert c.sram_free_bytes == need // 2
    with pytest.raises(SramBudgetError, match=f"needs {need} bytes"):
        c.load_adapter(lo, name="two")
    with pytest.raises(ValueError, match="already resident"):
        c.load_adapter(lo, name="one")
    c.unload_adapter("one")
    c.load_adapter(lo, name="two")
    with pytest.raises(SramBudgetError, match="KV cache"):
        Chip(image, kv_capacity_tokens=80, sram_bytes=100)
    # fp16 holds the same adapter in about twice the bytes
    assert chip(image).load_adapter(lo, fmt="fp16").nbytes > 1.8 * need
    with pytest.raises(ValueError, match="adapter format"):
        chip(image).load_adapter(lo, fmt="int4")


def test_adapter_for_another_model_is_refused(image, tmp_path):
    from hcemu.model.lora import LoraAdapter, LoraError, LoraPair, load_lora, random_lora_pairs, write_lora
    from hcemu.model.spec import ModelSpec

    other = ModelSpec("other", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
                      vocab_size=80, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False, max_context=256)
    path = tmp_path / "other.gguf"
    write_lora(path, random_lora_pairs(other, 4), alpha=8)
    with pytest.raises(LoraError, match="do not fit"):
        chip(image).load_adapter(str(path))
    a, b = random_lora_pairs(other, 4)[(0, "attn_q")]
    with pytest.raises(LoraError, match="does not fit"):
        chip(image).load_adapter(LoraAdapter("x", 8.0, 1.0, {(0, "attn_q"): LoraPair(a, b, 2.0)}))
    assert load_lora


def test_bad_adapter_arguments(image, adapters):
    c = chip(image)
    with pytest.raises(KeyError, match="no resident adapter"):
        c.prefill(IDS[:3], adapter="nope")
    with pytest.raises(TypeError, match="adapter must be"):
        c.prefill(IDS[:3], adapter=3.5)
    from hcemu.model.lora import LoraError

    with pytest.raises(FileNotFoundError):
        c.load_adapter("/nonexistent/adapter.gguf")
    # a LoraAdapter object is made resident on first use and reused after
    from hcemu.model.lora import load_lora

    lo = load_lora(adapters["r8qv"], image.spec, scale=0.5)
    c.prefill(IDS[:3], adapter=lo)
    c.reset()
    c.prefill(IDS[:3], adapter=lo)
    assert list(c.adapters) == ["r8qv"]
    assert LoraError


@pytest.fixture(scope="module")
def licence_ids(image):
    from hcemu.model.texts import licence_text
    from hcemu.model.tokenizer import load_tokenizer

    return load_tokenizer(image).encode(licence_text())[:256]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["int8", "fp16"])
def test_accuracy_with_adapter_against_the_float_reference(image_path, smollm2_gguf, adapters, licence_ids, fmt):
    """Rank 16 on every matrix: the chip with the adapter in SRAM against FloatLlama with the same
    adapter in float, KLD <= 0.01; and the adapter does move the model (the float reference with and
    without it differ by much more)."""
    from hcemu.chip.evaluate import compare_logits, evaluate
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.lora import load_lora
    from hcemu.model.reference import FloatLlama

    res = evaluate(image_path, smollm2_gguf, licence_ids, ctx=256, adapters=[(adapters["r16a"], 1.0)],
                   adapter_format=fmt)
    assert res["tokens"] == 255
    assert res["kld_mean"] <= 0.01, res
    assert res["same_top1"] >= 0.9, res
    if fmt == "int8":
        src = GGUFSource(smollm2_gguf)
        ref = FloatLlama(src)
        ids = np.asarray(licence_ids)
        base = ref.logits(ids)[:-1]
        ref.set_adapters(load_lora(adapters["r16a"], src.spec))
        moved = compare_logits(base, ref.logits(ids)[:-1], ids[1:]).kld.mean()
        assert moved > 4 * res["kld_mean"], (moved, res["kld_mean"])


def test_run_and_eval_cli_with_lora(image_path, smollm2_gguf, adapters, capsys):
    import json

    from hcemu.cli import main

    args = ["run", image_path, "--prompt", "Name three colours.", "--max-new-tokens", "6", "--json", "--no-progress"]
    assert main(args) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(args + ["--lora", adapters["r16a"], "--lora", adapters["r8qv"] + ":0.5"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [a["scale"] for a in rep["adapters"]] == [1.0, 0.5] and rep["adapters"][0]["ranks"] == [16]
    assert rep["adapter_sram_bytes"] == sum(a["sram_bytes"] for a in rep["adapters"]) > 0
    ev, ev0 = rep["events"]["total"], base["events"]["total"]
    assert ev["adapter_macs_w8"] > 0 and ev0["adapter_macs_w8"] == 0 and ev["sram_adapter_bytes_read"] > 0
    si, si0 = rep["silicon"], base["silicon"]
    assert si["adapter_sram_bytes"] == rep["adapter_sram_bytes"] and si["sram_mm2"] > si0["sram_mm2"]
    assert main(args + ["--lora", adapters["r16a"], "--lora-format", "fp16"]) == 0
    rep16 = json.loads(capsys.readouterr().out)
    assert rep16["events"]["total"]["adapter_macs_f16"] > 0
    # text output names the adapter
    assert main(args[:-2] + ["--no-progress", "--lora", adapters["r16a"]]) == 0
    assert "LoRA" in capsys.readouterr().out
    # a missing or malformed adapter is a clean error
    assert main(args + ["--lora", "/nonexistent.gguf"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(args + ["--lora", smollm2_gguf]) == 1
    assert "adapter" in capsys.readouterr().err
    assert main(["eval", smollm2_gguf, "--plan", "int4", "--max-tokens", "48", "--ctx", "48", "--json",
                 "--no-progress", "--lora", adapters["r16a"]]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["lora"] == [adapters["r16a"]] and ev["kld_mean"] < 0.05
