"""Systems of hard-coded dies: die budgets, link events from shapes, and pricing a pipeline of dies
joined by links (``docs/system.md``).

Every die is a card of ``chip``'s technology, sized for the model (:func:`hcemu.perf.sizing.size_for_model`:
every layer region has the lanes that give it the reference's pass time), holding a contiguous range
of layers (:mod:`hcemu.rom.partition`) and its own KV SRAM (``kv_sram_bytes_per_die``, default the
preset's ``kv_sram_bytes``: an HC1-class die's SRAM). For ``n_dies`` dies and ``n_dies - 1`` hops:

* per-user decode latency per token = the sum of every region's time (the same regions as on one
  chip, priced by :class:`~hcemu.perf.silicon.SiliconModel`) + the hops, each ``latency_ns +
  message bytes / bandwidth`` (:class:`~hcemu.perf.links.LinkSpec`);
* users are pipelined through all dies: the stages are the regions and the hops; aggregate tok/s
  ``= min(n x per-user, 1 / slowest stage)`` where a hop's stage time is its serialization (its
  latency is in flight, it does not occupy the link); ``n`` is bounded by the KV SRAM of every die
  (the users whose context fits on the die with the least room), by every die's power limit and by
  the number of stages;
* power: each die's dynamic energy x aggregate + its leakage (the sized chip's static power in
  proportion to its transistors) + half of each link it ends (links run continuously); board power
  is the sum; area: each die's :func:`~hcemu.perf.area.area_breakdown` (its ROM bits from its image,
  its KV SRAM, its layer regions, the head lanes on the last die) + one PHY per link end;
* cost: ``n_dies`` cards, ``n_dies`` mask sets (each die's ROM differs) + one design per model.

A mixture-of-experts model is split the same way, every expert staying with its layer
(:func:`die_regions`): a die's regions are its layers, their expert regions (priced from the balanced
expert passes of :func:`hcemu.perf.analytic.events_from_shapes`, or from a functional system's routes),
the head and the embedding where it holds them; a token's ``k`` experts of a layer run at once, so one
user waits ``1 / k`` of their cycles (:meth:`hcemu.perf.silicon.SiliconModel.timing`) and the pipeline
holds :func:`hcemu.perf.silicon.pipeline_users` tokens plus one per hop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hcemu.events import FIELD_INDEX, Events, LinkEvents
from hcemu.formats import get_link_format, kv_bytes_per_token_layer
from hcemu.model.spec import ModelSpec, get_preset
from hcemu.perf.analytic import decode_positions, events_from_shapes
from hcemu.perf.area import area_breakdown, chip_area_breakdown, expert_lanes, head_lane_scale
from hcemu.perf.cost import HOURS_PER_YEAR, CostModel, CostResult
from hcemu.perf.links import LinkSpec, get_link
from hcemu.perf.silicon import SiliconModel, pipeline_users
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import HC1_PLAN, ChipSpec, get_chip, get_cost
from hcemu.rom.image import region_rom_bits, rom_bits_for_model
from hcemu.rom.partition import Partition, die_cost_terms, expert_blocks, expert_link_index, partition_model

RETICLE_MM2 = 858.0
"""Largest die one exposure field prints, 26 x 33 mm [V: the ASML/TSMC scanner field]; a die above it
cannot be made as one piece of silicon (it would need stitching or a wafer-scale process)."""

DEFAULT_LINK = "pcie5-x16"
"""The default link between dies: HC1 cards sit in a server's PCIe slots ([V] 10 cards per server)."""


def reference_die_rom_bits(chip: ChipSpec | str = "hc1") -> int:
    """ROM bits of the reference die of ``chip``'s technology: its ``sized_for_model`` in
    :data:`HC1_PLAN` (hc1: Llama 3.1 8B, 33.7 Gbit) — the default die budget of ``--chips auto``."""
    chip = get_chip(chip)
    return rom_bits_for_model(get_preset(chip.sized_for_model), HC1_PLAN).total


def link_events_from_shapes(spec: ModelSpec, n_hops: int, link_format, passes: int) -> LinkEvents:
    """The link events a :class:`hcemu.chip.system.System` counts for ``passes`` token passes: every
    hop carries one message of ``message_bytes(d_model)`` per pass."""
    if n_hops < 0 or passes < 0:
        raise ValueError(f"n_hops and passes must be >= 0, got {n_hops}, {passes}")
    nbytes = get_link_format(link_format).message_bytes(spec.d_model)
    counts = np.tile(np.array([passes, passes * nbytes], np.int64), (n_hops, 1)).reshape(n_hops, 2)
    return LinkEvents(n_hops, counts)


def expert_dispatch_passes(spec: ModelSpec, events: Events, ep: int) -> np.ndarray:
    """Expert passes of ``events`` per layer and expert block (:func:`expert_blocks`): int64 (n_layers, ep)
    (zeros (n_layers, 1) for a dense model)."""
    if not spec.is_moe:
        return np.zeros((spec.n_layers, 1), np.int64)
    fired = events.experts()[:, :, FIELD_INDEX["tokens"]]
    out = np.zeros((spec.n_layers, ep), np.int64)
    for b in range(ep):
        out[:, b] = fired[:, expert_blocks(spec, ep) == b].sum(axis=1)
    return out


def expert_link_events(spec: ModelSpec, partition: Partition, events: Events, ep: int, link_format) -> LinkEvents:
    """The dispatch/combine traffic of expert parallelism over ``ep`` dies per layer: link
    ``k * (ep - 1) + b - 1`` joins pipeline die ``k`` to its expert die ``b`` (1 .. ep - 1); every expert
    pass of ``events`` whose expert sits in block ``b`` of one of die ``k``'s layers sends one dispatch
    message (the token's normalized FFN input) to the expert die and one combine message (the expert's
    output) back, each ``message_bytes(d_model)`` in ``link_format``. No traffic for ``ep`` = 1."""
    n = partition.n_dies * (ep - 1)
    if n == 0:
        return LinkEvents(0)
    nbytes = get_link_format(link_format).message_bytes(spec.d_model)
    passes = expert_dispatch_passes(spec, events, ep)
    counts = np.zeros((n, 2), np.int64)
    for d in partition.dies:
        for b in range(1, ep):
            m = 2 * int(passes[d.first_layer:d.end_layer, b].sum())
            counts[expert_link_index(d.index, b, ep)] = (m, m * nbytes)
    return LinkEvents(n, counts)


def _round_trips_s(link: LinkSpec, remote: np.ndarray, serialization_s: float) -> float:
    """Seconds one token waits for expert parallelism: per layer with remote expert passes (``remote``:
    (n_layers, ep - 1) messages per token to each expert die), a dispatch and a combine, each the link's
    latency plus the busiest expert die's messages serialized."""
    if remote.size == 0:
        return 0.0
    busiest = remote.max(axis=1)
    return float((2 * (link.latency_ns * 1e-9 + busiest * serialization_s))[busiest > 0].sum())


def die_region_bits(spec: ModelSpec, plan, partition: Partition) -> np.ndarray:
    """ROM bits of every region on every die, int64 (n_dies, n_regions) (:func:`region_rom_bits` of each
    die's image), from the whole model's regions: a die's layer and expert regions are the one-chip
    image's (the same banks, scales and norms), the embedding's and the head's (with a tied copy on the
    head die) are :func:`hcemu.rom.partition.die_cost_terms`'."""
    L = spec.n_layers
    whole = region_rom_bits(spec, plan, partition.geometry)
    rows = die_regions(spec, partition)
    out = np.where(rows, whole[None, :], 0)
    if partition.n_dies > 1:
        _layers, emb, head, _total = die_cost_terms(spec, plan, partition.geometry)
        out[:, L + 1] = np.where(rows[:, L + 1], emb, 0)
        out[:, L] = np.where(rows[:, L], head, 0)
    return out


def die_regions(spec: ModelSpec, partition: Partition) -> np.ndarray:
    """Which event regions (rows of :class:`~hcemu.events.Events` of ``spec``) each die holds: bool
    (n_dies, n_regions) — its layers, their experts (every expert of a layer stays with the layer), the
    head on the head die, the embedding on the embedding die."""
    ev = Events.for_spec(spec)
    rows = np.zeros((partition.n_dies, ev.counts.shape[0]), bool)
    for d in partition.dies:
        rows[d.index, d.first_layer:d.end_layer] = True
        rows[d.index, ev.head] = d.head
        rows[d.index, ev.embed] = d.embedding
        if spec.is_moe and d.n_die_layers:
            rows[d.index, ev.expert_index(d.first_layer, 0):ev.expert_index(d.end_layer - 1, spec.n_experts - 1) + 1] = True
    return rows


@dataclass(frozen=True)
class DieFigures:
    """One die of a priced system (decode figures; areas in mm2; power at the system's aggregate)."""

    index: int
    first_layer: int
    end_layer: int
    embedding: bool
    head: bool
    rom_bits: int
    kv_sram_bytes: int
    users_kv_limit: int
    compute_s_per_token: float
    dynamic_energy_j_per_token: float
    static_power_w: float
    link_power_w: float
    power_w: float
    area_mm2: float
    transistors: float
    expert_block: int = 0
    """0: a pipeline die (its layers, with expert block 0 of them); b >= 1: an expert die holding block b
    of the experts of layers ``first_layer .. end_layer - 1`` (expert parallelism)."""


@dataclass(frozen=True)
class SystemResult:
    """Modeled figures of a pipeline of dies on one workload (decode figures average over the decode
    steps). ``power_w`` is the board power of all dies and links; ``area_mm2`` the dies' total."""

    chip: str
    model: str
    plan: str
    link: str
    link_format: str
    n_dies: int
    layers_per_die: tuple
    n_prompt: int
    n_generated: int
    latency_s_per_token: float
    per_user_tok_s: float
    compute_s_per_token: float
    hops_s_per_token: float
    link_bytes_per_token: int
    prefill_s: float
    slowest_stage_s: float
    slowest_stage: str
    users_kv_limit: int
    users_power_limit: int
    users: int
    aggregate_tok_s: float
    dynamic_energy_j_per_token: float
    link_power_w: float
    power_w: float
    energy_j_per_token: float
    area_mm2: float
    largest_die_mm2: float
    transistors: float
    dies: tuple
    expert_parallel: int = 1
    expert_hops_s_per_token: float = 0.0
    expert_link_bytes_per_token: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SystemModel:
    """Prices a partition of a model over dies of ``chip``'s technology joined by ``link``s.

    chip: technology preset (sized for the model when ``sized``, as ``hcemu compare`` does for one
    chip); link: :class:`~hcemu.perf.links.LinkSpec` or preset name; link_format: what crosses each
    hop (:data:`hcemu.formats.LINK_FORMATS`); kv_sram_bytes_per_die: KV SRAM of every die (default:
    the preset's ``kv_sram_bytes``). expert_parallel: spread each pipeline die's experts over that many
    dies (its own block 0 and expert dies: :func:`hcemu.rom.partition.expert_blocks`, the assignment
    the compiler writes and :class:`hcemu.chip.system.System` runs); a partition compiled with expert
    parallelism brings its own (:meth:`expert_parallel_of`).
    """

    def __init__(self, chip: ChipSpec | str = "hc1", link: LinkSpec | str = DEFAULT_LINK, link_format="fp32",
                 kv_sram_bytes_per_die: int | None = None, sized: bool = True, expert_parallel: int = 1):
        self.base_chip = get_chip(chip)
        if isinstance(expert_parallel, bool) or not isinstance(expert_parallel, (int, np.integer)) or expert_parallel < 1:
            raise ValueError(f"expert_parallel must be an integer >= 1, got {expert_parallel!r}")
        self.expert_parallel = int(expert_parallel)
        self.link = get_link(link)
        self.link_format = get_link_format(link_format)
        if kv_sram_bytes_per_die is not None and int(kv_sram_bytes_per_die) < 0:
            raise ValueError(f"kv_sram_bytes_per_die must be >= 0, got {kv_sram_bytes_per_die}")
        self.kv_sram_bytes_per_die = (self.base_chip.kv_sram_bytes if kv_sram_bytes_per_die is None
                                      else int(kv_sram_bytes_per_die))
        self.sized = sized

    def chip_for(self, spec: ModelSpec, plan) -> ChipSpec:
        return size_for_model(self.base_chip, spec, plan) if self.sized else self.base_chip

    def partition(self, spec: ModelSpec, plan, n_dies=None, max_rom_bits=None) -> Partition:
        """``n_dies`` pipeline dies balanced by ROM bits, or the fewest within ``max_rom_bits`` per die
        (default: :func:`reference_die_rom_bits` of the chip), each with the model's expert parallelism
        (the balance and the budget count the home dies: their layers with expert block 0)."""
        ep = self.expert_parallel
        if n_dies is not None:
            return partition_model(spec, plan, int(n_dies), expert_parallel=ep)
        return partition_model(spec, plan, max_rom_bits=max_rom_bits or reference_die_rom_bits(self.base_chip),
                               expert_parallel=ep)

    def expert_parallel_of(self, partition: Partition) -> int:
        """The expert parallelism priced for ``partition``: its own (a partition compiled with expert dies)
        or this model's; ValueError when both are above 1 and differ."""
        a, b = partition.expert_parallel, self.expert_parallel
        if a > 1 and b > 1 and a != b:
            raise ValueError(f"the partition spreads experts over {a} dies, the system model over {b}")
        return max(a, b)

    def evaluate(self, spec: ModelSpec, plan, partition: Partition | int | None, n_prompt: int,
                 n_generated: int) -> SystemResult:
        """Decode and prefill figures of ``partition`` (a Partition, a die count, or None: the fewest dies
        within the reference die's ROM) for a prompt of ``n_prompt`` tokens and ``n_generated`` out."""
        if n_prompt < 1 or n_generated < 2:
            raise ValueError(f"need n_prompt >= 1 and n_generated >= 2 (at least one decode step), "
                             f"got {n_prompt}, {n_generated}")
        if not isinstance(partition, Partition):
            partition = self.partition(spec, plan, partition)
        prefill = events_from_shapes(spec, plan, n_prompt, 0)
        decode = events_from_shapes(spec, plan, positions=decode_positions(n_prompt, n_generated))
        steps = n_generated - 1
        links = link_events_from_shapes(spec, partition.n_dies - 1, self.link_format, steps)
        return self.price(spec, plan, partition, n_prompt, n_generated, prefill, decode, links)

    def price(self, spec: ModelSpec, plan, partition: Partition, n_prompt: int, n_generated: int,
              prefill: Events, decode: Events, decode_links: LinkEvents) -> SystemResult:
        """Figures from events (counted by a :class:`hcemu.chip.system.System` or from shapes): the
        dies' ``prefill``/``decode`` events of the whole model and the decode steps' link events. With
        ``expert_parallel`` > 1 the expert dies and their dispatch/combine traffic (from the events'
        expert passes, :func:`expert_link_events`) are added."""
        if partition.spec != spec:
            raise ValueError(f"the partition is of {partition.spec.name}, not {spec.name}")
        chip = self.chip_for(spec, plan)
        hz = chip.clock_ghz * 1e9
        L, E = spec.n_layers, spec.n_experts
        si = SiliconModel(chip)
        steps = int(decode.counts[0, 0])
        if steps < 1:
            raise ValueError("the decode events hold no decode step")
        n_pipe = partition.n_dies
        n_hops = n_pipe - 1
        if decode_links.n_hops != n_hops:
            raise ValueError(f"{decode_links.n_hops} hops of link events for {partition.n_dies} dies")
        if decode.n_layers != L or decode.n_experts != E:
            raise ValueError(f"the events are of {decode.n_layers} layers x {decode.n_experts} experts, the model "
                             f"has {L} x {E}")
        ep = self.expert_parallel_of(partition)
        block = expert_blocks(spec, ep)
        timing = si.timing(decode)
        region_s = timing.total_cycles * timing.latency_weights / hz / steps   # one user's wait, per token
        region_load_s = timing.total_cycles / hz / steps          # each region's busy time per token
        msg_bytes = np.divide(decode_links.counts[:, 1], np.maximum(decode_links.counts[:, 0], 1))
        msgs_per_step = decode_links.counts[:, 0] / steps
        hop_s = np.array([msgs_per_step[h] * self.link.hop_s(msg_bytes[h]) for h in range(n_hops)])
        hop_busy_s = np.array([self.link.serialization_s(msg_bytes[h]) for h in range(n_hops)])
        # expert parallelism: per MoE layer a dispatch and a combine, each waiting for the busiest block's messages
        one_msg = self.link_format.message_bytes(spec.d_model)
        ser = self.link.serialization_s(one_msg)
        ep_links = expert_link_events(spec, partition, decode, ep, self.link_format)
        remote = expert_dispatch_passes(spec, decode, ep)[:, 1:] / steps          # (L, ep - 1) per token
        ep_hops = _round_trips_s(self.link, remote, ser)
        ep_busy = ep_links.counts[:, 0] / 2 / steps * ser                       # per direction, per token
        compute = float(region_s.sum())
        hops = float(hop_s.sum())
        latency = compute + hops + ep_hops
        per_user = 1.0 / latency
        slow_region = float(region_load_s.max())
        slow_hop = max(float(hop_busy_s.max()) if n_hops else 0.0, float(ep_busy.max()) if ep_busy.size else 0.0)
        slowest = max(slow_region, slow_hop)
        stage = "link serialization" if slow_hop > slow_region else "a die region"
        context = n_prompt + n_generated - 1
        kv_layer_token = kv_bytes_per_token_layer(spec.n_kv_heads, spec.head_dim, plan.kv)
        hscale = head_lane_scale(spec, plan, chip)
        whole_tr = chip_area_breakdown(chip, spec, plan).transistors
        link_power_each = self.link.power_w

        # the dies: the pipeline dies (each with expert block 0 of its layers), then each one's expert dies
        rows = die_regions(spec, partition)
        expert_rows = np.zeros(rows.shape[1], bool)
        expert_rows[L + 2:] = True
        region_block = np.full(rows.shape[1], -1)
        if E:
            region_block[L + 2:] = np.tile(block, L)
        dies = []   # (DieAssignment, expert block, region mask)
        for d in partition.dies:
            dies.append((d, 0, rows[d.index] & ~(expert_rows & (region_block > 0))))
        for d in partition.dies:
            for b in range(1, ep):
                dies.append((d, b, rows[d.index] & expert_rows & (region_block == b)))
        n_dies = len(dies)
        die_dyn = np.array([si.energy_j(Events(L, decode.counts * m[:, None], E)) / steps for _, _, m in dies])
        die_area, die_static, die_link_w, die_users = [], [], [], []
        die_bits = die_region_bits(spec, plan, partition)
        for k, (d, b, m) in enumerate(dies):
            bits = die_bits[d.index]
            if b == 0:
                ends = (d.index > 0) + (d.index < n_hops) + (ep - 1)
                ab = area_breakdown(chip, rom_bits=int(bits[m].sum()), sram_bytes=self.kv_sram_bytes_per_die,
                                    n_layers=d.n_die_layers, head_lane_scale=hscale if d.head else 0.0,
                                    expert_lanes=expert_lanes(spec, chip, d.n_die_layers) / ep)
                die_users.append(int(self.kv_sram_bytes_per_die // (d.n_die_layers * kv_layer_token * context)))
            else:   # an expert die: its block of its pipeline die's experts, no layer region, no KV
                ends = 1
                ab = area_breakdown(chip, rom_bits=int(bits[m].sum()), sram_bytes=0, n_layers=0,
                                    head_lane_scale=0.0, expert_lanes=expert_lanes(spec, chip, d.n_die_layers) / ep)
            die_area.append((ab, ab.total_mm2 + ends * self.link.phy_area_mm2))
            die_static.append(chip.static_power_w * ab.transistors / whole_tr)
            die_link_w.append(0.5 * ends * link_power_each)
        users_kv = min(die_users)
        stages = pipeline_users(spec) + n_hops + ep_links.n_hops
        static = np.array(die_static) + np.array(die_link_w)
        agg = lambda n: np.minimum(n * per_user, 1.0 / slowest)  # noqa: E731
        n = np.arange(1, stages + 1)
        ok = np.all(die_dyn[:, None] * agg(n)[None, :] + static[:, None] <= chip.power_limit_w, axis=0)
        users_power = int(n[ok].max()) if ok.any() else 0
        users = min(users_kv, users_power, stages)
        aggregate = float(agg(users)) if users else 0.0
        die_power = die_dyn * aggregate + static
        power = float(die_power.sum())
        figs = tuple(DieFigures(
            index=k, first_layer=d.first_layer, end_layer=d.end_layer, embedding=d.embedding and b == 0,
            head=d.head and b == 0, rom_bits=int(ab.rom_bits), kv_sram_bytes=self.kv_sram_bytes_per_die if b == 0 else 0,
            users_kv_limit=die_users[d.index] if b == 0 else 0, compute_s_per_token=float(region_s[m].sum()),
            dynamic_energy_j_per_token=float(die_dyn[k]), static_power_w=float(die_static[k]),
            link_power_w=float(die_link_w[k]), power_w=float(die_power[k]), area_mm2=float(mm2),
            transistors=float(ab.transistors), expert_block=b)
            for k, ((d, b, m), (ab, mm2)) in enumerate(zip(dies, die_area)))
        # prefill: the first token's passes, hops and round trips, then one slowest stage per further token
        pre_first, pre_slowest = si.prefill_stages(prefill, n_prompt)
        pre_remote = expert_dispatch_passes(spec, prefill, ep)[:, 1:] / n_prompt
        pre_trips = _round_trips_s(self.link, pre_remote, ser)
        pre_ep_busy = float(max((pre_remote[partition.dies[k].first_layer:partition.dies[k].end_layer].sum(axis=0).max()
                                 for k in range(n_pipe)), default=0.0)) * ser if ep > 1 else 0.0
        prefill_s = (pre_first + n_hops * self.link.hop_s(one_msg) + pre_trips
                     + (n_prompt - 1) * max(pre_slowest, ser if n_hops else 0.0, pre_ep_busy))
        return SystemResult(
            chip=chip.name, model=spec.name, plan=plan.name, link=self.link.name, link_format=self.link_format.name,
            n_dies=n_dies, layers_per_die=partition.layers_per_die, n_prompt=n_prompt,
            n_generated=n_generated, latency_s_per_token=latency, per_user_tok_s=per_user,
            compute_s_per_token=compute, hops_s_per_token=hops,
            link_bytes_per_token=int(round(decode_links.bytes / steps)), prefill_s=prefill_s,
            slowest_stage_s=slowest, slowest_stage=stage, users_kv_limit=users_kv, users_power_limit=users_power,
            users=users, aggregate_tok_s=aggregate, dynamic_energy_j_per_token=float(die_dyn.sum()),
            link_power_w=float((n_hops + ep_links.n_hops) * link_power_each), power_w=power,
            energy_j_per_token=power / aggregate if aggregate else float("inf"),
            area_mm2=float(sum(mm2 for _, mm2 in die_area)), largest_die_mm2=float(max(mm2 for _, mm2 in die_area)),
            transistors=float(sum(ab.transistors for ab, _ in die_area)), dies=figs, expert_parallel=ep,
            expert_hops_s_per_token=ep_hops, expert_link_bytes_per_token=int(round(ep_links.bytes / steps)))

    def cost(self, result: SystemResult, cost="default", units=None) -> CostResult:
        """Cents per Mtok of the system at its aggregate throughput: ``n_dies`` cards of the chip's
        ``card_price_usd`` over the card life, NRE = ``n_dies`` mask sets + one design spread over
        ``units`` systems (default ``units_per_model``) and the model's life, board power x PUE."""
        cm = CostModel(get_cost(cost))
        c = cm.cost
        if not result.aggregate_tok_s > 0:
            raise ValueError("the system serves no user (KV SRAM or power): it has no cost per token")
        units = c.units_per_model if units is None else units
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        hw = result.n_dies * self.base_chip.card_price_usd / cm.chip_life_hours()
        nre = (result.n_dies * c.mask_set_usd + c.design_usd) / (units * c.model_useful_life_years * HOURS_PER_YEAR)
        en = cm.energy_usd_per_hour(result.power_w)
        return CostResult(f"{result.chip} x{result.n_dies}", hw + nre + en, hw, nre, en, result.aggregate_tok_s,
                          float(cm.cents_per_mtok(hw + nre + en, result.aggregate_tok_s)))


SWEEP_DIES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 27, 40, 80)
SWEEP_BANDWIDTHS_GB_S = (4.0, 16.0, 63.0, 256.0, 1024.0)


def system_sweep(spec: ModelSpec, plan, *, dies=SWEEP_DIES, bandwidths_gb_s=SWEEP_BANDWIDTHS_GB_S, chip="hc1",
                 link: LinkSpec | str = DEFAULT_LINK, link_format="fp32", n_prompt: int = 1024,
                 n_generated: int = 1024, cost="default", kv_sram_bytes_per_die: int | None = None) -> dict:
    """Figures of ``spec`` split over each die count in ``dies`` (balanced by ROM bits; counts above
    ``n_layers`` are dropped) with ``link``'s latency and energy at each bandwidth.

    Returns ``{"n_dies": (D,), "die_rom_gbit": (D,) largest die's ROM, "largest_die_mm2": (D,),
    "bandwidth_gb_s": (B,)}`` and, as (D, B) float arrays, ``per_user_tok_s``, ``aggregate_tok_s``,
    ``users``, ``cost_cents_per_mtok`` (NaN where no user fits), ``power_w``, ``area_mm2``.
    """
    link = get_link(link)
    counts = [int(n) for n in dies if 1 <= int(n) <= spec.n_layers]
    bws = [float(b) for b in bandwidths_gb_s]
    if not counts or not bws or min(bws) <= 0:
        raise ValueError(f"need die counts within 1..{spec.n_layers} and bandwidths > 0")
    shape = (len(counts), len(bws))
    out = {k: np.full(shape, np.nan) for k in ("per_user_tok_s", "aggregate_tok_s", "users", "cost_cents_per_mtok",
                                                "power_w", "area_mm2")}
    rom, largest = [], []
    for i, n in enumerate(counts):
        part = partition_model(spec, plan, n)
        rom.append(max(b.total for b in part.die_rom_bits()) / 1e9)
        for j, bw in enumerate(bws):
            sm = SystemModel(chip, link.replace(bandwidth_gb_s=bw), link_format, kv_sram_bytes_per_die)
            r = sm.evaluate(spec, plan, part, n_prompt, n_generated)
            out["per_user_tok_s"][i, j] = r.per_user_tok_s
            out["aggregate_tok_s"][i, j] = r.aggregate_tok_s
            out["users"][i, j] = r.users
            out["power_w"][i, j] = r.power_w
            out["area_mm2"][i, j] = r.area_mm2
            if r.users:
                out["cost_cents_per_mtok"][i, j] = sm.cost(r, cost).cents_per_mtok
        largest.append(r.largest_die_mm2)
    out.update(n_dies=np.array(counts), die_rom_gbit=np.array(rom), largest_die_mm2=np.array(largest),
               bandwidth_gb_s=np.array(bws))
    return out
