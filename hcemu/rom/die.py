"""What one die of a multi-chip system holds: a contiguous range of layers, and the embedding and the
output head where the partition placed them (``docs/system.md``); with expert parallelism, which block
of its layers' experts.

Expert parallelism over ``ep`` dies splits every mixture-of-experts layer's experts into ``ep``
contiguous blocks of ``n_experts / ep`` (:func:`expert_block_of`: the one definition the compiler, the
functional system and the pricing use). The pipeline die of a stage (``expert_block`` 0, its *home*
die) holds its layers' own matrices and norms (attention, router, shared expert), the embedding / head
where placed, and block 0 of its layers' experts; ``ep - 1`` *expert dies* (``expert_block`` 1 .. ep - 1)
hold block ``b`` of the same layers' experts and nothing else.

A :class:`DieAssignment` is a plain description shared by the compiler (which matrices and vectors go
into the die's ROM image), the partitioner (:mod:`hcemu.rom.partition`) and the functional chip (which
regions a die runs). A whole-model image is the one die ``DieAssignment.whole(n_layers)``.
"""
from __future__ import annotations

from dataclasses import dataclass


def expert_block_of(expert, n_experts: int, ep: int):
    """The die block (0 .. ep - 1) of ``expert`` (an int or an int array) of a layer's ``n_experts`` under
    expert parallelism over ``ep`` dies: contiguous blocks of ``n_experts / ep`` (``ep`` must divide
    ``n_experts``; checked by :func:`hcemu.rom.partition.expert_blocks`)."""
    return expert // (n_experts // ep)


@dataclass(frozen=True)
class DieAssignment:
    """Die ``index`` of ``n_dies``: layers ``first_layer .. end_layer - 1`` (end exclusive) of a model
    of ``n_layers``; ``embedding``/``head``: whether the token-embedding lookup and the output head
    (final norm + output product) sit on this die. ``expert_parallel``: over how many dies each layer's
    experts are spread (1: every expert with its layer); ``expert_block``: the block this die holds (0:
    the stage's home die with the layers, 1 .. expert_parallel - 1: an expert die holding only that
    block of its layers' experts)."""

    index: int
    n_dies: int
    n_layers: int
    first_layer: int
    end_layer: int
    embedding: bool
    head: bool
    expert_parallel: int = 1
    expert_block: int = 0

    def __post_init__(self):
        for name in ("index", "n_dies", "n_layers", "first_layer", "end_layer", "expert_parallel", "expert_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"DieAssignment.{name} must be an int, got {type(v).__name__}")
        if not isinstance(self.embedding, bool) or not isinstance(self.head, bool):
            raise TypeError("DieAssignment.embedding and .head must be bools")
        if self.n_dies < 1 or not 0 <= self.index < self.n_dies:
            raise ValueError(f"DieAssignment: die {self.index} of {self.n_dies} is out of range")
        if not 0 <= self.first_layer <= self.end_layer <= self.n_layers:
            raise ValueError(f"DieAssignment: layers [{self.first_layer}, {self.end_layer}) are not within "
                             f"the model's 0..{self.n_layers}")
        if self.expert_parallel < 1 or not 0 <= self.expert_block < self.expert_parallel:
            raise ValueError(f"DieAssignment: expert block {self.expert_block} of {self.expert_parallel} is out of range")
        if self.expert_block and (self.embedding or self.head):
            raise ValueError("DieAssignment: an expert die holds neither the embedding nor the head")

    @classmethod
    def whole(cls, n_layers: int) -> "DieAssignment":
        """The single die of a one-chip system: every layer, the embedding and the head."""
        return cls(0, 1, int(n_layers), 0, int(n_layers), True, True)

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.end_layer)

    @property
    def n_die_layers(self) -> int:
        return self.end_layer - self.first_layer

    @property
    def is_whole(self) -> bool:
        return self.n_dies == 1 and self.first_layer == 0 and self.end_layer == self.n_layers \
            and self.embedding and self.head and self.expert_parallel == 1

    @property
    def is_expert_die(self) -> bool:
        """Whether this die holds only a block of its layers' experts (no attention, router or norms)."""
        return self.expert_block > 0

    def holds_layer(self, layer: int) -> bool:
        """Whether ``layer`` is one of this die's (an expert die's layers are those whose experts it holds)."""
        return self.first_layer <= layer < self.end_layer

    def holds_layer_own(self, layer: int) -> bool:
        """Whether this die holds ``layer``'s own matrices and vectors (attention, router, shared expert, norms)."""
        return self.holds_layer(layer) and not self.is_expert_die

    def holds_expert(self, layer: int, expert: int, n_experts: int) -> bool:
        """Whether this die holds expert ``expert`` (of ``n_experts``) of ``layer``."""
        return self.holds_layer(layer) and (
            self.expert_parallel == 1 or int(expert_block_of(expert, n_experts, self.expert_parallel)) == self.expert_block)

    def to_dict(self) -> dict:
        d = {"index": self.index, "n_dies": self.n_dies, "n_layers": self.n_layers,
             "layers": [self.first_layer, self.end_layer], "embedding": self.embedding, "head": self.head}
        if self.expert_parallel > 1:
            d.update(expert_parallel=self.expert_parallel, expert_block=self.expert_block)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DieAssignment":
        try:
            first, end = d["layers"]
            return cls(int(d["index"]), int(d["n_dies"]), int(d["n_layers"]), int(first), int(end),
                       bool(d["embedding"]), bool(d["head"]), int(d.get("expert_parallel", 1)),
                       int(d.get("expert_block", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable die description {d!r}: {exc}") from None

    def describe(self) -> str:
        parts = [f"layers {self.first_layer}..{self.end_layer - 1}" if self.n_die_layers else "no layers"]
        if self.embedding:
            parts.insert(0, "embedding")
        if self.head:
            parts.append("head")
        if self.expert_parallel > 1:
            parts.append(f"expert block {self.expert_block} of {self.expert_parallel}"
                         + (" only" if self.is_expert_die else ""))
        return f"die {self.index}/{self.n_dies}: " + ", ".join(parts)
