"""What one die of a multi-chip system holds: a contiguous range of layers, and the embedding and the
output head where the partition placed them (``docs/system.md``).

A :class:`DieAssignment` is a plain description shared by the compiler (which matrices and vectors go
into the die's ROM image), the partitioner (:mod:`hcemu.rom.partition`) and the functional chip (which
regions a die runs). A whole-model image is the one die ``DieAssignment.whole(n_layers)``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DieAssignment:
    """Die ``index`` of ``n_dies``: layers ``first_layer .. end_layer - 1`` (end exclusive) of a model
    of ``n_layers``; ``embedding``/``head``: whether the token-embedding lookup and the output head
    (final norm + output product) sit on this die."""

    index: int
    n_dies: int
    n_layers: int
    first_layer: int
    end_layer: int
    embedding: bool
    head: bool

    def __post_init__(self):
        for name in ("index", "n_dies", "n_layers", "first_layer", "end_layer"):
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
            and self.embedding and self.head

    def holds_layer(self, layer: int) -> bool:
        return self.first_layer <= layer < self.end_layer

    def to_dict(self) -> dict:
        return {"index": self.index, "n_dies": self.n_dies, "n_layers": self.n_layers,
                "layers": [self.first_layer, self.end_layer], "embedding": self.embedding, "head": self.head}

    @classmethod
    def from_dict(cls, d: dict) -> "DieAssignment":
        try:
            first, end = d["layers"]
            return cls(int(d["index"]), int(d["n_dies"]), int(d["n_layers"]), int(first), int(end),
                       bool(d["embedding"]), bool(d["head"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable die description {d!r}: {exc}") from None

    def describe(self) -> str:
        parts = [f"layers {self.first_layer}..{self.end_layer - 1}" if self.n_die_layers else "no layers"]
        if self.embedding:
            parts.insert(0, "embedding")
        if self.head:
            parts.append("head")
        return f"die {self.index}/{self.n_dies}: " + ", ".join(parts)
