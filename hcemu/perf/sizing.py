"""Sizing a chip for its model: a technology preset's per-region units, KV SRAM and leakage scaled from
the model it was sized for (:attr:`ChipSpec.sized_for_model`) to another model. The rules are in
``docs/perf.md`` ("Sizing a chip for its model"); the area model they consult is :mod:`hcemu.perf.area`.
"""
from __future__ import annotations

import math

from hcemu.model.spec import get_preset
from hcemu.perf.analytic import kv_bytes_per_key_head, kv_bytes_per_token
from hcemu.perf.area import chip_area_breakdown
from hcemu.perf.specs import ChipSpec, default_plan, get_chip


def size_for_model(chip: ChipSpec | str, spec, plan=None, *, users: int | None = None,
                   context_tokens: int | None = None) -> ChipSpec:
    """``chip``'s technology with its per-region units, KV SRAM and leakage sized for ``spec`` (a ModelSpec)
    instead of :attr:`ChipSpec.sized_for_model` (a model preset name). Returns ``chip`` for that model itself
    when no ``users``/``context_tokens`` are asked.

    Rules (docs/perf.md "Sizing a chip for its model"): a hard-wired chip's units are sized so each
    region's pass takes the reference's cycles --

    * CIM lanes (int4 and int8) scale with a layer's own weights (a mixture-of-experts layer's
      experts have balanced regions of their own: :func:`hcemu.perf.area.expert_lane_scale`), rounded up to whole CIM units of
      2,048 lanes (one 16x128 tile per cycle); the ROM read width with the same lane ratio, rounded
      up to 512-bit words;
    * attention lanes scale with the attention MACs per key (``n_heads x head_dim``), rounded up to
      128; SRAM bandwidth with the KV bytes per key and layer, rounded up to 32-byte ports;
    * vector lanes and transcendental units scale with ``d_model``, rounded up to 32 and 8;
    * KV SRAM: ``users x context_tokens x`` KV bytes per token when both are given, else the
      reference's SRAM scaled by the KV bytes per token (as many tokens of KV as the reference holds);
    * static power scales with the die's transistors (leakage per transistor is technology).

    Clock, energies per event, densities, transistors per lane, overhead, IO, power limit and card
    price are technology and stay. plan: default :func:`default_plan`.
    """
    chip = get_chip(chip)
    if (users is None) != (context_tokens is None):
        raise ValueError("give both users and context_tokens (the KV SRAM they need) or neither")
    if users is not None and (int(users) < 1 or int(context_tokens) < 1):
        raise ValueError(f"users and context_tokens must be >= 1, got {users}, {context_tokens}")
    ref = get_preset(chip.sized_for_model)
    plan = plan if plan is not None else default_plan(spec)
    if spec == ref and users is None:
        return chip

    def up(x, unit):
        return max(unit, int(math.ceil(x / unit - 1e-9)) * unit)

    w4 = up(chip.cim_macs_per_cycle_w4 * spec.layer_own_params / ref.layer_own_params, 2048)
    lane_ratio = w4 / chip.cim_macs_per_cycle_w4
    kv_key = (spec.n_kv_heads * kv_bytes_per_key_head(spec, plan)
              / (ref.n_kv_heads * kv_bytes_per_key_head(ref, plan)))
    attn = (spec.n_heads * spec.head_dim) / (ref.n_heads * ref.head_dim)
    d = spec.d_model / ref.d_model
    if users is not None:
        kv_sram = int(users) * int(context_tokens) * kv_bytes_per_token(spec, plan)
    else:
        kv_sram = int(math.ceil(chip.kv_sram_bytes * kv_bytes_per_token(spec, plan)
                                / kv_bytes_per_token(ref, plan)))
    sized = chip.replace(
        name=f"{chip.name}/{spec.name}", sized_for_model=spec.name,
        cim_macs_per_cycle_w4=w4, cim_macs_per_cycle_w8=up(chip.cim_macs_per_cycle_w8 * lane_ratio, 2048),
        rom_read_bits_per_cycle=up(chip.rom_read_bits_per_cycle * lane_ratio, 512),
        attn_macs_per_cycle=up(chip.attn_macs_per_cycle * attn, 128),
        sram_read_bytes_per_cycle=up(chip.sram_read_bytes_per_cycle * kv_key, 32),
        vec_flops_per_cycle=up(chip.vec_flops_per_cycle * d, 32),
        vec_transcendentals_per_cycle=up(chip.vec_transcendentals_per_cycle * d, 8),
        kv_sram_bytes=kv_sram)
    t_ref = chip_area_breakdown(chip, ref, plan).transistors
    t_new = chip_area_breakdown(sized, spec, plan).transistors
    return sized.replace(static_power_w=chip.static_power_w * t_new / t_ref)
