"""Mixture-of-experts models split over dies: each die runs its layers and all their experts with its own
KV SRAM; with lossless links the system equals the one-chip run bit for bit (logits, events in the
right expert regions, routes, ROM rows), compiled and interpreted."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from arch_models import ARCH_SPECS, arch_weights, write_arch_gguf
from test_system import run_steps

from hcemu.chip import Chip
from hcemu.chip.system import System
from hcemu.events import Events, LinkEvents
from hcemu.formats import get_plan

PLAN = "int8"
SPLITS = {"2": {"n_dies": 2}, "3": {"layers_per_die": [1, 2, 1]}}   # die 1 of 3 starts at layer 1


@pytest.fixture(scope="module", params=["qwen2moe", "qwen3moe"])
def moe_model(request, tmp_path_factory):
    """A 4-layer, 512-token version of the architecture: its one-chip image and the manifests of its die
    images split 2 and 3 ways."""
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model
    from hcemu.rom.manifest import compile_system
    from hcemu.rom.partition import partition_model

    spec = replace(ARCH_SPECS[request.param], n_layers=4, vocab_size=512, max_context=256)
    root = tmp_path_factory.mktemp(request.param)
    write_arch_gguf(root / "m.gguf", spec, arch_weights(spec))
    plan = get_plan(PLAN)
    with GGUFSource(root / "m.gguf") as src:
        compile_model(src, plan, root / "whole.hcrom", progress=False)
        systems = {name: compile_system(src, plan, root / f"split{name}", partition_model(src.spec, plan, **how),
                                        progress=False).manifest for name, how in SPLITS.items()}
    return RomImage.load(root / "whole.hcrom"), systems


PROMPT = (np.arange(70) * 37 + 11) % 512   # two prefill chunks (64 + 6)


def _run(runner):
    return run_steps(runner, PROMPT, (5, 300, 42))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "interpreted"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_moe_system_is_bit_exact_with_one_chip(moe_model, split, compiled):
    whole, systems = moe_model
    images = systems[split].load_images(verify=True)
    chip = Chip(whole, kv_capacity_tokens=96, compiled=compiled)
    system = System(images, "fp32", kv_capacity_tokens=96, compiled=compiled)
    spec = system.spec
    assert spec.is_moe and system.n_dies == len(images)
    for a, b in zip(_run(chip), _run(system)):
        assert np.array_equal(a.logits, b.logits)          # bit for bit
        assert np.array_equal(a.routes, b.routes)          # every token to the same experts, layer by layer
        assert a.events == b.events                        # every expert region counted where the chip counts it
        assert b.events.experts()[:, :, 0].sum() == a.routes.size
        assert int(a.bank_rows.sum()) == int(b.bank_rows.sum())
        t = int(a.events.counts[0, 0])
        assert b.link_events == LinkEvents(system.n_dies - 1, np.tile(
            np.array([t, t * 4 * spec.d_model], np.int64), (system.n_dies - 1, 1)))
    for die in system.dies:   # each die's own KV SRAM holds its layers' K and V as the one chip's
        for j, layer in enumerate(die.die.layers):
            n = chip.kv.length
            assert die.kv.length == n
            assert np.array_equal(die.kv.k_codes[j, :, :n], chip.kv.k_codes[layer, :, :n])


def test_moe_die_counts_its_experts_in_the_model_regions(moe_model):
    """A die whose first layer is not 0 counts its layers' expert passes into the model's expert regions
    of those layers, and nothing into the other dies' regions."""
    _whole, systems = moe_model
    images = systems["3"].load_images(verify=False)
    for compiled in (True, False):
        die = Chip(images[1], kv_capacity_tokens=16, compiled=compiled)
        spec = die.spec
        x = np.ascontiguousarray(np.random.default_rng(0).standard_normal((5, spec.d_model)), dtype=np.float32)
        ev, routes = Events.for_spec(spec), []
        die.run_layers(x, ev, routes)
        assert routes[0].shape == (5, 2, spec.n_experts_used)
        fired = ev.experts()[:, :, 0]
        assert fired[[0, 3]].sum() == 0 and fired[1].sum() == fired[2].sum() == 5 * spec.n_experts_used
        for j, layer in enumerate(die.die.layers):
            assert np.array_equal(fired[layer], np.bincount(routes[0][:, j].ravel(), minlength=spec.n_experts))
        assert ev.counts[[0, 3, ev.head, ev.embed]].sum() == 0 and ev.counts[[1, 2], 0].tolist() == [5, 5]


def test_moe_generate_and_counted_pricing(moe_model):
    """generate on a system equals the chip's; the counted events price per die (expert regions with
    their layers) to the same compute time as the one chip."""
    from hcemu.perf.silicon import SiliconModel
    from hcemu.perf.system import SystemModel
    whole, systems = moe_model
    images = systems["3"].load_images(verify=False)
    ref = Chip(whole, kv_capacity_tokens=64).generate(PROMPT[:20], 6)
    system = System(images, "fp32", kv_capacity_tokens=64)
    gen = system.generate(PROMPT[:20], 6)
    assert gen.ids == ref.ids and gen.prefill_events == ref.prefill_events and gen.decode_events == ref.decode_events
    spec, plan = system.spec, system.plan
    part = systems["3"].partition
    sm = SystemModel("hc1", "ucie-2d", "fp32")
    r = sm.price(spec, plan, part, 20, 6, gen.prefill_events, gen.decode_events, gen.decode_link_events)
    chip = sm.chip_for(spec, plan)
    si = SiliconModel(chip).price(spec, plan, 20, 6, ref.prefill_events, ref.decode_events)
    assert r.compute_s_per_token == pytest.approx(si.latency_s_per_token, rel=1e-12)
    assert sum(d.compute_s_per_token for d in r.dies) == pytest.approx(r.compute_s_per_token, rel=1e-12)
    assert sum(d.dynamic_energy_j_per_token for d in r.dies) == pytest.approx(si.dynamic_energy_j_per_token,
                                                                               rel=1e-9)


def test_moe_system_on_every_isa_path(moe_model, restore_isa):
    whole, systems = moe_model
    check_every_isa_path(whole, systems["3"].load_images(verify=False))


def check_every_isa_path(whole, images):
    """On every ISA path the machine has: the system of ``images`` prefills as the one chip of ``whole``."""
    import hcemu

    for isa in hcemu.capabilities()["supported"]:
        hcemu.set_isa(isa)
        a = Chip(whole, kv_capacity_tokens=48).prefill(PROMPT[:40], all_logits=True)
        b = System(images, "fp32", kv_capacity_tokens=48).prefill(PROMPT[:40], all_logits=True)
        assert np.array_equal(a.logits, b.logits) and a.events == b.events, isa
