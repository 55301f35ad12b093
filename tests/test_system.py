"""The functional multi-chip system on the real SmolLM2-135M: bit-exact against one chip with lossless
links, link formats, link events, errors."""
from __future__ import annotations

import numpy as np
import pytest

import hcemu
from hcemu.chip import Chip
from hcemu.chip.links import LinkMessage, decode, encode
from hcemu.chip.system import System
from hcemu.events import LinkEvents
from hcemu.formats import LINK_FORMATS, LinkFormat, get_link_format, get_plan
from hcemu.kernels.cim_ref import quantize_activations_ref
from hcemu.rom import RomImage

pytestmark = pytest.mark.model

PLAN = "int4"
SPLITS = {"2": {"n_dies": 2}, "3": {"n_dies": 3}, "30": {"layers_per_die": [1] * 30}}


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, tmp_path_factory):
    """The one-chip SmolLM2 image and its systems split 2, 3 and 30 ways (compiled once)."""
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.cache import ensure_image
    from hcemu.rom.manifest import compile_system
    from hcemu.rom.partition import partition_model

    root = tmp_path_factory.mktemp("systems")
    whole = ensure_image(smollm2_gguf, PLAN, out=str(root / "whole.hcrom"), progress=False)
    systems = {}
    with GGUFSource(smollm2_gguf) as src:
        for name, how in SPLITS.items():
            part = partition_model(src.spec, get_plan(PLAN), **how)
            systems[name] = compile_system(src, get_plan(PLAN), root / f"split{name}", part, progress=False)
    return whole, {k: v.manifest.folder for k, v in systems.items()}


def _chip(path, **kw):
    return Chip(RomImage.load(path, verify=False), kv_capacity_tokens=160, **kw)


def _system(folder, links="fp32", **kw):
    return System.load(folder, links, verify=False, kv_capacity_tokens=160, **kw)


PROMPT = (np.arange(90) * 37 + 11) % 49152   # two prefill chunks (64 + 26)


def run_steps(runner, prompt, tokens):
    """All-position prefill logits of ``prompt``, then one decode step per token of ``tokens``: the step
    results (logits, events, bank rows per step)."""
    return [runner.prefill(prompt, all_logits=True)] + [runner.decode(tok) for tok in tokens]


def _run(runner):
    return run_steps(runner, PROMPT, (5, 1000, 42))


@pytest.mark.parametrize("split", list(SPLITS))
def test_lossless_links_are_bit_exact(smollm2, split):
    whole, systems = smollm2
    chip, system = _chip(whole), _system(systems[split])
    assert system.n_dies == {"2": 2, "3": 3, "30": 30}[split]
    for a, b in zip(_run(chip), _run(system)):
        assert np.array_equal(a.logits, b.logits)                    # bit for bit
        assert a.events == b.events                                  # the same counts, region by region
        assert int(a.bank_rows.sum()) == int(b.bank_rows.sum())      # the same ROM rows, on other banks
        t = a.events.counts[0, 0]
        hop_bytes = 4 * system.spec.d_model
        assert b.link_events == LinkEvents(system.n_dies - 1,
                                           np.tile(np.array([t, t * hop_bytes], np.int64), (system.n_dies - 1, 1)))
    # every die's KV SRAM holds its layers' K and V exactly as the one chip's
    for die in system.dies:
        for j, layer in enumerate(die.die.layers):
            assert die.kv.length == chip.kv.length
            assert np.array_equal(die.kv.k_codes[j, :, :chip.kv.length], chip.kv.k_codes[layer, :, :chip.kv.length])
            assert np.array_equal(die.kv.v_scales[j, :, :chip.kv.length], chip.kv.v_scales[layer, :, :chip.kv.length])


def test_bank_rows_map_to_each_die(smollm2):
    whole, systems = smollm2
    system = _system(systems["3"])
    res = system.prefill(PROMPT[:10])
    assert res.bank_rows.shape == (system.n_banks,)
    for k, die in enumerate(system.dies):
        lo = system.bank_offsets[k]
        part = res.bank_rows[lo: lo + die.image.address_map.n_banks]
        layer_rows = sum(int(die.image.tensor_banks(f"blk.{i}.ffn_up.weight")[1].sum()) for i in die.die.layers)
        assert part.sum() >= 10 * layer_rows > 0


def test_generate_and_interpreted_path(smollm2):
    whole, systems = smollm2
    chip = _chip(whole)
    ref = chip.generate(PROMPT[:20], 6)
    system = _system(systems["2"], compiled=False)   # the interpreted layer loop on each die
    gen = system.generate(PROMPT[:20], 6)
    assert gen.ids == ref.ids
    assert gen.prefill_events == ref.prefill_events and gen.decode_events == ref.decode_events
    assert ref.prefill_link_events is None
    assert gen.prefill_link_events.messages == 20 and gen.decode_link_events.messages == gen.decode_steps
    assert system.position == 20 + gen.decode_steps
    system.reset()
    assert system.position == 0 and all(d.position == 0 for d in system.dies)


def test_every_isa_path(smollm2, restore_isa):
    whole, systems = smollm2
    for isa in hcemu.capabilities()["supported"]:
        hcemu.set_isa(isa)
        a = _chip(whole).prefill(PROMPT[:40], all_logits=True).logits
        b = _system(systems["3"]).prefill(PROMPT[:40], all_logits=True).logits
        assert np.array_equal(a, b), isa


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_lossy_links_stay_close(smollm2, fmt):
    """Lossy links perturb the residual stream at every hop; the next-token distribution stays close
    (KL divergence from the lossless system's, nats; measured figures in docs/system.md)."""
    from hcemu.chip.evaluate import compare_logits

    whole, systems = smollm2
    ref = _system(systems["3"]).prefill(PROMPT, all_logits=True)
    lossy = _system(systems["3"], fmt).prefill(PROMPT, all_logits=True)
    assert not np.array_equal(ref.logits, lossy.logits)
    assert ref.events == lossy.events
    assert lossy.link_events.bytes == 2 * len(PROMPT) * get_link_format(fmt).message_bytes(576)
    st = compare_logits(ref.logits, lossy.logits, np.zeros(len(PROMPT), np.int64))
    assert st.kld.mean() < 0.05 and st.same_top1.mean() > 0.8


def test_link_formats_encode_as_documented():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 64)) * np.exp(rng.uniform(-8, 8, (5, 64)))).astype(np.float32)
    x[0, :4] = [1.0, 1.00390625, 1.01171875, -1.00390625]   # bf16 ties: to even (1.0, 1.0078125, -1.0)
    for name, fmt in LINK_FORMATS.items():
        msg = encode(x, name)
        assert isinstance(msg, LinkMessage) and msg.nbytes == fmt.message_bytes(64) * 5
        y = decode(msg)
        assert y.dtype == np.float32 and y.shape == x.shape and y.flags.writeable
        if fmt.lossless:
            assert np.array_equal(y, x)
    # bf16: nearest representable value with 8 mantissa bits, ties to even (float64 reference)
    y = decode(encode(x, "bf16")).astype(np.float64)
    xd = x.astype(np.float64)
    m, e = np.frexp(xd)
    scaled = m * 2.0 ** 8
    want = np.ldexp(np.round(scaled) / 2.0 ** 8, e)   # np.round: half to even
    assert np.array_equal(y, want)
    assert np.array_equal(y[0, :4], [1.0, 1.0, 1.015625, -1.0])
    # int8: the activation quantizer's codes and scales, dequantized in float32
    q, s = quantize_activations_ref(x, 32)
    msg = encode(x, "int8")
    assert np.array_equal(msg.values, q) and np.array_equal(msg.scales, s)
    assert np.array_equal(decode(msg), (q.reshape(5, 2, 32).astype(np.float32) * s[..., None]).reshape(5, 64))


def test_link_format_errors():
    with pytest.raises(ValueError, match="unknown link format"):
        get_link_format("fp8")
    with pytest.raises(ValueError):
        LinkFormat("bad", 12)
    with pytest.raises(ValueError):
        LinkFormat("bad", 8, 32, 0)
    with pytest.raises(ValueError, match="whole blocks"):
        LINK_FORMATS["int8"].message_bytes(40)
    bad = np.ones((2, 32), np.float32)
    bad[1, 3] = np.nan
    for name in LINK_FORMATS:
        with pytest.raises(ValueError, match="NaN"):
            encode(bad, name)
    with pytest.raises(ValueError, match="float32"):
        encode(np.ones((2, 32)), "fp32")
    assert LINK_FORMATS["bf16"].message_bytes(576) == 1152 and LINK_FORMATS["int8"].message_bytes(576) == 648


def test_system_errors_and_rollback(smollm2, monkeypatch):
    whole, systems = smollm2
    from hcemu.rom.manifest import load_manifest

    images = load_manifest(systems["3"]).load_images(verify=False)
    with pytest.raises(ValueError, match="position 0 of 2 dies"):
        System([images[0], images[2]])
    with pytest.raises(ValueError, match="die 1/3.*position 0 of 3"):
        System([images[1], images[0], images[2]])
    with pytest.raises(ValueError, match="2 hops"):
        System(images, ["fp32"])
    with pytest.raises(ValueError, match="unknown link format"):
        System(images, "fp8")
    with pytest.raises(TypeError):
        System([])
    with pytest.raises(ValueError, match="System"):
        Chip(images[1]).prefill([1, 2])           # a die alone is not a chip
    with pytest.raises(ValueError, match="no output head"):
        Chip(images[0]).head(np.zeros((1, 576), np.float32), None)
    with pytest.raises(ValueError, match="no embedding"):
        Chip(images[2]).embed([1], None)
    with pytest.raises(ValueError, match="writeable C-contiguous float32"):
        Chip(images[1]).run_layers(np.zeros((1, 576)), None)
    system = System(images, kv_capacity_tokens=32)
    with pytest.raises(ValueError, match="vocabulary"):
        system.prefill([49152])
    with pytest.raises(ValueError, match="do not fit"):
        system.prefill(np.arange(33))
    system.prefill(np.arange(8))
    # a pass failing on the last die leaves no die holding its K/V, and the system stays usable
    boom = system.dies[2]

    def fail(x, events, routes=None):
        raise RuntimeError("die 2 failed")
    monkeypatch.setattr(boom, "run_layers", fail)
    with pytest.raises(RuntimeError, match="die 2 failed"):
        system.decode(3)
    monkeypatch.undo()
    for die in system.dies:
        assert die.position == 8 and all(die.kv.filled(j) == 8 for j in range(die.die.n_die_layers))
    chip = _chip(whole)
    chip.prefill(np.arange(8))
    assert np.array_equal(system.decode(3).logits, chip.decode(3).logits)


def test_counted_events_price_as_the_shapes(smollm2):
    """The system's counted events and link events equal the analytical ones, and price the same."""
    from hcemu.perf.analytic import decode_positions, events_from_shapes
    from hcemu.perf.system import SystemModel, link_events_from_shapes
    from hcemu.rom.manifest import load_manifest

    _, systems = smollm2
    manifest = load_manifest(systems["3"])
    system = _system(systems["3"], "int8")
    gen = system.generate(PROMPT[:30], 8)
    spec, plan = system.spec, system.plan
    assert gen.decode_steps == 7
    assert gen.prefill_link_events == link_events_from_shapes(spec, 2, "int8", 30)
    assert gen.decode_link_events == link_events_from_shapes(spec, 2, "int8", 7)
    assert gen.prefill_events == events_from_shapes(spec, plan, 30, 0)
    assert gen.decode_events == events_from_shapes(spec, plan, positions=decode_positions(30, 8))
    sm = SystemModel("hc1", "ucie-2d", "int8")
    counted = sm.price(spec, plan, manifest.partition, 30, 8, gen.prefill_events, gen.decode_events,
                       gen.decode_link_events)
    assert counted == sm.evaluate(spec, plan, manifest.partition, 30, 8)


@pytest.mark.slow
def test_eval_command_on_a_system(smollm2, smollm2_gguf, capsys):
    import json

    from hcemu.cli import main

    _, systems = smollm2
    assert main(["eval", smollm2_gguf, "--system", systems["2"], "--link", "fp32,int8", "--max-tokens", "40",
                 "--ctx", "40", "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["link"] for r in rows] == ["fp32", "int8"] and rows[0]["dies"] == 2
    assert rows[0]["kld_mean"] != rows[1]["kld_mean"]
    assert main(["eval", smollm2_gguf, "--link", "int8", "--no-progress"]) == 1
    assert "--link needs --system" in capsys.readouterr().err
