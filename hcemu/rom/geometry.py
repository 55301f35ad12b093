"""ROM bank geometry: how the mask ROM of one region (a transformer layer, the head, the embedding)
is cut into banks.

A *bank* is an array of ``bank_rows`` words of ``word_bits`` bits with one CIM lane beside it: one word
is read per cycle. ``banks_per_tile`` banks share a row decoder and form a *bank tile* (not to be
confused with a 16-row *weight tile* of :mod:`hcemu.layout`); a layer region holds
``tiles_per_region`` bank tiles. Weight tiles are dealt round-robin over a region's banks (see
:mod:`hcemu.rom.address` and ``docs/rom.md``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hcemu.formats import TILE_ROWS, Plan
from hcemu.layout import layout_shape, tile_bytes
from hcemu.model.spec import LAYER_MATRICES

MIN_WORD_BITS = 32      # one row's 4-byte share of a 64-byte line must sit inside one word
MAX_WORD_BITS = 2048    # the smallest weight tile (int4, 16 x 32) has 2048 bits; a word must divide it


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def stripe_rows(n_tiles: int, n_banks: int, words_per_tile: int) -> int:
    """Rows (per bank) a matrix of ``n_tiles`` weight tiles takes in a region of ``n_banks`` banks."""
    return -(-n_tiles // n_banks) * words_per_tile


@dataclass(frozen=True)
class RomGeometry:
    """Bank geometry of the mask ROM.

    bank_rows: words per bank (power of two: the row decoder takes log2 address bits).
    word_bits: bits per word, read in one cycle (power of two, 32..2048, so it divides every weight tile).
    banks_per_tile: banks sharing one row decoder (power of two: bank-select bits).
    tiles_per_region: bank tiles in each *layer* region (any positive integer). The head and embedding
    regions get as many bank tiles as their matrices need (see ``docs/rom.md``).
    """

    bank_rows: int = 2048
    word_bits: int = 512
    banks_per_tile: int = 16
    tiles_per_region: int = 64

    def __post_init__(self):
        for name in ("bank_rows", "word_bits", "banks_per_tile"):
            v = getattr(self, name)
            if not isinstance(v, int) or not _is_pow2(v):
                raise ValueError(f"RomGeometry.{name} must be a power of two, got {v!r}")
        if not MIN_WORD_BITS <= self.word_bits <= MAX_WORD_BITS:
            raise ValueError(f"RomGeometry.word_bits must be in {MIN_WORD_BITS}..{MAX_WORD_BITS}, got {self.word_bits}")
        if not isinstance(self.tiles_per_region, int) or self.tiles_per_region < 1:
            raise ValueError(f"RomGeometry.tiles_per_region must be a positive integer, got {self.tiles_per_region!r}")

    @property
    def bank_bits(self) -> int:
        return self.bank_rows * self.word_bits

    @property
    def layer_banks(self) -> int:
        """Banks in one layer region."""
        return self.banks_per_tile * self.tiles_per_region

    @property
    def layer_capacity_bits(self) -> int:
        return self.layer_banks * self.bank_bits

    def words_per_weight_tile(self, fmt) -> int:
        """ROM words one 16-row weight tile of format ``fmt`` occupies."""
        return tile_bytes(fmt) * 8 // self.word_bits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RomGeometry":
        return cls(**d)

    @classmethod
    def for_model(cls, spec, plan: Plan, bank_rows: int = 2048, word_bits: int = 512,
                  banks_per_tile: int = 16) -> "RomGeometry":
        """The geometry with the fewest bank tiles per layer region that holds every layer of ``spec``."""

        probe = cls(bank_rows, word_bits, banks_per_tile, 1)
        layers = set()  # per layer: ((tiles, words per tile) of each matrix), deduplicated
        for i in range(spec.n_layers):
            shapes = []
            for kind in LAYER_MATRICES:
                n_out, k = spec.matrix_shape(kind)
                fmt = plan.format_for(kind, f"blk.{i}.{kind}.weight", k)
                nt, nb = layout_shape(fmt, n_out, k)
                shapes.append((nt * nb, probe.words_per_weight_tile(fmt)))
            layers.add(tuple(shapes))
        n = 1
        for shapes in sorted(layers):
            if sum(w for _t, w in shapes) > bank_rows:
                raise ValueError(f"banks of {bank_rows} rows are too shallow: each of the {len(shapes)} layer "
                                 f"matrices takes at least one stripe of up to {max(w for _t, w in shapes)} rows "
                                 f"({word_bits}-bit words)")
            total_words = sum(t * w for t, w in shapes)
            n = max(n, -(-total_words // (banks_per_tile * bank_rows)))
            while sum(stripe_rows(t, banks_per_tile * n, w) for t, w in shapes) > bank_rows:
                n += 1
        return cls(bank_rows, word_bits, banks_per_tile, n)


__all__ = ["RomGeometry", "TILE_ROWS"]
