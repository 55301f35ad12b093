"""One die-area model: the floorplan of a compiled image and the shape-only silicon path agree exactly."""
from __future__ import annotations

import dataclasses

import pytest

from hcemu.formats import get_plan
from hcemu.model.gguf_source import GGUFSource
from hcemu.model.spec import ModelSpec, get_preset
from hcemu.model.synthetic import SyntheticSource
from hcemu.perf.area import area_breakdown, chip_area_breakdown, floorplan
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import HC1_PLAN, get_chip, sources
from hcemu.rom import RomImage, compile_model, rom_bits_for_model
from hcemu.rom.geometry import RomGeometry

SMALL = ModelSpec("area-small", 3, 128, 4, 2, 32, 256, 300)
SMALL_TIED = ModelSpec("area-tied", 2, 256, 4, 1, 64, 512, 1000, tied_embeddings=True)


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("area")
    out = []
    for spec, plan in ((SMALL, "int4"), (SMALL, "hc1-int4"), (SMALL_TIED, "int8"), (SMALL_TIED, "int4-sym")):
        path = d / f"{spec.name}-{plan}.hcrom"
        compile_model(SyntheticSource(spec, seed=1), plan, path, progress=False)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def smollm2_image(smollm2_gguf, tmp_path_factory):
    path = tmp_path_factory.mktemp("area-smol") / "smollm2-int4.hcrom"
    src = GGUFSource(smollm2_gguf)
    try:
        compile_model(src, "int4", path, progress=False)
    finally:
        close = getattr(src, "close", None)
        if close:
            close()
    return path


def _assert_same(img):
    """Image counts == shape counts, and floorplan == chip_area_breakdown, field by field."""
    assert img.rom_bits == rom_bits_for_model(img.spec, img.plan)
    for kv in (None, 0, 1000):
        fp = floorplan(img, "hc1", kv_tokens=kv)
        sram = None if kv is None else fp.kv_sram_bytes
        shape = chip_area_breakdown("hc1", img.spec, img.plan, kv_sram_bytes=sram)
        assert fp.area == shape
        assert fp.total_mm2 == shape.total_mm2 and fp.total_transistors == shape.transistors


def test_floorplan_equals_shape_path_small(small_images):
    for path in small_images:
        with RomImage.load(path) as img:
            _assert_same(img)


def test_floorplan_equals_shape_path_smollm2(smollm2_image):
    with RomImage.load(smollm2_image) as img:
        _assert_same(img)
        rb = img.rom_bits
        assert rb.banks == img.address_map.n_banks and rb.code_used <= rb.code_physical
        assert rb.vector == sum(n for *_, n in img.spec.norms()) * 32


def test_rom_bits_count_what_the_image_holds():
    spec = get_preset("llama-3.1-8b")
    rb = rom_bits_for_model(spec, HC1_PLAN)
    # codes of 8.03 B weights at 4 bits + one fp16 scale per 128 (no tile padding in Llama's shapes)
    assert rb.code_used + rb.meta == pytest.approx(spec.n_params * 4.125, rel=1e-9)
    assert rb.code_used < rb.code_physical < 1.05 * rb.code_used          # blank bank slots
    assert rb.vector == (2 * spec.n_layers + 1) * spec.d_model * 32
    assert rb.total == rb.code_physical + rb.meta + rb.vector
    # a deeper bank geometry changes the padding, and the shape path follows the geometry it is given
    g = RomGeometry.for_model(spec, HC1_PLAN, bank_rows=4096)
    a, b = chip_area_breakdown("hc1", spec, HC1_PLAN), chip_area_breakdown("hc1", spec, HC1_PLAN, geometry=g)
    assert b.rom_bits == rom_bits_for_model(spec, HC1_PLAN, g).total
    assert a.logic_mm2 == b.logic_mm2 and a.sram_mm2 == b.sram_mm2


def test_area_breakdown_equations():
    chip = get_chip("hc1")
    a = area_breakdown(chip, rom_bits=10**9, sram_bytes=2**20, n_layers=4, head_lane_scale=1.5)
    assert a.rom_mm2 == pytest.approx(1e9 / (chip.rom_density_mbit_per_mm2 * 1e6))
    assert a.sram_mm2 == pytest.approx(8 * 2**20 / (chip.sram_density_mbit_per_mm2 * 1e6))
    assert a.cim_lanes == chip.cim_macs_per_cycle_w4 * 5.5
    assert a.overhead_mm2 == pytest.approx(chip.core_overhead_fraction * (a.rom_mm2 + a.sram_mm2 + a.logic_mm2))
    assert a.total_mm2 == pytest.approx(a.rom_mm2 + a.sram_mm2 + a.logic_mm2 + a.overhead_mm2 + chip.io_area_mm2)
    assert a.transistors == pytest.approx(1e9 / chip.rom_bits_per_transistor + 8 * 2**20 * 6 + a.logic_transistors)
    # SRAM is linear in bytes; ROM in bits
    b = area_breakdown(chip, rom_bits=2 * 10**9, sram_bytes=10 * 2**20, n_layers=4, head_lane_scale=1.5)
    assert b.rom_mm2 == pytest.approx(2 * a.rom_mm2) and b.sram_mm2 == pytest.approx(10 * a.sram_mm2)
    with pytest.raises(ValueError, match="rom_bits"):
        area_breakdown(chip, rom_bits=-1, sram_bytes=0, n_layers=1)
    with pytest.raises(ValueError, match="head_lane_scale"):
        area_breakdown(chip, rom_bits=1, sram_bytes=0, n_layers=1, head_lane_scale=-1.0)   # 0: a die without the head


def test_density_parameters_have_one_home():
    """The area parameters are ChipSpec fields with sources, and the area model reads them (changing one
    moves its block's area in proportion)."""
    src = sources("hc1")
    chip = get_chip("hc1")
    for f in ("rom_density_mbit_per_mm2", "rom_bits_per_transistor", "sram_density_mbit_per_mm2",
              "sram_transistors_per_bit", "logic_density_mtr_per_mm2", "cim_lane_transistors",
              "core_overhead_fraction", "io_area_mm2"):
        assert f in {x.name for x in dataclasses.fields(chip)} and src[f]
    base = area_breakdown(chip, rom_bits=10**9, sram_bytes=10**8, n_layers=4)
    dense = area_breakdown(chip.replace(rom_density_mbit_per_mm2=2 * chip.rom_density_mbit_per_mm2,
                                        sram_density_mbit_per_mm2=4 * chip.sram_density_mbit_per_mm2,
                                        logic_density_mtr_per_mm2=8 * chip.logic_density_mtr_per_mm2),
                           rom_bits=10**9, sram_bytes=10**8, n_layers=4)
    assert dense.rom_mm2 == pytest.approx(base.rom_mm2 / 2)
    assert dense.sram_mm2 == pytest.approx(base.sram_mm2 / 4)
    assert dense.logic_mm2 == pytest.approx(base.logic_mm2 / 8)
    assert dense.io_mm2 == base.io_mm2 == chip.io_area_mm2


def test_floorplan_kv_tokens(small_images):
    with RomImage.load(small_images[0]) as img:
        s = img.spec
        fp = floorplan(img, kv_tokens=100)
        assert fp.kv_sram_bytes == 100 * 2 * s.n_layers * s.n_kv_heads * (s.head_dim + 2)
        assert floorplan(img, kv_tokens=1000).area.sram_mm2 == pytest.approx(10 * fp.area.sram_mm2)
        assert floorplan(img).kv_sram_bytes == get_chip("hc1").kv_sram_bytes
        ad = floorplan(img, kv_tokens=100, adapter_sram_bytes=4096)
        assert ad.area.sram_bytes == fp.kv_sram_bytes + 4096
        with pytest.raises(ValueError, match="kv_tokens"):
            floorplan(img, kv_tokens=-1)


# ---- sizing a chip for the model it hard-wires


def test_for_model_is_identity_for_the_reference():
    chip = get_chip("hc1")
    assert size_for_model(chip, get_preset(chip.sized_for_model)) is chip
    two = size_for_model(chip, get_preset("llama-3.1-8b"), HC1_PLAN, users=2, context_tokens=2048)
    assert two.kv_sram_bytes == 2 * 2048 * (2 * 32 * 8 * (128 + 2))
    assert two.cim_macs_per_cycle_w4 == chip.cim_macs_per_cycle_w4 and two.static_power_w < chip.static_power_w


def test_for_model_sizes_a_small_chip():
    from hcemu.perf.analytic import kv_bytes_per_token
    from hcemu.perf.silicon import SiliconModel

    chip, spec, plan = get_chip("hc1"), get_preset("smollm2-135m"), get_plan("int4")
    small = size_for_model(chip, spec, plan)
    assert small.sized_for_model == spec.name and small.name == "hc1/smollm2-135m"
    # lanes in whole 2048-lane CIM units, at least the layer-weight share of the reference's
    assert small.cim_macs_per_cycle_w4 % 2048 == 0
    assert small.cim_macs_per_cycle_w4 >= chip.cim_macs_per_cycle_w4 * spec.layer_params / get_preset(
        "llama-3.1-8b").layer_params
    # as many KV tokens as the reference holds
    ref_tokens = chip.kv_sram_bytes / kv_bytes_per_token(get_preset("llama-3.1-8b"), plan)
    assert small.kv_sram_bytes / kv_bytes_per_token(spec, plan) == pytest.approx(ref_tokens, rel=1e-6)
    # technology stays
    for f in ("clock_ghz", "rom_density_mbit_per_mm2", "mac_w4_pj", "power_limit_w", "cim_lane_transistors"):
        assert getattr(small, f) == getattr(chip, f)
    big, sized = chip_area_breakdown(chip, spec, plan), chip_area_breakdown(small, spec, plan)
    assert sized.rom_bits == big.rom_bits and sized.total_mm2 < 0.25 * big.total_mm2
    r = SiliconModel(small).evaluate(spec, plan, 1024, 1024)
    # a layer region's CIM pass keeps about the reference's cycles: per-user speed of the same order as HC1
    assert 0.5 * 16960 < r.per_user_tok_s < 3 * 16960 and r.users >= 1
    assert r.power_w < chip.power_limit_w and small.static_power_w < chip.static_power_w
    with pytest.raises(ValueError, match="both users and context_tokens"):
        size_for_model(chip, spec, plan, users=2)
    with pytest.raises(ValueError, match=">= 1"):
        size_for_model(chip, spec, plan, users=0, context_tokens=10)


def test_inspect_prints_both_floorplans(small_images, capsys):
    import json

    from hcemu.cli import main

    path = small_images[0]
    assert main(["inspect", str(path), "--no-verify", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    with RomImage.load(path) as img:
        assert d["floorplan"]["total_mm2"] == pytest.approx(floorplan(img).total_mm2)
        sized = floorplan(img, size_for_model("hc1", img.spec, img.plan))
    assert d["floorplan_sized"]["total_mm2"] == pytest.approx(sized.total_mm2)
    assert sized.total_mm2 < d["floorplan"]["total_mm2"]
    assert d["floorplan_chip"]["rom_bits_per_transistor"] == get_chip("hc1").rom_bits_per_transistor
    assert main(["inspect", str(path), "--no-verify", "--kv-tokens", "64"]) == 0
    out = capsys.readouterr().out
    assert "floorplan (hc1 technology)" in out and "64 tokens" in out and "sized for this model" in out
