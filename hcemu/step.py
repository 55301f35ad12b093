"""The timed step API: a hard-coded chip as a component of someone else's simulator.

A :class:`ChipStepper` joins the functional chip (:class:`hcemu.chip.Chip`: what is computed and what
the silicon did, as events) with the silicon model (:class:`hcemu.perf.silicon.SiliconModel`: when, and
at what energy). An outside scheduler opens users, hands the stepper one *step* at a time — a list of
work items, each one user's prefill chunk or one decode token — and gets back, per item, the logits, the
events per region, the ROM rows read per bank and a timeline: per region the start and end cycle and
the energy, on the stepper's own cycle clock, which the scheduler maps onto its clock
(``cycle / (clock_ghz * 1e9)`` seconds).

Pipelined users. The chip is a pipeline of regions in dataflow order ``embed, 0 .. n_layers-1, head``
(the region names of :meth:`hcemu.events.Events.to_dict`). Different users' tokens occupy different
regions at once; one region serves one token pass at a time. A step's items enter the pipeline in list
order (a flow shop): an item's token passes visit the regions in order, each pass starting when the
token has left the previous region and the region has finished the pass before it. A prefill chunk of
``t`` tokens streams ``t`` passes (each region's per-pass time is its mean over the chunk, as
:meth:`SiliconModel.prefill_seconds` assumes; the head runs on the last token only); a decode item is
one pass. A user's item cannot start before that user's previous item has left the head (its next token
depends on those logits). Each user has its own KV state (one :class:`~hcemu.chip.Chip` per user,
sharing the image's ROM); the users' KV capacities together must fit the chip's ``kv_sram_bytes``.

Per region, ``busy_cycles`` is exactly :meth:`SiliconModel.timing`'s ``total_cycles`` and ``energy_j``
its dynamic energy, so summing a run's timelines gives what :meth:`SiliconModel.price` prices for the
same events; one decode item alone takes the modeled per-token latency, and a prefill chunk alone
takes :meth:`SiliconModel.prefill_seconds` unless the head is the slowest region (then less: the head
sees one pass, not ``t``).

Versioning: :data:`STEP_API_VERSION` is an integer raised whenever a name, unit or meaning of this
module's public API or of :meth:`StepResult.to_dict`'s keys changes incompatibly; additions keep it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from hcemu.chip import Chip
from hcemu.events import Events
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.specs import get_chip

STEP_API_VERSION = 1
"""Version of the step API (names, units and meanings of :class:`ChipStepper` and its results)."""


def region_names(n_layers: int) -> list[str]:
    """Region names in pipeline (dataflow) order: ``["embed", "0", ..., str(n_layers - 1), "head"]``."""
    return ["embed"] + [str(i) for i in range(n_layers)] + ["head"]


def _pipeline_rows(n_layers: int) -> np.ndarray:
    """Row of :class:`Events` counts for each region in pipeline order (Events keep embed last)."""
    return np.array([n_layers + 1] + list(range(n_layers)) + [n_layers])


@dataclass(frozen=True)
class RegionSpan:
    """One region's share of an item (or of a step): cycles of the chip clock, energy in joules.

    start_cycle: when its first pass began; end_cycle: when its last pass ended; busy_cycles: the
    cycles it was computing (the sum of its passes; ``end - start`` minus waits), split into the
    silicon model's components ``cim_cycles + attention_cycles + vector_cycles + overhead_cycles``;
    energy_j: dynamic energy of its events; tokens: passes through the region.
    """

    region: str
    start_cycle: float
    end_cycle: float
    busy_cycles: float
    energy_j: float
    tokens: int
    cim_cycles: float
    attention_cycles: float
    vector_cycles: float
    overhead_cycles: float


@dataclass
class ItemResult:
    """What one work item (one user's prefill chunk or decode token) produced.

    user: the user id. kind: ``"prefill"`` or ``"decode"``. position: the KV position of its first
    token. n_tokens: tokens fed. logits: float32 (1, vocab), the logits after its last token.
    events: its events (:mod:`hcemu.events`, per region). bank_rows: int64 (n_banks,) ROM rows read
    per bank. timeline: one :class:`RegionSpan` per region, pipeline order. start_cycle / end_cycle:
    entry into the embedding region, exit from the head.
    """

    user: int
    kind: str
    position: int
    n_tokens: int
    logits: np.ndarray
    events: Events
    bank_rows: np.ndarray
    timeline: list
    start_cycle: float
    end_cycle: float

    @property
    def energy_j(self) -> float:
        return float(sum(s.energy_j for s in self.timeline))


@dataclass
class StepResult:
    """One step: its items (in the order given), and the step as a whole.

    start_cycle / end_cycle: first entry and last exit over the items. clock_ghz: the clock the
    cycles count. events: the items' events summed. bank_rows: int64 (n_banks,) summed.
    regions: per region (pipeline order) the earliest start, latest end, summed busy cycles and
    energy over the items.
    """

    items: list
    start_cycle: float
    end_cycle: float
    clock_ghz: float
    events: Events
    bank_rows: np.ndarray
    regions: list

    @property
    def energy_j(self) -> float:
        return float(sum(s.energy_j for s in self.regions))

    def seconds(self, cycles: float) -> float:
        """Cycles of this chip's clock in seconds."""
        return float(cycles) / (self.clock_ghz * 1e9)

    def to_dict(self, logits: bool = False) -> dict:
        """JSON-ready: ``version``, ``clock_ghz``, cycles, ``energy_j``, ``regions`` and ``items`` (each
        with its ``events`` per region, ``bank_rows`` and ``timeline``; ``logits`` as lists if asked)."""
        span = lambda s: {f.name: getattr(s, f.name) for f in fields(RegionSpan)}
        items = []
        for it in self.items:
            d = {"user": it.user, "kind": it.kind, "position": it.position, "n_tokens": it.n_tokens,
                 "start_cycle": it.start_cycle, "end_cycle": it.end_cycle, "energy_j": it.energy_j,
                 "events": it.events.to_dict(per_region=True), "bank_rows": it.bank_rows.tolist(),
                 "timeline": [span(s) for s in it.timeline]}
            if logits:
                d["logits"] = it.logits.tolist()
            items.append(d)
        return {"version": STEP_API_VERSION, "clock_ghz": self.clock_ghz, "start_cycle": self.start_cycle,
                "end_cycle": self.end_cycle, "energy_j": self.energy_j,
                "regions": [span(s) for s in self.regions], "items": items}


class ChipStepper:
    """A hard-coded chip stepped by an outside scheduler (see the module docstring).

    image: a :class:`~hcemu.rom.image.RomImage`. chip: the silicon preset or :class:`ChipSpec` that
    prices the events (default ``"hc1"``). kv_capacity_tokens: each user's KV capacity in tokens
    (default: the model's max context, capped at 8192). chip_kwargs: passed to every user's
    :class:`~hcemu.chip.Chip` (``n_threads``, ``compiled``, ``fuse_products``; ``fuse_products``
    defaults to False here so that users share the image's ROM tiles instead of each stacking a copy).
    """

    def __init__(self, image, *, chip="hc1", kv_capacity_tokens: int | None = None, **chip_kwargs):
        self.image = image
        self.spec = image.spec
        self.silicon = SiliconModel(get_chip(chip))
        self.clock_ghz = float(self.silicon.chip.clock_ghz)
        self.kv_capacity_tokens = kv_capacity_tokens
        chip_kwargs.setdefault("fuse_products", False)
        self._chip_kwargs = chip_kwargs
        self._users: dict[int, Chip] = {}
        self._ready: dict[int, float] = {}   # user -> cycle its previous item left the head
        self._next_user = 0
        n_regions = self.spec.n_layers + 2
        self._free = np.zeros(n_regions)       # pipeline order: cycle each region finishes its last pass
        self._rows = _pipeline_rows(self.spec.n_layers)
        self.names = region_names(self.spec.n_layers)

    # ------------------------------------------------------------------ users
    @property
    def users(self) -> list[int]:
        """Open user ids."""
        return list(self._users)

    @property
    def kv_bytes_reserved(self) -> int:
        """KV SRAM bytes the open users' caches take (their full capacities)."""
        return sum(c.kv.nbytes for c in self._users.values())

    def open_user(self) -> int:
        """A new user with an empty KV cache; returns its id (ids are never reused).

        Raises ValueError if its KV capacity does not fit beside the open users' in the chip's
        ``kv_sram_bytes``.
        """
        c = Chip(self.image, kv_capacity_tokens=self.kv_capacity_tokens, **self._chip_kwargs)
        limit = self.silicon.chip.kv_sram_bytes
        if self.kv_bytes_reserved + c.kv.nbytes > limit:
            raise ValueError(
                f"a user's KV cache ({c.kv.nbytes} bytes, {c.kv.capacity_tokens} tokens) does not fit: "
                f"{self.kv_bytes_reserved} of the chip's {limit} bytes of KV SRAM are taken by "
                f"{len(self._users)} users")
        uid = self._next_user
        self._next_user += 1
        self._users[uid] = c
        self._ready[uid] = 0.0
        return uid

    def close_user(self, user: int) -> None:
        """Free a user's KV cache."""
        self._user(user)
        del self._users[user], self._ready[user]

    def position(self, user: int) -> int:
        """Tokens held in the user's KV cache."""
        return self._user(user).position

    def _user(self, user) -> Chip:
        try:
            return self._users[user]
        except (KeyError, TypeError):
            raise KeyError(f"no open user {user!r} (open: {sorted(self._users)})") from None

    # ------------------------------------------------------------------ stepping
    def step(self, work, *, at_cycle: float = 0.0) -> StepResult:
        """Run one step. ``work``: a sequence of ``(user, token_ids)``, at most one item per user; a
        single token is a decode, several a prefill chunk. at_cycle: no item enters before this cycle
        (the scheduler's release time; the pipeline's own state may hold it later).

        Raises ValueError/TypeError/KeyError on an empty step, a user twice, an unknown user or bad
        token ids (nothing is run then).
        """
        work = list(work)
        if not work:
            raise ValueError("a step needs at least one (user, token_ids) item")
        at_cycle = float(at_cycle)
        if not np.isfinite(at_cycle) or at_cycle < 0:
            raise ValueError(f"at_cycle must be a finite cycle count >= 0, got {at_cycle}")
        seen = set()
        checked = []
        for item in work:
            try:
                user, tokens = item
            except (TypeError, ValueError):
                raise TypeError(f"a work item is (user, token_ids), got {item!r}") from None
            chip = self._user(user)
            if user in seen:
                raise ValueError(f"user {user} appears twice in one step (its tokens depend on each other)")
            seen.add(user)
            checked.append((user, chip, chip._check_tokens(tokens)))
        items = [self._run(user, chip, tokens, at_cycle) for user, chip, tokens in checked]
        ev = Events(self.spec.n_layers)
        rows = np.zeros_like(items[0].bank_rows)
        for it in items:
            ev += it.events
            rows += it.bank_rows
        regions = []
        for r, name in enumerate(self.names):
            spans = [it.timeline[r] for it in items]
            used = [s for s in spans if s.tokens] or spans
            total = lambda f, spans=spans: float(sum(getattr(s, f) for s in spans))
            regions.append(RegionSpan(
                name, min(s.start_cycle for s in used), max(s.end_cycle for s in used), total("busy_cycles"),
                total("energy_j"), int(sum(s.tokens for s in spans)), total("cim_cycles"),
                total("attention_cycles"), total("vector_cycles"), total("overhead_cycles")))
        return StepResult(items, min(it.start_cycle for it in items), max(it.end_cycle for it in items),
                          self.clock_ghz, ev, rows, regions)

    def _run(self, user: int, chip: Chip, tokens: np.ndarray, at_cycle: float) -> ItemResult:
        position = chip.position
        if len(tokens) == 1:
            kind, res = "decode", chip.decode(int(tokens[0]))
        else:
            kind, res = "prefill", chip.prefill(tokens)
        timing = self.silicon.timing(res.events)
        busy = timing.total_cycles[self._rows]
        passes = timing.tokens[self._rows].astype(np.int64)
        energy = self.silicon.energy_j_per_region(res.events)[self._rows]
        starts, ends = self._schedule(busy, passes, len(tokens), max(at_cycle, self._ready[user]))
        comp = [c[self._rows] for c in (timing.cim_cycles, timing.attention_cycles, timing.vector_cycles,
                                        timing.overhead_cycles)]
        timeline = [RegionSpan(name, float(starts[r]), float(ends[r]), float(busy[r]), float(energy[r]),
                               int(passes[r]), *(float(c[r]) for c in comp)) for r, name in enumerate(self.names)]
        self._ready[user] = float(ends[-1])
        return ItemResult(user, kind, position, len(tokens), res.logits[-1:], res.events, res.bank_rows,
                          timeline, float(starts[0]), float(ends[-1]))

    def _schedule(self, busy, passes, t, release):
        """Flow-shop placement of ``t`` token passes entering at ``release``: returns per region the
        first pass's start and the last pass's end, and advances the regions' free cycles.

        Token ``j`` visits region ``r`` for ``busy[r] / passes[r]`` cycles if it is one of the region's
        last ``passes[r]`` tokens (the head sees only the last), else 0. The completion times
        ``C[j, r] = max(C[j-1, r], C[j, r-1]) + p[j, r]`` are computed a token at a time, vectorized
        over the regions: ``C[j] = P + running_max(a - P + p)`` with ``a = C[j-1]`` and ``P`` the
        running sum of ``p[j]``.
        """
        per_pass = np.divide(busy, passes, out=np.zeros_like(busy), where=passes > 0)
        free = self._free
        first_start = None
        prev = None
        for j in range(t):
            p = np.where(t - j <= passes, per_pass, 0.0)
            a = free.copy()
            a[0] = max(a[0], release)
            P = np.cumsum(p)
            done = P + np.maximum.accumulate(a - P + p)
            if first_start is None:
                first_start = done - p
            free = done
            prev = done
        self._free = np.maximum(self._free, free)
        # a region the item never visited spans no time: put it where the item passed through
        starts = np.where(passes > 0, first_start, prev)
        return starts, prev
