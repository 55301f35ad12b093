"""Splitting a model over several hard-coded dies: a pipeline of contiguous layer ranges.

Die 0 holds the token-embedding lookup (tokens enter there), the last die the output head (logits
leave there); every die holds at least one layer. The split is **balanced by ROM bits**: it minimizes
the largest die's ROM (banks as fabricated, fp16 scales, norm vectors: :func:`hcemu.rom.region_rom_bits`)
with the embedding counted on die 0 and the head on the last die (with tied embeddings the head die
holds its own copy of the embedding matrix), and among the splits with that largest die, it takes the
most even one (least sum of squared die bits). ROM bits and not modeled time, because every layer
region of a die has its own lanes and is its own pipeline stage: moving a layer between dies changes
no stage's time, only which die's area it takes (``docs/system.md``).

A mixture-of-experts layer goes to a die with all its experts (they count in its ROM), unless the
partition spreads experts over ``expert_parallel`` dies per stage: then each pipeline (home) die keeps
expert block 0 of its layers and ``expert_parallel - 1`` expert dies hold blocks 1 .. ep - 1
(:func:`expert_blocks`, :mod:`hcemu.rom.die`); the balance then counts a layer with block 0 of its
experts, what its home die holds (``docs/system.md``, "Expert parallelism").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import Plan
from hcemu.model.spec import ModelSpec
from hcemu.rom.die import DieAssignment, expert_block_of
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.image import RomBits, region_rom_bits, rom_bits_for_model

BALANCE_ROM_BITS = "rom_bits"
BALANCE_EXPLICIT = "explicit"


@dataclass(frozen=True)
class Partition:
    """A model split over ``len(dies)`` dies in pipeline order; hop ``h`` links die ``h`` to ``h + 1``.

    balance: ``"rom_bits"`` (balanced by :func:`partition_model`) or ``"explicit"`` (layers per die given).
    ``dies`` are the pipeline (home) dies; with ``expert_parallel`` > 1 each has ``expert_parallel - 1``
    expert dies (:attr:`expert_dies`) joined to it by one expert link each (:func:`expert_link_index`).
    """

    spec: ModelSpec
    plan: Plan
    geometry: RomGeometry
    dies: tuple
    balance: str
    expert_parallel: int = 1

    def __post_init__(self):
        expert_blocks(self.spec, self.expert_parallel)   # raises unless the experts divide evenly
        check_dies(self.spec.n_layers, self.dies, self.expert_parallel)

    @property
    def expert_dies(self) -> tuple:
        """The expert dies, pipeline die by pipeline die, blocks 1 .. ep - 1 (the order of the expert links)."""
        return expert_dies_of(self.dies, self.expert_parallel)

    @property
    def all_dies(self) -> tuple:
        """Every die of the system: the pipeline dies, then the expert dies."""
        return self.dies + self.expert_dies

    @property
    def expert_links(self) -> tuple:
        """``(link, pipeline die, expert block)`` of every expert link, in link order."""
        ep = self.expert_parallel
        return tuple((expert_link_index(d.index, b, ep), d.index, b) for d in self.dies for b in range(1, ep))

    @property
    def n_dies(self) -> int:
        return len(self.dies)

    @property
    def layers_per_die(self) -> tuple:
        return tuple(d.n_die_layers for d in self.dies)

    @property
    def hops(self) -> tuple:
        """``(from die, to die, last layer before the hop)`` of every chip-to-chip link, in order."""
        return tuple((d.index, d.index + 1, d.end_layer - 1) for d in self.dies[:-1])

    def die_rom_bits(self) -> list[RomBits]:
        """The :class:`RomBits` of each die's image (from shapes)."""
        return [rom_bits_for_model(self.spec, self.plan, self.geometry, d) for d in self.dies]

    def to_dict(self) -> dict:
        d = {"balance": self.balance, "dies": [d.to_dict() for d in self.dies],
             "hops": [{"from": a, "to": b, "after_layer": layer} for a, b, layer in self.hops]}
        if self.expert_parallel > 1:
            d.update(expert_parallel=self.expert_parallel, expert_dies=[e.to_dict() for e in self.expert_dies],
                     expert_links=[{"link": i, "from": k, "block": b} for i, k, b in self.expert_links])
        return d


def expert_blocks(spec: ModelSpec, ep: int) -> np.ndarray:
    """The die block of each of a layer's experts when expert parallelism spreads them over ``ep`` dies
    per pipeline stage: contiguous blocks of ``n_experts / ep`` (:func:`hcemu.rom.die.expert_block_of`;
    block 0 stays on the layer's home die); int64 (n_experts,). Raises ValueError unless ``ep`` is 1, or
    ``spec`` is a mixture-of-experts model whose experts ``ep`` (2 .. n_experts) divides."""
    if isinstance(ep, bool) or not isinstance(ep, (int, np.integer)) or ep < 1:
        raise ValueError(f"expert_parallel must be an integer >= 1, got {ep!r}")
    if ep == 1:
        return np.zeros(spec.n_experts, np.int64)
    if not spec.is_moe or spec.n_experts % ep:
        raise ValueError(f"{spec.name}: expert parallelism over {ep} dies needs a mixture-of-experts model whose "
                         f"experts ({spec.n_experts}) divide evenly")
    return expert_block_of(np.arange(spec.n_experts, dtype=np.int64), spec.n_experts, int(ep))


def expert_link_index(pipeline_die: int, block: int, ep: int) -> int:
    """The expert link joining pipeline die ``pipeline_die`` to its expert die of block ``block`` (1 .. ep - 1)."""
    return pipeline_die * (ep - 1) + block - 1


def expert_dies_of(dies, ep: int) -> tuple:
    """The expert dies of pipeline ``dies`` under expert parallelism over ``ep``: per pipeline die, blocks
    1 .. ep - 1 of its layers' experts (no embedding, no head)."""
    return tuple(DieAssignment(d.index, d.n_dies, d.n_layers, d.first_layer, d.end_layer, False, False, ep, b)
                 for d in dies for b in range(1, ep))


def check_dies(n_layers: int, dies, expert_parallel: int = 1) -> None:
    """Raise ValueError unless ``dies`` is a pipeline of the whole model: die ``k`` is index ``k`` of
    ``len(dies)``, layers contiguous from 0 to ``n_layers``, at least one per die, the embedding on
    die 0 only and the head on the last die only; every die a home die (expert block 0) of
    ``expert_parallel``."""
    dies = tuple(dies)
    if not dies:
        raise ValueError("a partition needs at least one die")
    n, nxt = len(dies), 0
    for k, d in enumerate(dies):
        if not isinstance(d, DieAssignment):
            raise TypeError(f"die {k} is a {type(d).__name__}, not a DieAssignment")
        where = d.describe()
        if d.index != k or d.n_dies != n or d.n_layers != n_layers:
            raise ValueError(f"{where} (of a {d.n_layers}-layer model) sits at position {k} of {n} dies "
                             f"of a {n_layers}-layer model")
        if d.first_layer != nxt or d.n_die_layers < 1:
            raise ValueError(f"{where}: layers must continue at {nxt}, at least one per die")
        if d.embedding != (k == 0) or d.head != (k == n - 1):
            raise ValueError(f"{where}: the embedding belongs on die 0 and the head on the last die")
        if d.expert_parallel != expert_parallel or d.expert_block:
            raise ValueError(f"{where}: a pipeline die of a system with expert parallelism {expert_parallel} must "
                             f"be its stage's home die (expert block 0 of {expert_parallel})")
        nxt = d.end_layer
    if nxt != n_layers:
        raise ValueError(f"the dies hold layers 0..{nxt - 1}; the model has {n_layers}")


def dies_from_counts(n_layers: int, layers_per_die, expert_parallel: int = 1) -> tuple:
    """The dies of a pipeline with the given layer counts (embedding on die 0, head on the last), each
    the home die (expert block 0) of ``expert_parallel``."""
    counts = [int(c) for c in layers_per_die]
    if any(c < 1 for c in counts) or sum(counts) != n_layers:
        raise ValueError(f"layers per die {counts} must be >= 1 each and sum to the model's {n_layers} layers")
    n, out, first = len(counts), [], 0
    for k, c in enumerate(counts):
        out.append(DieAssignment(k, n, n_layers, first, first + c, k == 0, k == n - 1, int(expert_parallel)))
        first += c
    return tuple(out)


def die_cost_terms(spec: ModelSpec, plan: Plan, geometry: RomGeometry | None = None, expert_parallel: int = 1):
    """ROM bits the balance adds up: ``(per layer (n_layers,), embedding on die 0, head on the last
    die of a split, whole model on one die)``, from :func:`region_rom_bits`. A layer's term includes its
    experts' regions (with ``expert_parallel`` > 1 only block 0's, which its home die holds); the head
    term ``output_norm`` and, with tied embeddings, the head die's copy of the embedding matrix."""
    L = spec.n_layers
    geometry = geometry or RomGeometry.for_model(spec, plan)
    whole = region_rom_bits(spec, plan, geometry)
    home = expert_blocks(spec, expert_parallel) == 0
    layers = whole[:L] + whole[L + 2:].reshape(L, -1)[:, home].sum(axis=1)   # a layer's (home) experts go with it
    emb = region_rom_bits(spec, plan, geometry, DieAssignment(0, 2, L, 0, 0, True, False))[L + 1]
    head = region_rom_bits(spec, plan, geometry, DieAssignment(1, 2, L, L, L, False, True))[L]
    return layers, int(emb), int(head), int(whole.sum() - whole[L + 2:].reshape(L, -1)[:, ~home].sum())


def balanced_splits(layer_bits, embedding_bits: int, head_bits: int, max_dies: int | None = None):
    """For every die count ``n = 2 .. max_dies``: the layer counts that minimize the largest die's bits
    (die 0 adds ``embedding_bits``, the last die ``head_bits``; each die >= 1 layer), the most even
    such split (least sum of squares) among ties. Returns ``{n: (largest die bits, counts)}``."""
    c = np.asarray(layer_bits, dtype=np.float64)
    L = len(c)
    top = L if max_dies is None else min(int(max_dies), L)
    S = np.concatenate([[0.0], np.cumsum(c)])
    # best_max[k][j], best_sq[k][j]: dies 0..k-1 holding layers 0..j-1 (die 0 with the embedding)
    inf = np.inf
    best_max = np.full((top + 1, L + 1), inf)
    best_sq = np.full((top + 1, L + 1), inf)
    arg = np.zeros((top + 1, L + 1), np.int64)
    best_max[1, 1:] = embedding_bits + S[1:]
    best_sq[1, 1:] = best_max[1, 1:] ** 2
    for k in range(2, top):
        for j in range(k, L + 1):
            i = np.arange(k - 1, j)
            cost = S[j] - S[i]
            m = np.maximum(best_max[k - 1, i], cost)
            sq = best_sq[k - 1, i] + cost ** 2
            mm = m.min()
            pick = int(np.argmin(np.where(m == mm, sq, inf)))
            best_max[k, j], best_sq[k, j], arg[k, j] = mm, sq[pick], i[pick]
    out = {}
    for n in range(2, top + 1):
        i = np.arange(n - 1, L)
        cost = S[L] - S[i] + head_bits
        m = np.maximum(best_max[n - 1, i], cost)
        sq = best_sq[n - 1, i] + cost ** 2
        mm = m.min()
        pick = int(np.argmin(np.where(m == mm, sq, inf)))
        bounds = [L, int(i[pick])]
        for k in range(n - 1, 1, -1):
            bounds.append(int(arg[k, bounds[-1]]))
        bounds.append(0)
        bounds.reverse()
        out[n] = (int(round(mm)), [b - a for a, b in zip(bounds, bounds[1:])])
    return out


def partition_model(spec: ModelSpec, plan: Plan, n_dies: int | None = None, *, max_rom_bits: int | None = None,
                    layers_per_die=None, geometry: RomGeometry | None = None,
                    expert_parallel: int = 1) -> Partition:
    """Split ``spec`` in ``plan`` over dies. Give exactly one of:

    n_dies: that many dies, balanced by ROM bits (1 .. n_layers);
    max_rom_bits: the fewest dies whose largest image holds at most this many ROM bits (``--chips auto``);
    layers_per_die: explicit layer counts, in pipeline order.

    geometry: ROM bank geometry (default :meth:`RomGeometry.for_model` of the whole model, the same
    for every die). expert_parallel: spread each stage's experts over that many dies (its home die and
    ``expert_parallel - 1`` expert dies; :func:`expert_blocks`); the balance and ``max_rom_bits`` then
    count the home dies. Raises ValueError when the budget cannot be met even with one layer per die, and
    (from :func:`expert_blocks`) when ``expert_parallel`` does not divide a mixture-of-experts model's experts.
    """
    ep = expert_parallel
    expert_blocks(spec, ep)
    given = [x is not None for x in (n_dies, max_rom_bits, layers_per_die)]
    if sum(given) != 1:
        raise ValueError("give exactly one of n_dies, max_rom_bits and layers_per_die")
    geometry = geometry or RomGeometry.for_model(spec, plan)
    L = spec.n_layers
    if layers_per_die is not None:
        return Partition(spec, plan, geometry, dies_from_counts(L, layers_per_die, ep), BALANCE_EXPLICIT, ep)
    layer_bits, emb, head, whole = die_cost_terms(spec, plan, geometry, ep)
    if n_dies is not None:
        if isinstance(n_dies, bool) or not isinstance(n_dies, (int, np.integer)):
            raise TypeError(f"n_dies must be an integer, got {type(n_dies).__name__}")
        if not 1 <= n_dies <= L:
            raise ValueError(f"n_dies must be within 1..{L} (one layer per die at most), got {n_dies}")
        if n_dies == 1:
            return Partition(spec, plan, geometry, dies_from_counts(L, [L], ep), BALANCE_ROM_BITS, ep)
        _, counts = balanced_splits(layer_bits, emb, head, n_dies)[int(n_dies)]
        return Partition(spec, plan, geometry, dies_from_counts(L, counts, ep), BALANCE_ROM_BITS, ep)
    budget = int(max_rom_bits)
    if budget <= 0:
        raise ValueError(f"max_rom_bits must be > 0, got {max_rom_bits}")
    if whole <= budget:
        return Partition(spec, plan, geometry, dies_from_counts(L, [L], ep), BALANCE_ROM_BITS, ep)
    splits = balanced_splits(layer_bits, emb, head)
    for n in sorted(splits):
        largest, counts = splits[n]
        if largest <= budget:
            return Partition(spec, plan, geometry, dies_from_counts(L, counts, ep), BALANCE_ROM_BITS, ep)
    smallest = min(v[0] for v in splits.values()) if splits else whole
    raise ValueError(f"{spec.name} in plan {plan.name} does not fit dies of {budget / 1e9:.3f} Gbit of ROM: "
                     f"even one layer per die ({L} dies) needs {smallest / 1e9:.3f} Gbit on the largest die")
