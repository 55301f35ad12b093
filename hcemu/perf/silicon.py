"""SiliconModel: prices counted events with a ChipSpec — latency, throughput, energy, power, area.

Timing (all in cycles of ``clock_ghz``, so doubling the clock halves every time):

* a region's pass time composes its units in dependence order for one token:
  ``cim + attention + vector + overhead`` where
  ``cim = max(MACs_w4 / lanes_w4 + MACs_w8 / lanes_w8, ROM bits / read width, adapter)``,
  ``adapter = max(adapter SRAM bytes / SRAM bandwidth, adapter int8 MACs / attention lanes +
  2 adapter fp16 MACs / vector lanes)``: the LoRA side path runs *beside* the ROM product, on the
  SRAM ports and the attention unit's int8 lanes (or the vector unit's float lanes for fp16 adapters),
  which are idle while the ROM products run;
  ``attention = max(KV SRAM bytes / SRAM bandwidth, attention MACs / attention lanes)`` (the stream
  and the MACs overlap), ``vector = (vec flops + quantized activations) / vector lanes +
  transcendentals / units``, ``overhead = region_overhead_cycles`` per pass;
* one user's token visits every region in turn: decode latency per token is the sum over regions;
  a mixture-of-experts token's ``k`` experts run at once, each in its own region (docs/perf.md
  "Mixture of experts"), so a layer's experts add one expert pass: their regions' cycles divided by ``k``;
* several users pipeline through the regions: aggregate tok/s ``= min(n * per-user, 1 / slowest
  region)`` with ``n`` bounded by the KV SRAM (users whose whole context fits), by the power limit and by
  the tokens the regions hold at once (:func:`pipeline_users`) -- :func:`serving`, the one rule; a
  region's load is its cycles per token of the stream, so a busy expert (more than its ``k / E`` share
  of the routes) is what bounds a mixture-of-experts chip;
* prefill of ``t`` tokens streams through the regions: the first token's latency plus ``t - 1``
  slowest-region pass times.

Energy is the dot product of the events with the energies per event, plus activation broadcast
wires; power = energy per token x tokens/s + static power. Area and transistors come from
:mod:`hcemu.perf.area` (the ROM bits of the image, the KV SRAM and the lanes).

Every time component is a sum over passes of per-pass terms, and the two terms under each ``max``
are proportional to each other across passes (both per key, or both per weight), so pricing the
*totals* of many passes is exact: the scalar path (events from the functional chip) and the
vectorized path (:func:`decode_sweep`, many design points at once) share :func:`_region_cycles`,
:func:`_energy_pj` and the serving rule :func:`serving`, so they agree point by point.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from hcemu.events import FIELD_INDEX, MAC_FIELDS, Events
from hcemu.model.spec import ModelSpec
from hcemu.perf.analytic import (decode_keys, decode_positions, events_from_shapes, kv_bytes_per_token,
                                 pass_coefficients)
from hcemu.perf.area import adapter_sram_bytes_for, chip_area_breakdown, expert_lane_scale, head_lane_scale
from hcemu.perf.specs import CHIP_NON_NUMERIC, CHIP_ZERO_OK, ChipSpec, get_chip

_I = FIELD_INDEX
_MACS = [FIELD_INDEX[f] for f in MAC_FIELDS]


def _col(counts, name):
    return counts[..., _I[name]].astype(np.float64)


def _region_cycles(counts, chip, cim_scale, vec_scale=1.0):
    """Cycles of each time component for the counts ``(..., n_fields)``; ``chip`` parameters may be arrays.

    cim_scale: lane multiplier of the region (1 for layers, the balance ratio for the head and the
    experts); vec_scale: the vector unit's (the experts' balance ratio, else 1).
    Returns ``(cim, attention, vector, overhead)`` arrays broadcast over the leading axes.
    """
    mac = ((_col(counts, "macs_w4") + _col(counts, "macs_fp4")) / chip.cim_macs_per_cycle_w4
           + _col(counts, "macs_w8") / chip.cim_macs_per_cycle_w8)
    rom = (_col(counts, "rom_code_bits") + _col(counts, "rom_meta_bits")) / chip.rom_read_bits_per_cycle
    adapter = np.maximum(_col(counts, "sram_adapter_bytes_read") / chip.sram_read_bytes_per_cycle,
                         _col(counts, "adapter_macs_w8") / chip.attn_macs_per_cycle
                         + 2 * _col(counts, "adapter_macs_f16") / chip.vec_flops_per_cycle)
    cim = np.maximum(np.maximum(mac, rom) / cim_scale, adapter)
    sram = (_col(counts, "sram_kv_bytes_read") + _col(counts, "sram_kv_bytes_written")) / chip.sram_read_bytes_per_cycle
    attn = np.maximum(sram, _col(counts, "attn_macs") / chip.attn_macs_per_cycle)
    vec = ((_col(counts, "vec_flops") + _col(counts, "act_quant_elems")) / chip.vec_flops_per_cycle
           + _col(counts, "vec_transcendentals") / chip.vec_transcendentals_per_cycle) / vec_scale
    over = _col(counts, "tokens") * chip.region_overhead_cycles
    return cim, attn, vec, over


def pipeline_users(spec: ModelSpec) -> int:
    """Most tokens (of different users) in flight at once: one per layer region, the head and the
    embedding, and one per ``k`` expert regions (a token in its experts occupies ``k`` of them)."""
    return spec.n_layers + 2 + (spec.n_layers * spec.n_experts // spec.n_experts_used if spec.is_moe else 0)


def _energy_pj(counts, chip):
    """Dynamic energy (pJ) of the counts ``(..., n_fields)``."""
    e = ((_col(counts, "rom_code_bits") + _col(counts, "rom_meta_bits")) * chip.rom_read_pj_per_bit
         + _col(counts, "macs_w4") * chip.mac_w4_pj + _col(counts, "macs_w8") * chip.mac_w8_pj
         + _col(counts, "macs_fp4") * chip.mac_fp4_pj
         + (_col(counts, "attn_macs") + _col(counts, "adapter_macs_w8")) * chip.attn_mac_pj
         + 2 * _col(counts, "adapter_macs_f16") * chip.vec_flop_pj
         + (_col(counts, "sram_kv_bytes_read") + _col(counts, "sram_adapter_bytes_read")) * chip.sram_read_pj_per_byte
         + _col(counts, "sram_kv_bytes_written") * chip.sram_write_pj_per_byte
         + _col(counts, "act_quant_elems") * (chip.act_quant_pj_per_elem
                                              + 8 * chip.activation_broadcast_mm * chip.wire_pj_per_bit_mm)
         + _col(counts, "vec_flops") * chip.vec_flop_pj
         + _col(counts, "vec_transcendentals") * chip.vec_transcendental_pj)
    return e


def _layer_macs_per_pass(events: Events) -> float | None:
    macs = events.counts[:, _MACS].sum(axis=1)
    tok = events.counts[:, _I["tokens"]]
    layers = tok[: events.n_layers] > 0
    if not layers.any():
        return None
    return float((macs[: events.n_layers][layers] / tok[: events.n_layers][layers]).mean())


def _events_head_scale(events: Events, chip) -> float:
    """The head's lane multiplier from counted events (MACs per pass, head over mean layer)."""
    if not chip.head_balanced:
        return 1.0
    macs = events.counts[:, _MACS].sum(axis=1)
    tok = events.counts[:, _I["tokens"]]
    layer_per_pass = _layer_macs_per_pass(events)
    if layer_per_pass is None or tok[events.head] == 0:
        return 1.0
    return max(1.0, float(macs[events.head] / tok[events.head]) / layer_per_pass)


def _events_expert_scale(events: Events) -> float:
    """The experts' lane multiplier from counted events: an expert pass's MACs over a layer pass's
    (:func:`hcemu.perf.area.expert_lane_scale` from shapes)."""
    rows = events.counts[events.n_layers + 2:]
    macs = rows[:, _MACS].sum(axis=1)
    tok = rows[:, _I["tokens"]]
    layer_per_pass = _layer_macs_per_pass(events)
    if layer_per_pass is None or not (tok > 0).any():
        return 1.0
    return float((macs[tok > 0] / tok[tok > 0]).mean()) / layer_per_pass


def _routed_per_token(events: Events) -> int:
    """Experts each token is routed to, read off the counts (expert passes over layer passes)."""
    passes = int(events.counts[: events.n_layers, _I["tokens"]].sum())
    routed = int(events.counts[events.n_layers + 2:, _I["tokens"]].sum())
    return max(1, routed // passes) if passes else 1


def serving(per_user_tok_s, slowest_region_s, dynamic_energy_j_per_token, users_kv, n_regions, chip) -> dict:
    """THE serving rule: how many users pipeline through the regions, and the throughput and power then.

    Scalars or broadcast arrays (``chip`` fields too), times in seconds, energy in J. users_kv: users
    whose whole context fits the KV SRAM (:func:`kv_users`); n_regions: the pipeline depth
    (:func:`pipeline_users`: ``n_layers + 2``, and the expert regions over ``k``). Aggregate tok/s with ``n`` users is ``min(n * per_user, 1 / slowest region)``
    and power ``E_token * aggregate(n) + static``: power users are the largest ``n`` in
    ``[0, n_regions]`` with power ``<= power_limit_w`` -- all of them when even the saturated pipeline
    (``n * per_user >= 1 / slowest``) stays under the limit, else ``floor((limit - static) / (E_token *
    per_user))`` (every such ``n`` is below saturation). Users = ``min(users_kv, power users,
    n_regions)``. Returns float arrays ``users_kv_limit``, ``users_power_limit``, ``users``,
    ``aggregate_tok_s``, ``power_w``.
    """
    static, limit = chip.static_power_w, chip.power_limit_w
    saturated_w = dynamic_energy_j_per_token / slowest_region_s + static
    headroom_w = np.maximum(limit - static, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero energies: the saturated branch decides
        below = np.where(headroom_w > 0, np.floor(headroom_w / (dynamic_energy_j_per_token * per_user_tok_s)), 0.0)
    power_users = np.minimum(np.where(saturated_w <= limit, n_regions, below), n_regions)
    users = np.minimum(np.minimum(users_kv, power_users), n_regions)
    aggregate = np.minimum(users * per_user_tok_s, 1.0 / slowest_region_s)
    return {"users_kv_limit": np.asarray(users_kv, dtype=np.float64),
            "users_power_limit": np.asarray(power_users, dtype=np.float64), "users": users,
            "aggregate_tok_s": aggregate, "power_w": dynamic_energy_j_per_token * aggregate + static}


def kv_users(spec: ModelSpec, plan, kv_sram_bytes, context):
    """Users whose KV at ``context`` tokens (scalar or array) fits ``kv_sram_bytes``: floor division."""
    return np.floor_divide(np.asarray(kv_sram_bytes, dtype=np.float64),
                           kv_bytes_per_token(spec, plan) * np.asarray(context, dtype=np.float64))


@dataclass(frozen=True)
class RegionTiming:
    """Cycles spent by each region on the priced events, by component; arrays of shape (regions,).

    latency_weights: how much of a region's cycles one user waits for (1; ``1/k`` for the expert
    regions, whose ``k`` passes of a token run at once)."""

    cim_cycles: np.ndarray
    attention_cycles: np.ndarray
    vector_cycles: np.ndarray
    overhead_cycles: np.ndarray
    tokens: np.ndarray
    latency_weights: np.ndarray | None = None

    @property
    def total_cycles(self) -> np.ndarray:
        return self.cim_cycles + self.attention_cycles + self.vector_cycles + self.overhead_cycles

    @property
    def latency_cycles(self) -> float:
        """Cycles one user waits for all the passes: the regions' cycles, weighted."""
        w = 1.0 if self.latency_weights is None else self.latency_weights
        return float((self.total_cycles * w).sum())

    @property
    def cycles_per_pass(self) -> np.ndarray:
        """Mean cycles of one pass through each region (0 where the region saw no pass)."""
        return np.divide(self.total_cycles, self.tokens, out=np.zeros_like(self.total_cycles),
                         where=self.tokens > 0)


@dataclass(frozen=True)
class SiliconResult:
    """Modeled figures of one chip on one workload (decode figures average over the decode steps)."""

    chip: str
    model: str
    plan: str
    n_prompt: int
    n_generated: int
    decode_steps: int
    latency_s_per_token: float
    per_user_tok_s: float
    prefill_s: float
    slowest_region_s: float
    users_kv_limit: int
    users_power_limit: int
    users: int
    aggregate_tok_s: float
    dynamic_energy_j_per_token: float
    power_w: float
    power_single_user_w: float
    energy_j_per_token: float
    area_mm2: float
    transistors: float
    latency_breakdown_s: dict
    sram_mm2: float = 0.0
    adapter_sram_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SiliconModel:
    """Prices events with a :class:`ChipSpec` (see the module docstring for the equations)."""

    def __init__(self, chip: ChipSpec | str = "hc1"):
        self.chip = get_chip(chip)

    def timing(self, events: Events) -> RegionTiming:
        rows = events.counts.shape[0]
        scale, vec_scale, weights = np.ones(rows), np.ones(rows), np.ones(rows)
        scale[events.head] = _events_head_scale(events, self.chip)
        if events.n_experts:
            scale[events.n_layers + 2:] = vec_scale[events.n_layers + 2:] = (
                _events_expert_scale(events) * self.chip.expert_lane_share)
            weights[events.n_layers + 2:] = 1.0 / _routed_per_token(events)
        cim, attn, vec, over = _region_cycles(events.counts, self.chip, scale, vec_scale)
        return RegionTiming(cim, attn, vec, over, events.counts[:, _I["tokens"]].astype(np.float64), weights)

    def seconds(self, events: Events) -> float:
        """Seconds for one user to run all the passes in ``events`` one after another (a token's
        experts at once)."""
        return self.timing(events).latency_cycles / (self.chip.clock_ghz * 1e9)

    def energy_j(self, events: Events) -> float:
        """Dynamic energy (J) of the events."""
        return float(self.energy_j_per_region(events).sum())

    def energy_j_per_region(self, events: Events) -> np.ndarray:
        """Dynamic energy (J) of each region's events, float64 (n_layers + 2,) in Events' region order."""
        return _energy_pj(events.counts, self.chip) * 1e-12

    def prefill_stages(self, events: Events, n_tokens: int, regions=None) -> tuple[float, float]:
        """Prefill of ``n_tokens`` (>= 1) through the regions: ``(first, slowest)`` in seconds, the first
        token's latency through them and the slowest region's time per token of the prompt (an expert
        region's: its load per prompt token). regions: a bool mask over the event rows to count (a die's
        regions; default all)."""
        t = self.timing(events)
        per_pass = t.cycles_per_pass
        mask = np.ones(per_pass.shape[0], bool) if regions is None else np.asarray(regions, bool)
        dense = np.zeros_like(mask)
        dense[: events.n_layers + 2] = True
        first = float(per_pass[dense & mask].sum())
        slowest = float(per_pass[dense & mask].max(initial=0.0))
        if events.n_experts:  # an expert region's load per token of the prompt
            e = ~dense & mask
            share = t.total_cycles[e] / n_tokens
            first += float((share * t.latency_weights[e]).sum())
            slowest = max(slowest, float(share.max(initial=0.0)))
        hz = self.chip.clock_ghz * 1e9
        return first / hz, slowest / hz

    def prefill_seconds(self, events: Events, n_tokens: int) -> float:
        """Prefill of ``n_tokens`` pipelined through the regions: first token's latency + (t-1) slowest passes."""
        if n_tokens <= 0:
            return 0.0
        first, slowest = self.prefill_stages(events, n_tokens)
        return first + (n_tokens - 1) * slowest

    def evaluate(self, spec: ModelSpec, plan, n_prompt: int, n_generated: int, *, adapters=(),
                 resident_adapters: int | None = None) -> SiliconResult:
        """Decode and prefill figures for a prompt of ``n_prompt`` tokens and ``n_generated`` out.

        adapters: :class:`~hcemu.perf.analytic.LoraShape` (or several) applied by the request;
        resident_adapters: how many adapters of that shape the SRAM holds (default 1), sized into the
        die's SRAM (:func:`~hcemu.perf.area.adapter_sram_bytes_for`).
        """
        if n_prompt < 1 or n_generated < 2:
            raise ValueError(f"need n_prompt >= 1 and n_generated >= 2 (at least one decode step), "
                             f"got {n_prompt}, {n_generated}")
        prefill = events_from_shapes(spec, plan, n_prompt, 0, adapters=adapters)
        decode = events_from_shapes(spec, plan, positions=decode_positions(n_prompt, n_generated), adapters=adapters)
        sram = adapter_sram_bytes_for(spec, adapters, 1 if resident_adapters is None else resident_adapters)
        return self.price(spec, plan, n_prompt, n_generated, prefill, decode, adapter_sram_bytes=sram)

    def price(self, spec: ModelSpec, plan, n_prompt: int, n_generated: int, prefill: Events,
              decode: Events, adapter_sram_bytes: int = 0) -> SiliconResult:
        """Figures from counted events (the functional chip's or the analytical generator's).

        adapter_sram_bytes: SRAM held by resident LoRA adapters, added to the die beside the KV SRAM."""
        chip = self.chip
        hz = chip.clock_ghz * 1e9
        steps = int(decode.counts[0, _I["tokens"]]) if decode.n_layers else 0
        if steps < 1:
            raise ValueError("the decode events hold no decode step")
        t = self.timing(decode)
        latency = t.latency_cycles / hz / steps
        per_user = 1.0 / latency
        slowest = float(t.total_cycles.max()) / hz / steps   # the busiest region's cycles per token
        e_dyn = self.energy_j(decode) / steps
        sv = serving(per_user, slowest, e_dyn, kv_users(spec, plan, chip.kv_sram_bytes, n_prompt + n_generated - 1),
                     pipeline_users(spec), chip)
        users, aggregate, power = int(sv["users"]), float(sv["aggregate_tok_s"]), float(sv["power_w"])
        area = chip_area_breakdown(chip, spec, plan, adapter_sram_bytes=adapter_sram_bytes)
        comp = {"cim": t.cim_cycles, "attention": t.attention_cycles, "vector": t.vector_cycles,
                "overhead": t.overhead_cycles}
        return SiliconResult(
            chip=chip.name, model=spec.name, plan=plan.name, n_prompt=n_prompt, n_generated=n_generated,
            decode_steps=steps, latency_s_per_token=latency, per_user_tok_s=per_user,
            prefill_s=self.prefill_seconds(prefill, n_prompt), slowest_region_s=slowest,
            users_kv_limit=int(sv["users_kv_limit"]), users_power_limit=int(sv["users_power_limit"]), users=users,
            aggregate_tok_s=aggregate,
            dynamic_energy_j_per_token=e_dyn, power_w=power,
            power_single_user_w=e_dyn * per_user + chip.static_power_w,
            energy_j_per_token=power / aggregate if aggregate else float("inf"),
            area_mm2=area.total_mm2, transistors=area.transistors,
            latency_breakdown_s={k: float((v * t.latency_weights).sum()) / hz / steps for k, v in comp.items()},
            sram_mm2=area.sram_mm2, adapter_sram_bytes=int(adapter_sram_bytes))


# ----------------------------------------------------------------------------------------------
# Vectorized path: many design points x contexts at once

def chip_arrays(base: ChipSpec | str = "hc1", **overrides) -> SimpleNamespace:
    """A chip whose fields may be numpy arrays (broadcast together) for :func:`decode_sweep`."""
    base = get_chip(base)
    ns = SimpleNamespace(**{k: v for k, v in asdict(base).items()})
    for k, v in overrides.items():
        if not hasattr(base, k):
            raise ValueError(f"ChipSpec has no field {k!r}")
        if k in CHIP_NON_NUMERIC:
            raise ValueError(f"{k} cannot be swept")
        arr = np.asarray(v, dtype=np.float64)
        low = arr < 0 if k in CHIP_ZERO_OK else arr <= 0
        if np.any(~np.isfinite(arr)) or np.any(low):
            raise ValueError(f"{k} must be finite and {'>= 0' if k in CHIP_ZERO_OK else '> 0'} in every design point")
        setattr(ns, k, arr)
    return ns


def decode_sweep(spec: ModelSpec, plan, chip, n_prompt, n_generated) -> dict[str, np.ndarray]:
    """Decode figures over broadcast arrays of design points: ``latency_s_per_token``, ``per_user_tok_s``,
    ``dynamic_energy_j_per_token``, ``slowest_region_s`` and the outputs of :func:`serving`
    (``users_kv_limit``, ``users_power_limit``, ``users``, ``aggregate_tok_s``, ``power_w``).

    chip: a ChipSpec, a preset name or :func:`chip_arrays`. n_prompt, n_generated: int arrays
    (broadcast with the chip's arrays). Numbers equal the same fields of :meth:`SiliconModel.evaluate`
    point by point (same cycle, energy and serving functions).
    """
    if isinstance(chip, (str, ChipSpec)):
        chip = chip_arrays(chip)
    n_prompt = np.asarray(n_prompt, dtype=np.float64)
    n_generated = np.asarray(n_generated, dtype=np.float64)
    if np.any(n_prompt < 1) or np.any(n_generated < 2):
        raise ValueError("need n_prompt >= 1 and n_generated >= 2 everywhere")
    co = pass_coefficients(spec, plan)
    steps = n_generated - 1
    s = steps[..., None]
    # the layers, grouped by sliding window: keys over decode positions n_prompt .. n_prompt + steps - 1
    windows = {w: co.windows.count(w) for w in sorted(set(co.windows))}
    layers = [(co.layer_const * s + co.layer_per_key * decode_keys(n_prompt, steps, w)[..., None], n)
              for w, n in windows.items()]
    head = co.head_const * s
    embed = co.embed_const * s
    hscale = head_lane_scale(spec, plan, chip) if np.ndim(chip.head_balanced) == 0 else None
    if hscale is None:
        raise ValueError("head_balanced must be a single bool in a sweep")
    hz = chip.clock_ghz * 1e9
    parts = []   # (cycles, regions of that kind, latency weight)
    for counts, scale, mult in [(c, 1.0, n) for c, n in layers] + [(head, hscale, 1), (embed, 1.0, 1)]:
        parts.append((sum(_region_cycles(counts, chip, scale)), mult, 1.0))
    expert = None
    if spec.is_moe:  # balanced routing: each expert takes k / E of the passes (docs/perf.md)
        k, E = spec.n_experts_used, spec.n_experts
        escale = expert_lane_scale(spec) * chip.expert_lane_share
        expert = co.expert_const * (s * k / E)
        parts.append((sum(_region_cycles(expert, chip, escale, escale)), spec.n_layers * E, 1.0 / k))
    total = sum(c * m * w for c, m, w in parts)
    latency = total / hz / steps
    slowest = np.maximum.reduce([c / steps for c, _, _ in parts]) / hz
    energy = (sum(n * _energy_pj(c, chip) for c, n in layers) + _energy_pj(head, chip)
              + _energy_pj(embed, chip)
              + (spec.n_layers * spec.n_experts * _energy_pj(expert, chip) if expert is not None else 0)) * 1e-12 / steps
    per_user = 1.0 / latency
    sv = serving(per_user, slowest, energy, kv_users(spec, plan, chip.kv_sram_bytes, n_prompt + n_generated - 1),
                 pipeline_users(spec), chip)
    out = {"latency_s_per_token": latency, "per_user_tok_s": per_user, "dynamic_energy_j_per_token": energy,
           "slowest_region_s": slowest, **sv}
    shape = np.broadcast_shapes(*(np.shape(v) for v in out.values()))
    return {k: np.broadcast_to(v, shape) for k, v in out.items()}
