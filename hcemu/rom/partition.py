"""Splitting a model over several hard-coded dies: a pipeline of contiguous layer ranges.

Die 0 holds the token-embedding lookup (tokens enter there), the last die the output head (logits
leave there); every die holds at least one layer. The split is **balanced by ROM bits**: it minimizes
the largest die's ROM (banks as fabricated, fp16 scales, norm vectors: :func:`hcemu.rom.region_rom_bits`)
with the embedding counted on die 0 and the head on the last die (with tied embeddings the head die
holds its own copy of the embedding matrix), and among the splits with that largest die, it takes the
most even one (least sum of squared die bits). ROM bits and not modeled time, because every layer
region of a die has its own lanes and is its own pipeline stage: moving a layer between dies changes
no stage's time, only which die's area it takes (``docs/system.md``).

A mixture-of-experts layer goes to a die with all its experts (they count in its ROM; the functional
system and the system pricing run such pipelines): the partitioner places no expert parallelism
(experts of one layer on several dies; ``docs/system.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import Plan
from hcemu.model.spec import ModelSpec
from hcemu.rom.die import DieAssignment
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.image import RomBits, region_rom_bits, rom_bits_for_model

BALANCE_ROM_BITS = "rom_bits"
BALANCE_EXPLICIT = "explicit"


@dataclass(frozen=True)
class Partition:
    """A model split over ``len(dies)`` dies in pipeline order; hop ``h`` links die ``h`` to ``h + 1``.

    balance: ``"rom_bits"`` (balanced by :func:`partition_model`) or ``"explicit"`` (layers per die given).
    """

    spec: ModelSpec
    plan: Plan
    geometry: RomGeometry
    dies: tuple
    balance: str

    def __post_init__(self):
        check_dies(self.spec.n_layers, self.dies)

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
        return {"balance": self.balance, "dies": [d.to_dict() for d in self.dies],
                "hops": [{"from": a, "to": b, "after_layer": layer} for a, b, layer in self.hops]}


def check_dies(n_layers: int, dies) -> None:
    """Raise ValueError unless ``dies`` is a pipeline of the whole model: die ``k`` is index ``k`` of
    ``len(dies)``, layers contiguous from 0 to ``n_layers``, at least one per die, the embedding on
    die 0 only and the head on the last die only."""
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
        nxt = d.end_layer
    if nxt != n_layers:
        raise ValueError(f"the dies hold layers 0..{nxt - 1}; the model has {n_layers}")


def dies_from_counts(n_layers: int, layers_per_die) -> tuple:
    """The dies of a pipeline with the given layer counts (embedding on die 0, head on the last)."""
    counts = [int(c) for c in layers_per_die]
    if any(c < 1 for c in counts) or sum(counts) != n_layers:
        raise ValueError(f"layers per die {counts} must be >= 1 each and sum to the model's {n_layers} layers")
    n, out, first = len(counts), [], 0
    for k, c in enumerate(counts):
        out.append(DieAssignment(k, n, n_layers, first, first + c, k == 0, k == n - 1))
        first += c
    return tuple(out)


def die_cost_terms(spec: ModelSpec, plan: Plan, geometry: RomGeometry | None = None):
    """ROM bits the balance adds up: ``(per layer (n_layers,), embedding on die 0, head on the last
    die of a split, whole model on one die)``, from :func:`region_rom_bits`. A layer's term includes its
    experts' regions; the head term ``output_norm`` and, with tied embeddings, the head die's copy of
    the embedding matrix."""
    L = spec.n_layers
    geometry = geometry or RomGeometry.for_model(spec, plan)
    whole = region_rom_bits(spec, plan, geometry)
    layers = whole[:L] + whole[L + 2:].reshape(L, -1).sum(axis=1)   # a layer's experts go with it
    emb = region_rom_bits(spec, plan, geometry, DieAssignment(0, 2, L, 0, 0, True, False))[L + 1]
    head = region_rom_bits(spec, plan, geometry, DieAssignment(1, 2, L, L, L, False, True))[L]
    return layers, int(emb), int(head), int(whole.sum())


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
                    layers_per_die=None, geometry: RomGeometry | None = None) -> Partition:
    """Split ``spec`` in ``plan`` over dies. Give exactly one of:

    n_dies: that many dies, balanced by ROM bits (1 .. n_layers);
    max_rom_bits: the fewest dies whose largest image holds at most this many ROM bits (``--chips auto``);
    layers_per_die: explicit layer counts, in pipeline order.

    geometry: ROM bank geometry (default :meth:`RomGeometry.for_model` of the whole model, the same
    for every die). Raises ValueError when the budget cannot be met even with one layer per die.
    """
    given = [x is not None for x in (n_dies, max_rom_bits, layers_per_die)]
    if sum(given) != 1:
        raise ValueError("give exactly one of n_dies, max_rom_bits and layers_per_die")
    geometry = geometry or RomGeometry.for_model(spec, plan)
    L = spec.n_layers
    if layers_per_die is not None:
        return Partition(spec, plan, geometry, dies_from_counts(L, layers_per_die), BALANCE_EXPLICIT)
    layer_bits, emb, head, whole = die_cost_terms(spec, plan, geometry)
    if n_dies is not None:
        if isinstance(n_dies, bool) or not isinstance(n_dies, (int, np.integer)):
            raise TypeError(f"n_dies must be an integer, got {type(n_dies).__name__}")
        if not 1 <= n_dies <= L:
            raise ValueError(f"n_dies must be within 1..{L} (one layer per die at most), got {n_dies}")
        if n_dies == 1:
            return Partition(spec, plan, geometry, dies_from_counts(L, [L]), BALANCE_ROM_BITS)
        _, counts = balanced_splits(layer_bits, emb, head, n_dies)[int(n_dies)]
        return Partition(spec, plan, geometry, dies_from_counts(L, counts), BALANCE_ROM_BITS)
    budget = int(max_rom_bits)
    if budget <= 0:
        raise ValueError(f"max_rom_bits must be > 0, got {max_rom_bits}")
    if whole <= budget:
        return Partition(spec, plan, geometry, dies_from_counts(L, [L]), BALANCE_ROM_BITS)
    splits = balanced_splits(layer_bits, emb, head)
    for n in sorted(splits):
        largest, counts = splits[n]
        if largest <= budget:
            return Partition(spec, plan, geometry, dies_from_counts(L, counts), BALANCE_ROM_BITS)
    smallest = min(v[0] for v in splits.values()) if splits else whole
    raise ValueError(f"{spec.name} in plan {plan.name} does not fit dies of {budget / 1e9:.3f} Gbit of ROM: "
                     f"even one layer per die ({L} dies) needs {smallest / 1e9:.3f} Gbit on the largest die")
