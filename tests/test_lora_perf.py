"""Pricing LoRA adapters: the side path's events in the silicon model, adapter SRAM in the area model,
and the adapter row of ``hcemu compare``."""
import pytest

from hcemu.model.spec import LAYER_MATRICES, get_preset
from hcemu.perf.analytic import LoraShape, events_from_shapes, pass_coefficients
from hcemu.perf.area import adapter_sram_bytes_for, chip_area_breakdown
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.specs import HC1_PLAN, get_chip

SPEC = get_preset("llama-3.1-8b")


def test_lora_shape_counts_and_bytes():
    shape = LoraShape(16)
    per_layer_bytes = shape.sram_bytes(SPEC) // SPEC.n_layers
    # A: 16 x (4 x 4096 + 14336) int8 + scales per 32; B: (2 x 4096 + 2 x 1024 + 2 x 14336 + 4096) x 16 + a scale per row
    a_in = 4096 * 6 + 14336
    b_out = 4096 + 1024 + 1024 + 4096 + 14336 + 14336 + 4096
    assert per_layer_bytes == 16 * a_in + 2 * 16 * a_in // 32 + 16 * b_out + 2 * b_out
    layer = shape.layer_counts(SPEC)
    co = pass_coefficients(SPEC, HC1_PLAN, shape)
    base = pass_coefficients(SPEC, HC1_PLAN)
    assert (co.layer_const - base.layer_const == layer).all()
    assert (co.head_const == base.head_const).all()
    assert adapter_sram_bytes_for(SPEC, shape, 3) == 3 * shape.sram_bytes(SPEC)
    for bad in (dict(rank=0), dict(rank=16, kinds=("output",)), dict(rank=16, fmt="int4"), dict(rank=2.5)):
        with pytest.raises(ValueError):
            LoraShape(**bad)
    with pytest.raises(TypeError):
        events_from_shapes(SPEC, HC1_PLAN, 4, 2, adapters=[16])


def test_adapters_run_beside_the_rom_product_and_cost_energy_and_sram():
    base = SiliconModel("hc1").evaluate(SPEC, HC1_PLAN, 1024, 1024)
    lo = SiliconModel("hc1").evaluate(SPEC, HC1_PLAN, 1024, 1024, adapters=LoraShape(16), resident_adapters=4)
    # beside the ROM product: only the adds and the intermediate's quantization lengthen the pass
    assert 0.98 < lo.per_user_tok_s / base.per_user_tok_s < 1.0
    assert lo.dynamic_energy_j_per_token > base.dynamic_energy_j_per_token
    chip = get_chip("hc1")
    extra = 4 * LoraShape(16).sram_bytes(SPEC)
    assert lo.adapter_sram_bytes == extra
    assert lo.sram_mm2 - base.sram_mm2 == pytest.approx(8 * extra / (chip.sram_density_mbit_per_mm2 * 1e6))
    assert lo.area_mm2 == pytest.approx(chip_area_breakdown(chip, SPEC, HC1_PLAN, adapter_sram_bytes=extra).total_mm2)
    # a huge adapter outgrows the ROM product it runs beside, and then sets the pace
    huge = SiliconModel("hc1").evaluate(SPEC, HC1_PLAN, 1024, 1024, adapters=LoraShape(2048))
    assert huge.per_user_tok_s < 0.8 * base.per_user_tok_s
    # fp16 adapters: twice the SRAM bytes, MACs on the vector unit's float lanes
    f16 = SiliconModel("hc1").evaluate(SPEC, HC1_PLAN, 1024, 1024, adapters=LoraShape(16, fmt="fp16"))
    assert f16.adapter_sram_bytes > 1.75 * LoraShape(16).sram_bytes(SPEC)  # int8 carries its scales
    assert f16.dynamic_energy_j_per_token > lo.dynamic_energy_j_per_token


def test_compare_shows_the_adapter_row(capsys):
    from hcemu.cli import main

    assert main(["compare", "--no-host", "--lora-rank", "16", "--lora-resident", "8", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)["rows"]
    base, lora = rows[0], rows[1]
    assert lora["system"] == "hc1 + LoRA" and "MiB of SRAM" in lora["note"] and "mm2" in lora["note"]
    assert lora["area_mm2"] > base["area_mm2"] + 50  # 8 x 44 MiB of SRAM at 28 Mbit/mm2
    assert lora["power_w"] > base["power_w"] and lora["per_user_tok_s"] < base["per_user_tok_s"]
    assert main(["compare", "--no-host", "--lora-rank", "8", "--lora-matrices", "attn_q,attn_v"]) == 0
    assert "rank 8 on 2 matrices" in capsys.readouterr().out
    assert main(["compare", "--no-host", "--lora-rank", "8", "--lora-matrices", "attn_x"]) == 1
    assert LAYER_MATRICES
