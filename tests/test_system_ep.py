"""Expert parallelism, functionally: each pipeline die keeps expert block 0 of its layers, expert dies hold
the other blocks; the system dispatches routed rows over expert links, the expert dies compute, the home
die combines in routing order. With lossless links the system equals the one-chip run bit for bit
(logits, events, routes, ROM rows, KV SRAM), compiled and interpreted; the expert links' traffic is the
pricing model's rule (:func:`hcemu.perf.system.expert_link_events`) for the same routes."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from arch_models import ARCH_SPECS, arch_weights, write_arch_gguf
from test_system_moe import PROMPT, _run, check_every_isa_path   # a prompt of two prefill chunks, 3 decode steps

from hcemu.chip import Chip
from hcemu.chip.system import System
from hcemu.events import Events
from hcemu.formats import get_plan

PLAN = "int8"
N_EXPERTS = ARCH_SPECS["qwen2moe"].n_experts
SPLITS = {"ep2": (2, 2), "ep-all": (2, N_EXPERTS)}   # (pipeline dies, expert parallelism): each die one expert


@pytest.fixture(scope="module", params=["qwen2moe", "qwen3moe"])
def ep_model(request, tmp_path_factory):
    """A 4-layer, 512-token version of the architecture: its one-chip image and the manifests of its
    expert-parallel systems."""
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model
    from hcemu.rom.manifest import compile_system
    from hcemu.rom.partition import partition_model

    spec = replace(ARCH_SPECS[request.param], n_layers=4, vocab_size=512, max_context=256)
    assert spec.n_experts == N_EXPERTS
    root = tmp_path_factory.mktemp(request.param + "-ep")
    write_arch_gguf(root / "m.gguf", spec, arch_weights(spec))
    plan = get_plan(PLAN)
    with GGUFSource(root / "m.gguf") as src:
        compile_model(src, plan, root / "whole.hcrom", progress=False)
        systems = {name: compile_system(src, plan, root / name,
                                        partition_model(src.spec, plan, n, expert_parallel=ep),
                                        progress=False).manifest
                   for name, (n, ep) in SPLITS.items()}
    return RomImage.load(root / "whole.hcrom"), systems, root


def test_expert_parallel_partition_and_manifest(ep_model):
    from hcemu.rom.image import rom_bits_for_model

    whole, systems, _root = ep_model
    spec = whole.spec
    for name, (n, ep) in SPLITS.items():
        man = systems[name]
        part = man.partition
        assert part.expert_parallel == ep == man.expert_parallel and part.n_dies == n
        assert len(man.dies) == n * ep and len(part.expert_dies) == n * (ep - 1)
        assert [e.image for e in man.dies][n:n + 1] == ["die-00-e1.hcrom"]
        assert [i for i, _k, _b in part.expert_links] == list(range(n * (ep - 1)))
        images = man.load_images(verify=True)
        seen = set()
        for img in images:
            names = set(img.names())
            held = {int(n.split(".")[3]) for n in names if "_exps." in n}
            assert held == {e for e in range(spec.n_experts) if e // (spec.n_experts // ep) == img.die.expert_block}
            assert any("attn_q" in n for n in names) == (not img.die.is_expert_die)
            assert img.rom_bits == rom_bits_for_model(spec, get_plan(PLAN), die=img.die)
            for name in names - set(img._vectors):   # the one chip's codes: the partition never requantizes
                a, b = img.matrix(name), whole.matrix(name)
                assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
            seen |= names
        assert seen == set(whole.names()) | ({"token_embd.weight"} if spec.tied_embeddings else set())
        for img in images:
            img.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "interpreted"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_expert_parallel_system_is_bit_exact_with_one_chip(ep_model, split, compiled):
    from hcemu.perf.system import expert_link_events

    whole, systems, _root = ep_model
    man = systems[split]
    chip = Chip(whole, kv_capacity_tokens=96, compiled=compiled)
    system = System(man.load_images(verify=False), "fp32", kv_capacity_tokens=96, compiled=compiled)
    spec, ep = system.spec, system.expert_parallel
    assert system.n_expert_dies == system.n_dies * (ep - 1)
    for a, b in zip(_run(chip), _run(system)):
        assert np.array_equal(a.logits, b.logits)           # bit for bit
        assert np.array_equal(a.routes, b.routes)
        assert a.events == b.events                         # every region counted as the one chip counts it
        assert int(a.bank_rows.sum()) == int(b.bank_rows.sum())
        # every die's own events: they sum to the step's; an expert's products land on the die holding it
        total = Events.for_spec(spec)
        for ev in b.die_events:
            total += ev
        assert total == b.events
        dies = [d.die for d in system.dies] + [x.die for x in system.expert_dies]
        for die, ev in zip(dies, b.die_events):
            fired = ev.experts()[:, :, 0]
            macs = ev.experts().sum(axis=2)
            for layer in range(spec.n_layers):
                for e in range(spec.n_experts):
                    if not die.holds_expert(layer, e, spec.n_experts):
                        assert macs[layer, e] == 0
                    else:
                        assert fired[layer, e] == b.events.experts()[layer, e, 0]
            if die.is_expert_die:   # no layer, head or embedding work
                assert ev.counts[:spec.n_layers + 2].sum() == 0
        # the expert links' traffic is the pricing model's rule for these routes
        assert b.expert_link_events == expert_link_events(spec, man.partition, b.events, ep, "fp32")
        remote = sum(int((b.routes // (spec.n_experts // ep) == blk).sum()) for blk in range(1, ep))
        assert b.expert_link_events.messages == 2 * remote
        assert b.expert_link_events.bytes == 2 * remote * 4 * spec.d_model
    for die in system.dies:   # each home die's KV SRAM holds its layers' K and V as the one chip's
        for j, layer in enumerate(die.die.layers):
            n = chip.kv.length
            assert np.array_equal(die.kv.k_codes[j, :, :n], chip.kv.k_codes[layer, :, :n])


def test_expert_parallel_lossy_links_and_pricing(ep_model):
    """int8 expert links: message bytes are the format's, the counts still the rule's, the logits close to
    the lossless run's; generate carries the expert links' traffic and prices like the analytic model."""
    from hcemu.perf.system import SystemModel, expert_link_events

    whole, systems, _root = ep_model
    man = systems["ep2"]
    system = System(man.load_images(verify=False), "fp32", expert_links="int8", kv_capacity_tokens=64)
    spec = system.spec
    res = system.prefill(PROMPT[:20], all_logits=True)
    ref = Chip(whole, kv_capacity_tokens=64).prefill(PROMPT[:20], all_logits=True)
    assert res.expert_link_events == expert_link_events(spec, man.partition, res.events, 2, "int8")
    assert res.expert_link_events.bytes == res.expert_link_events.messages * (spec.d_model + 4 * spec.d_model // 32)
    assert not np.array_equal(res.logits, ref.logits)
    assert np.abs(res.logits - ref.logits).max() < 0.1 * np.abs(ref.logits).max()
    system.reset()
    gen = System(man.load_images(verify=False), "fp32", kv_capacity_tokens=64).generate(PROMPT[:20], 6)
    assert gen.ids == Chip(whole, kv_capacity_tokens=64).generate(PROMPT[:20], 6).ids
    assert gen.decode_expert_link_events == expert_link_events(spec, man.partition, gen.decode_events, 2, "fp32")
    sm = SystemModel("hc1", "ucie-2d", "fp32")          # the partition brings its expert parallelism
    r = sm.price(spec, system.plan, man.partition, 20, 6, gen.prefill_events, gen.decode_events,
                 gen.decode_link_events)
    assert r.expert_parallel == 2 and r.n_dies == 4
    assert r.expert_link_bytes_per_token == round(gen.decode_expert_link_events.bytes / 5)
    with pytest.raises(ValueError, match="spreads experts over 2 dies"):
        SystemModel("hc1", "ucie-2d", expert_parallel=4).price(spec, system.plan, man.partition, 20, 6,
                                                                gen.prefill_events, gen.decode_events,
                                                                gen.decode_link_events)


def test_expert_parallel_on_every_isa_path(ep_model, restore_isa):
    whole, systems, _root = ep_model
    check_every_isa_path(whole, systems["ep-all"].load_images(verify=False))


def test_expert_parallel_bad_input(ep_model):
    from hcemu.model.spec import get_preset
    from hcemu.rom.manifest import SystemManifestError, load_manifest
    from hcemu.rom.partition import partition_model

    whole, systems, root = ep_model
    spec, plan = whole.spec, get_plan(PLAN)
    for ep in (3, N_EXPERTS * 2):   # does not divide / exceeds the experts
        with pytest.raises(ValueError, match="divide evenly"):
            partition_model(spec, plan, 2, expert_parallel=ep)
    for ep in (0, 1.5, True):
        with pytest.raises(ValueError, match="expert_parallel must be an integer"):
            partition_model(spec, plan, 2, expert_parallel=ep)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        partition_model(get_preset("smollm2-135m"), get_plan("int4"), 2, expert_parallel=2)
    man = systems["ep2"]
    images = man.load_images(verify=False)
    with pytest.raises(ValueError, match="expert dies"):          # an expert die missing
        System(images[:-1], "fp32")
    with pytest.raises(ValueError, match="expert_links"):
        System(images, ["fp32"])
    with pytest.raises(ValueError, match="expert block"):        # a home die alone is not a chip
        Chip(images[0], kv_capacity_tokens=16).prefill([1, 2])
    from hcemu.chip.experts import ExpertDie
    with pytest.raises(ValueError, match="not an expert die"):
        ExpertDie(images[0])
    ed = ExpertDie(images[2])
    with pytest.raises(ValueError, match="does not hold"):
        ed.run_expert(0, 0, np.zeros((1, spec.d_model), np.float32), Events.for_spec(spec))
    with pytest.raises(ValueError, match="float32"):
        ed.run_expert(0, N_EXPERTS - 1, np.zeros((1, spec.d_model), np.float64), Events.for_spec(spec))
    # a manifest whose expert links were edited (and re-hashed) no longer loads
    import json

    from hcemu.rom.manifest import _digest
    path = root / "ep2" / "system.json"
    body = json.loads(path.read_text())
    body.pop("sha256")
    body["expert_links"][0]["block"] = 0
    body["sha256"] = _digest(body)
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "system.json").write_text(json.dumps(body))
    with pytest.raises(SystemManifestError, match="expert links"):
        load_manifest(bad)


def test_compile_command_expert_parallel(ep_model, tmp_path, capsys):
    from hcemu.cli import main
    from hcemu.rom.manifest import load_manifest

    _whole, _systems, root = ep_model
    out = tmp_path / "sys"
    assert main(["compile", str(root / "m.gguf"), "--plan", PLAN, "--chips", "1", "--expert-parallel", "4",
                 "--out", str(out), "--no-progress"]) == 0
    assert "3 expert dies" in capsys.readouterr().out
    man = load_manifest(out)
    assert man.expert_parallel == 4 and sorted(p.name for p in out.iterdir()) == [
        "die-00-e1.hcrom", "die-00-e2.hcrom", "die-00-e3.hcrom", "die-00.hcrom", "system.json"]
    assert main(["compile", str(root / "m.gguf"), "--plan", PLAN, "--expert-parallel", "2", "--out",
                 str(tmp_path / "x.hcrom"), "--no-progress"]) == 1
    assert "--expert-parallel needs --chips" in capsys.readouterr().err
