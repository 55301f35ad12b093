"""Partitioning a model over dies, one ROM image per die, and the system manifest."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from hcemu.formats import get_plan
from hcemu.model.spec import ModelSpec, get_preset
from hcemu.model.synthetic import SyntheticSource
from hcemu.rom import DieAssignment, RomImage, compile_model, region_rom_bits, rom_bits_for_model
from hcemu.rom.manifest import (MANIFEST_NAME, SystemManifestError, compile_system, is_system, load_manifest)
from hcemu.rom.partition import (Partition, balanced_splits, check_dies, die_cost_terms, dies_from_counts,
                                 partition_model)

SMALL = ModelSpec("small-untied", 5, 64, 4, 2, 16, 96, 200, max_context=128)
SMALL_TIED = ModelSpec("small-tied", 4, 64, 4, 2, 16, 96, 300, tied_embeddings=True, max_context=128)
INT4 = get_plan("int4")


@pytest.mark.parametrize("spec", [SMALL, SMALL_TIED, get_preset("smollm2-135m"), get_preset("llama-3.1-70b")],
                         ids=lambda s: s.name)
def test_die_rom_bits_add_up_to_the_whole(spec):
    """Per-region bits sum to RomBits.total for any die; a split's dies sum to the whole image plus,
    with tied embeddings, the head die's copy of the embedding matrix."""
    plan = get_plan("hc1-int4") if spec.d_model % 128 == 0 else INT4
    whole = rom_bits_for_model(spec, plan)
    assert region_rom_bits(spec, plan).sum() == whole.total
    layer_bits, emb, head, total = die_cost_terms(spec, plan)
    assert total == whole.total
    for n in (2, 3, min(7, spec.n_layers)):
        part = partition_model(spec, plan, n)
        bits = part.die_rom_bits()
        for d, b in zip(part.dies, bits):
            assert region_rom_bits(spec, plan, die=d).sum() == b.total
            assert b.total == emb * d.embedding + head * d.head + layer_bits[d.first_layer:d.end_layer].sum()
        assert sum(b.total for b in bits) == layer_bits.sum() + emb + head
    head_of_whole = region_rom_bits(spec, plan)[spec.n_layers]   # output_norm (+ output.weight when untied)
    assert head - head_of_whole == (emb if spec.tied_embeddings else 0)   # the tied head die's own copy


def test_balanced_split_is_the_best_contiguous_split():
    """Against brute force over every composition: the largest die is minimal, and the split chosen
    among the minimal ones is the most even."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        L = int(rng.integers(2, 9))
        c = rng.integers(1, 50, L)
        e, h = int(rng.integers(0, 80)), int(rng.integers(0, 80))
        got = balanced_splits(c, e, h)
        for n in range(2, L + 1):
            best = None
            for cuts in itertools.combinations(range(1, L), n - 1):
                b = (0,) + cuts + (L,)
                dies = [int(c[b[k]:b[k + 1]].sum()) for k in range(n)]
                dies[0] += e
                dies[-1] += h
                key = (max(dies), sum(x * x for x in dies))
                best = key if best is None or key < best else best
            largest, counts = got[n]
            assert largest == best[0]
            assert sum(counts) == L and min(counts) >= 1
            bounds = np.concatenate([[0], np.cumsum(counts)])
            dies = [int(c[bounds[k]:bounds[k + 1]].sum()) for k in range(n)]
            dies[0] += e
            dies[-1] += h
            assert (max(dies), sum(x * x for x in dies)) == best


def test_partition_modes_and_errors():
    p = partition_model(SMALL, INT4, 2)
    assert p.balance == "rom_bits" and p.n_dies == 2 and sum(p.layers_per_die) == 5
    assert p.dies[0].embedding and not p.dies[0].head and p.dies[1].head and not p.dies[1].embedding
    assert p.hops == ((0, 1, p.dies[0].end_layer - 1),)
    assert partition_model(SMALL, INT4, 1).dies == (DieAssignment.whole(5),)
    ex = partition_model(SMALL, INT4, layers_per_die=[1, 1, 3])
    assert ex.balance == "explicit" and ex.layers_per_die == (1, 1, 3)
    whole = rom_bits_for_model(SMALL, INT4).total
    assert partition_model(SMALL, INT4, max_rom_bits=whole).n_dies == 1
    auto = partition_model(SMALL, INT4, max_rom_bits=whole - 1)
    assert auto.n_dies >= 2 and max(b.total for b in auto.die_rom_bits()) <= whole - 1
    with pytest.raises(ValueError, match="exactly one"):
        partition_model(SMALL, INT4)
    with pytest.raises(ValueError, match="exactly one"):
        partition_model(SMALL, INT4, 2, layers_per_die=[2, 3])
    with pytest.raises(ValueError, match="1..5"):
        partition_model(SMALL, INT4, 6)
    with pytest.raises(TypeError):
        partition_model(SMALL, INT4, 2.0)
    with pytest.raises(ValueError, match="sum to"):
        partition_model(SMALL, INT4, layers_per_die=[2, 2])
    with pytest.raises(ValueError, match=">= 1"):
        partition_model(SMALL, INT4, layers_per_die=[0, 5])
    with pytest.raises(ValueError, match="does not fit dies"):
        partition_model(SMALL, INT4, max_rom_bits=1000)


def test_check_dies_refuses_broken_pipelines():
    good = dies_from_counts(5, [2, 3])
    check_dies(5, good)
    a, b = good
    bad = [
        (DieAssignment(0, 2, 5, 0, 2, False, False), b),                     # embedding missing
        (a, DieAssignment(1, 2, 5, 3, 5, False, True)),                      # gap at layer 2
        (a, DieAssignment(1, 2, 5, 2, 4, False, True)),                      # layer 4 missing
        (a, DieAssignment(1, 2, 5, 2, 5, True, True)),                       # two embeddings
        (b, a),                                                              # out of order
        (a, DieAssignment(1, 3, 5, 2, 5, False, True)),                      # wrong n_dies
    ]
    for dies in bad:
        with pytest.raises(ValueError):
            check_dies(5, dies)
    with pytest.raises(ValueError):
        DieAssignment(2, 2, 5, 0, 1, True, True)
    with pytest.raises(ValueError):
        DieAssignment(0, 1, 5, 3, 2, True, True)
    with pytest.raises(TypeError):
        DieAssignment(0, 1, 5, 0, 5, 1, True)
    with pytest.raises(ValueError):
        Partition(SMALL, INT4, None, (a,), "explicit")


@pytest.mark.parametrize("spec", [SMALL, SMALL_TIED], ids=lambda s: s.name)
def test_die_images_hold_the_whole_images_codes(spec, tmp_path):
    """Every matrix and vector of every die image is byte-identical to the one-chip image's; each die
    holds exactly its share; its RomBits equal the shapes' prediction."""
    src = SyntheticSource(spec, seed=3)
    compile_model(src, INT4, tmp_path / "whole.hcrom", progress=False)
    whole = RomImage.load(tmp_path / "whole.hcrom")
    part = partition_model(spec, INT4, layers_per_die=[1, spec.n_layers - 2, 1])
    rep = compile_system(src, INT4, tmp_path / "sys", part, progress=False)
    images = rep.manifest.load_images()
    seen = set()
    for d, img in zip(part.dies, images):
        assert img.die == d
        assert img.rom_bits == rom_bits_for_model(spec, INT4, die=d)
        layers = {int(n.split(".")[1]) for n in img.names() if n.startswith("blk.")}
        assert layers == set(d.layers)
        assert ("token_embd.weight" in img.names()) == (d.embedding or (spec.tied_embeddings and d.head))
        assert ("output_norm.weight" in img.names()) == d.head
        assert ("output.weight" in img.names()) == (d.head and not spec.tied_embeddings)
        for name in img.names():
            seen.add(name)
            if name in img._vectors:
                assert np.array_equal(img.vector(name), whole.vector(name))
                continue
            a, b = img.matrix(name), whole.matrix(name)
            assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales, b.scales)
            assert (a.offsets is None) == (b.offsets is None)
            if a.offsets is not None:
                assert np.array_equal(a.offsets, b.offsets)
    assert seen == set(whole.names())
    if spec.tied_embeddings:   # the head die reads its own copy from its head region
        head_img = images[-1]
        assert head_img.tensor_info("output.weight")["region"] == spec.n_layers
        assert head_img.address_map.region_banks[spec.n_layers + 1] == 0


def test_manifest_round_trip_and_corruption(tmp_path):
    src = SyntheticSource(SMALL, seed=0)
    out = tmp_path / "sys"
    rep = compile_system(src, INT4, out, partition_model(SMALL, INT4, 3), progress=False)
    assert is_system(out) and is_system(out / MANIFEST_NAME) and not is_system(tmp_path)
    m = load_manifest(out)
    assert m == rep.manifest and m.n_dies == 3 and m.spec == SMALL and m.balance == "rom_bits"
    assert [len(i.names()) for i in m.load_images()]
    assert "die" in rep.table() and json.dumps(rep.to_dict())
    text = (out / MANIFEST_NAME).read_text()

    (out / MANIFEST_NAME).write_text(text.replace('"after_layer": ', '"after_layer": 1'))
    with pytest.raises(SystemManifestError, match="corrupt manifest"):
        load_manifest(out)
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(SystemManifestError, match="unreadable"):
        load_manifest(out)
    (out / MANIFEST_NAME).write_text(json.dumps({"format": "hcsys", "version": 9}))
    with pytest.raises(SystemManifestError, match="version 9"):
        load_manifest(out)
    (out / MANIFEST_NAME).write_text(json.dumps([1, 2]))
    with pytest.raises(SystemManifestError, match="not an hcemu system"):
        load_manifest(out)
    (out / MANIFEST_NAME).write_text(text)
    # an image swapped for another die's, or missing
    os.replace(out / "die-01.hcrom", tmp_path / "keep.hcrom")
    with pytest.raises(SystemManifestError, match="missing"):
        load_manifest(out).load_images()
    compile_model(src, INT4, out / "die-01.hcrom", progress=False,
                  die=DieAssignment(1, 3, 5, 0, 1, False, False))
    with pytest.raises(SystemManifestError, match="not the one the manifest names"):
        load_manifest(out).load_images()
    with pytest.raises(SystemManifestError, match="no system manifest"):
        load_manifest(tmp_path)


def test_recompile_is_atomic_and_removes_stale_dies(tmp_path):
    class Failing(SyntheticSource):
        def raw(self, name):
            if name.startswith("blk.4."):
                raise RuntimeError("simulated failure mid-compile")
            return super().raw(name)

    out = tmp_path / "sys"
    compile_system(SyntheticSource(SMALL), INT4, out, partition_model(SMALL, INT4, 4), progress=False)
    assert sorted(os.listdir(out)) == ["die-00.hcrom", "die-01.hcrom", "die-02.hcrom", "die-03.hcrom", MANIFEST_NAME]
    with pytest.raises(RuntimeError, match="simulated"):
        compile_system(Failing(SMALL), INT4, out, partition_model(SMALL, INT4, 2), progress=False)
    assert not (out / MANIFEST_NAME).exists()          # no manifest naming half-written images
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    compile_system(SyntheticSource(SMALL), INT4, out, partition_model(SMALL, INT4, 2), progress=False)
    assert sorted(os.listdir(out)) == ["die-00.hcrom", "die-01.hcrom", MANIFEST_NAME]
    with pytest.raises(ValueError, match="partition is of"):
        compile_system(SyntheticSource(SMALL_TIED), INT4, out, partition_model(SMALL, INT4, 2), progress=False)
    with pytest.raises(ValueError, match="plan"):
        compile_system(SyntheticSource(SMALL), get_plan("int8"), out, partition_model(SMALL, INT4, 2),
                       progress=False)


def test_compile_cli_chips(tmp_path, capsys):
    from hcemu.cli import main
    from hcemu.perf.system import reference_die_rom_bits
    from model_helpers import write_tiny_gguf

    gguf_path = str(tmp_path / "six.gguf")
    write_tiny_gguf(gguf_path, ModelSpec("six-layers", 6, 64, 4, 2, 16, 96, 80, max_context=128))
    out = tmp_path / "sys"
    assert main(["compile", "tiny", "--chips", "2", "--out", str(out), "--no-progress"]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert main(["compile", gguf_path, "--chips", "3", "--out", str(out), "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["dies"]) == 3 and rep["manifest"]["balance"] == "rom_bits"
    assert main(["compile", gguf_path, "--layers-per-die", "5,1", "--out", str(out), "--no-progress"]) == 0
    assert "over 2 dies" in capsys.readouterr().out
    assert load_manifest(out).dies[1].die.layers == range(5, 6)
    whole = rom_bits_for_model(load_manifest(out).spec, INT4).total
    assert main(["compile", gguf_path, "--chips", "auto", "--die-rom-gbit", str(whole * 0.6 / 1e9), "--out", str(out),
                 "--no-progress"]) == 0
    m = load_manifest(out)
    assert m.n_dies == 2 and max(e.rom_bits["total"] for e in m.dies) <= whole * 0.6
    for bad, msg in ((["--chips", "x"], "positive integer or 'auto'"), (["--chips", "7"], "1..6"),
                     (["--die-rom-gbit", "1"], "needs --chips auto"),
                     (["--chips", "3", "--layers-per-die", "3,3"], "disagrees"),
                     (["--layers-per-die", "3,a"], "integers separated by commas")):
        assert main(["compile", gguf_path, "--out", str(out), "--no-progress", *bad]) == 1
        assert msg in capsys.readouterr().err
    assert reference_die_rom_bits() == rom_bits_for_model(get_preset("llama-3.1-8b"), get_plan("hc1-int4")).total
