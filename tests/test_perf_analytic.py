"""The analytical event generator: hand-computed counts for tiny shapes and internal consistency."""
import numpy as np
import pytest

from hcemu.events import FIELD_INDEX, Events
from hcemu.formats import ActFormat, Plan, WeightFormat, get_plan
from hcemu.model.spec import ModelSpec, get_preset
from hcemu.perf.analytic import (decode_positions, events_for_passes, events_from_shapes, kv_bytes_per_token,
                                 pass_coefficients)
from hcemu.perf.specs import HC1_PLAN
from hcemu.rom.image import rom_bits_for_model

TINY = ModelSpec("tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128, vocab_size=96,
                 max_context=64)


def test_one_decode_pass_matches_hand_counts():
    ev = events_from_shapes(TINY, get_plan("int8"), positions=[3])
    # seven int8-g32 products: 36,864 MACs in 72 tiles of 16x32 bytes, 16 fp16 scales per tile
    layer = {"tokens": 1, "macs_w8": 36864, "macs_w4": 0, "rom_code_bits": 72 * 512 * 8,
             "rom_meta_bits": 72 * 256, "rom_tiles": 72,
             "sram_kv_bytes_read": 4 * 2 * 2 * 18, "sram_kv_bytes_written": 2 * 2 * 18,
             "sram_adapter_bytes_read": 0, "attn_macs": 2 * 4 * 16 * 4, "act_quant_elems": 320,
             "vec_flops": 512 + 288 + 80 + 512 + 128, "vec_transcendentals": 2 + 16 + 128,
             "adapter_macs_w8": 0, "adapter_macs_f16": 0, "macs_fp4": 0}
    assert ev.region(0) == layer and ev.region(1) == layer
    assert ev.region("head") == {"tokens": 1, "macs_w8": 6144, "macs_w4": 0, "rom_code_bits": 12 * 4096,
                                 "rom_meta_bits": 12 * 256, "rom_tiles": 12, "sram_kv_bytes_read": 0,
                                 "sram_kv_bytes_written": 0, "sram_adapter_bytes_read": 0, "attn_macs": 0,
                                 "act_quant_elems": 64, "vec_flops": 256, "vec_transcendentals": 1,
                                 "adapter_macs_w8": 0, "adapter_macs_f16": 0, "macs_fp4": 0}
    assert ev.region("embed") == {"tokens": 1, "macs_w8": 0, "macs_w4": 0, "rom_code_bits": 512, "rom_meta_bits": 32,
                                  "rom_tiles": 2, "sram_kv_bytes_read": 0, "sram_kv_bytes_written": 0,
                                  "sram_adapter_bytes_read": 0, "attn_macs": 0, "act_quant_elems": 0,
                                  "vec_flops": 64, "vec_transcendentals": 0,
                                  "adapter_macs_w8": 0, "adapter_macs_f16": 0, "macs_fp4": 0}


def test_padding_offsets_and_fp16_kv_are_counted():
    spec = ModelSpec("odd", 1, 64, 4, 2, 16, 128, vocab_size=100, max_context=64)
    plan = Plan("t", WeightFormat(4, 32, True), WeightFormat(8, 0), WeightFormat(4, 32, True), ActFormat(), "fp16")
    ev = events_from_shapes(spec, plan, positions=[0])
    head = ev.region("head")
    # 100 rows pad to 7 row tiles; 2 blocks; 256-byte int4 tiles; scale + offset per row and block
    assert head["macs_w4"] == 6400 and head["rom_tiles"] == 14
    assert head["rom_code_bits"] == 14 * 256 * 8 and head["rom_meta_bits"] == 14 * 16 * 16 * 2
    emb = ev.region("embed")  # per-channel int8 row: 64 inputs in two 32-wide tiles, one scale
    assert emb["rom_code_bits"] == 64 * 8 and emb["rom_meta_bits"] == 16 and emb["rom_tiles"] == 2
    assert ev.region(0)["sram_kv_bytes_read"] == 1 * 2 * 2 * 16 * 2  # fp16: no scales


def test_consecutive_positions_differ_only_in_attention_terms():
    spec, plan = get_preset("llama-3.1-8b"), HC1_PLAN
    co = pass_coefficients(spec, plan)
    a = events_from_shapes(spec, plan, positions=[700])
    b = events_from_shapes(spec, plan, positions=[701])
    diff = (b - a).layers()
    assert (diff == co.layer_per_key).all()
    changed = {f for f, i in FIELD_INDEX.items() if co.layer_per_key[i]}
    assert changed == {"sram_kv_bytes_read", "attn_macs", "vec_flops", "vec_transcendentals"}
    assert (b - a).region("head") == Events(spec.n_layers).region("head")


def test_generation_is_prefill_plus_decode_steps():
    spec, plan = get_preset("smollm2-135m"), get_plan("int4")
    n_prompt, n_gen = 11, 5
    total = events_from_shapes(spec, plan, n_prompt, n_gen)
    prefill = events_from_shapes(spec, plan, n_prompt, 0)
    decode = events_from_shapes(spec, plan, positions=decode_positions(n_prompt, n_gen))
    assert total == prefill + decode
    assert total.region(0)["tokens"] == n_prompt + n_gen - 1
    assert total.region("head")["tokens"] == 1 + n_gen - 1   # last prompt token, then each decode step
    assert prefill.region(0)["sram_kv_bytes_read"] == sum(range(1, n_prompt + 1)) * 3 * 2 * (64 + 2)
    assert events_from_shapes(spec, plan, n_prompt, 0, all_logits=True).region("head")["tokens"] == n_prompt
    # one token out needs no decode step
    assert events_from_shapes(spec, plan, n_prompt, 1) == prefill


def test_positions_sum_like_a_loop_of_single_passes():
    spec, plan = TINY, get_plan("int4")
    pos = [0, 5, 9, 9, 30]
    loop = Events(spec.n_layers)
    for p in pos:
        loop += events_for_passes(spec, plan, [p])
    assert loop == events_from_shapes(spec, plan, positions=pos)


def test_tied_head_uses_the_embedding_and_rom_counts_it_once():
    spec = get_preset("smollm2-135m")
    plan = Plan("mix", WeightFormat(4, 32, True), WeightFormat(8, 32), WeightFormat(4, 64), ActFormat(), "int8")
    ev = events_from_shapes(spec, plan, positions=[0])
    assert ev.region("head")["macs_w8"] == spec.vocab_size * spec.d_model and ev.region("head")["macs_w4"] == 0
    untied = ModelSpec(**{**spec.to_dict(), "tied_embeddings": False, "name": "untied"})
    emb = spec.vocab_size * spec.d_model
    held = lambda m: rom_bits_for_model(m, plan).code_used + rom_bits_for_model(m, plan).meta  # noqa: E731
    assert held(untied) - held(spec) == emb * 4 + emb // 64 * 16


def test_kv_bytes_per_token_llama_8b():
    # 2 * 32 layers * 8 heads * 128 = 65,536 values (silicon-facts), plus a 2-byte scale per token and head
    assert kv_bytes_per_token(get_preset("llama-3.1-8b"), HC1_PLAN) == 65536 + 2 * 32 * 8 * 2


@pytest.mark.parametrize("kwargs, err", [
    (dict(n_prompt=-1), ValueError), (dict(n_prompt=1.5), TypeError), (dict(n_generated=3), ValueError),
    (dict(n_prompt=2, positions=[1]), ValueError), (dict(n_prompt=60, n_generated=10), ValueError),
    (dict(positions=[-1]), ValueError)])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        events_from_shapes(TINY, get_plan("int8"), **kwargs)


def test_head_passes_cannot_exceed_passes():
    with pytest.raises(ValueError, match="exceeds"):
        events_for_passes(TINY, get_plan("int8"), [0, 1], head_passes=3)
    assert np.array_equal(events_for_passes(TINY, get_plan("int8"), []).counts, Events(2).counts)
