"""Logical <-> physical ROM addresses.

Logical address of one weight: ``(tensor, output row, input column)``, where the tensor (a GGUF name
such as ``blk.3.ffn_up.weight``) fixes the layer. Physical address: ``(region, bank, row, bit)`` —
``bank`` is the bank's index inside its region, ``row`` the word in the bank, ``bit`` the offset of the
weight's code inside the word (bit 0 = least significant bit of the word's first byte).

The mapping (``docs/rom.md``):

1. A matrix in format ``fmt`` is the sequence of its weight tiles in ROM layout order
   (:mod:`hcemu.layout`): tile ``j = t * n_blocks + b``; each tile is ``tile_bytes`` bytes, i.e.
   ``wpt = tile_bytes * 8 / word_bits`` words.
2. The matrices of a region are placed one after another in *stripes*: a stripe is ``wpt`` rows across
   all ``B`` banks of the region. Tile ``j`` of a matrix goes to bank ``j % B``, rows
   ``base_row + (j // B) * wpt .. + wpt - 1``. A matrix of ``T`` tiles takes ``ceil(T / B)`` stripes; the
   next matrix starts on a fresh stripe (the unused slots of a last stripe are blank ROM).
3. Inside a tile, the byte of weight ``(r, c)`` (``r`` = row in tile, ``c`` = input in tile) is, for int8,
   ``(c // 4) * 64 + r * 4 + c % 4``; for int4 ``(c // 8) * 64 + r * 4 + c % 4``, low nibble if
   ``c % 8 < 4`` else high nibble. Bit position ``p = 8 * byte (+ 4 for a high nibble)``; word
   ``p // word_bits``, bit ``p % word_bits``.

Banks are also numbered chip-wide (``global bank = region_bank_base[region] + bank``), which is how the
chip accumulates per-bank events.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.formats import TILE_ROWS, WeightFormat
from hcemu.layout import layout_shape, tile_bytes
from hcemu.rom.geometry import RomGeometry, stripe_rows

# column layout of the int64 placement table passed to the Cython batch decoder
T_REGION, T_N, T_K, T_BITS, T_TILE_K, T_NBLOCKS, T_WPT, T_BANKS, T_BASE_ROW, T_NTILES = range(10)
TABLE_COLS = 10


@dataclass(frozen=True)
class TensorPlacement:
    """Where one matrix lies: its region, the region's bank count and its first row."""

    tensor_id: int
    name: str
    region: int
    fmt: WeightFormat
    n: int
    k: int
    n_row_tiles: int
    n_blocks: int
    words_per_tile: int
    n_banks: int
    base_row: int

    @property
    def n_tiles(self) -> int:
        return self.n_row_tiles * self.n_blocks

    @property
    def rows(self) -> int:
        return stripe_rows(self.n_tiles, self.n_banks, self.words_per_tile)


class AddressMap:
    """Placement of every matrix of an image and the decoder between logical and physical addresses.

    entries: ``(name, region, fmt, n, k)`` per matrix, in placement order. Regions ``0..n_layers-1`` are
    layers; ``n_layers`` is the head, ``n_layers + 1`` the embedding; a mixture-of-experts model
    (``n_experts`` > 0) has one region per expert of every layer after them
    (``n_layers + 2 + layer * n_experts + e``). Layer regions have ``geometry.layer_banks`` banks; the
    head, embedding and expert regions get the fewest whole bank tiles that hold their matrices.
    Raises ValueError (with sizes) when a layer does not fit.
    """

    def __init__(self, geometry: RomGeometry, n_layers: int, entries, n_experts: int = 0):
        self.geometry = geometry
        self.n_layers = int(n_layers)
        self.n_experts = int(n_experts)
        self.n_regions = self.n_layers + 2 + self.n_layers * self.n_experts
        entries = list(entries)
        by_region: dict[int, list] = {r: [] for r in range(self.n_regions)}
        for tid, (name, region, fmt, n, k) in enumerate(entries):
            if not 0 <= region < self.n_regions:
                raise ValueError(f"{name}: region {region} out of range 0..{self.n_regions - 1}")
            by_region[region].append((tid, name, fmt, int(n), int(k)))
        g = geometry
        placements: list[TensorPlacement | None] = [None] * len(entries)
        self.region_banks = np.zeros(self.n_regions, np.int64)
        self.region_rows_used = np.zeros(self.n_regions, np.int64)
        for region, items in by_region.items():
            if not items:
                continue
            shapes = []
            for tid, name, fmt, n, k in items:
                nt, nb = layout_shape(fmt, n, k)
                shapes.append((nt, nb, g.words_per_weight_tile(fmt)))
            if region < self.n_layers:
                n_banks = g.layer_banks
                need = sum(stripe_rows(nt * nb, n_banks, w) for nt, nb, w in shapes)
                if need > g.bank_rows:
                    raise ValueError(
                        f"layer {region} needs {need} rows per bank in {n_banks} banks but banks have "
                        f"{g.bank_rows} rows: raise tiles_per_region above {g.tiles_per_region} "
                        f"(or use RomGeometry.for_model)")
            else:
                if sum(w for _nt, _nb, w in shapes) > g.bank_rows:
                    raise ValueError(f"region {region}: banks of {g.bank_rows} rows are too shallow for "
                                     f"{len(shapes)} matrices of {shapes[0][2]}-row stripes")
                words = sum(nt * nb * w for nt, nb, w in shapes)
                tiles = max(1, -(-words // (g.banks_per_tile * g.bank_rows)))
                while sum(stripe_rows(nt * nb, g.banks_per_tile * tiles, w) for nt, nb, w in shapes) > g.bank_rows:
                    tiles += 1
                n_banks = g.banks_per_tile * tiles
            row = 0
            for (tid, name, fmt, n, k), (nt, nb, w) in zip(items, shapes):
                p = TensorPlacement(tid, name, region, fmt, n, k, nt, nb, w, n_banks, row)
                placements[tid] = p
                row += p.rows
            self.region_banks[region] = n_banks
            self.region_rows_used[region] = row
        self.placements: list[TensorPlacement] = placements  # type: ignore[assignment]
        self.by_name = {p.name: p for p in self.placements}
        self.region_bank_base = np.concatenate([[0], np.cumsum(self.region_banks)]).astype(np.int64)
        self.table = np.array([[p.region, p.n, p.k, p.fmt.bits, p.fmt.tile_k, p.n_blocks, p.words_per_tile,
                                p.n_banks, p.base_row, p.n_tiles] for p in self.placements],
                              np.int64).reshape(-1, TABLE_COLS)
        # region -> tensor ids sorted by base row (CSR), for decoding
        order = sorted(range(len(self.placements)), key=lambda i: (self.placements[i].region,
                                                                    self.placements[i].base_row))
        self.region_tensors = np.array(order, np.int64)
        counts = np.bincount([self.placements[i].region for i in order], minlength=self.n_regions)
        self.region_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # ---- sizes
    @property
    def n_banks(self) -> int:
        """Banks on the chip (all regions)."""
        return int(self.region_bank_base[-1])

    @property
    def physical_bits(self) -> int:
        """Code bits of all banks, blank slots included."""
        return self.n_banks * self.geometry.bank_bits

    def tensor_id(self, name: str) -> int:
        try:
            return self.by_name[name].tensor_id
        except KeyError:
            raise KeyError(f"no matrix {name!r} in the address map") from None

    # ---- scalar reference decoder
    def encode(self, name_or_id, row: int, col: int) -> tuple[int, int, int, int]:
        """``(region, bank, row, bit)`` of weight ``(row, col)`` of a matrix (the reference decoder)."""
        p = self.placements[name_or_id if isinstance(name_or_id, (int, np.integer)) else self.tensor_id(name_or_id)]
        if not (0 <= row < p.n and 0 <= col < p.k):
            raise IndexError(f"{p.name}: weight ({row}, {col}) outside {p.n}x{p.k}")
        t, r = divmod(row, TILE_ROWS)
        b, c = divmod(col, p.fmt.tile_k)
        j = t * p.n_blocks + b
        if p.fmt.bits == 8:
            pos = ((c // 4) * 64 + r * 4 + c % 4) * 8
        else:
            pos = ((c // 8) * 64 + r * 4 + c % 4) * 8 + (4 if c % 8 >= 4 else 0)
        word, bit = divmod(pos, self.geometry.word_bits)
        return p.region, j % p.n_banks, p.base_row + (j // p.n_banks) * p.words_per_tile + word, bit

    def decode(self, region: int, bank: int, row: int, bit: int) -> tuple[int, int, int]:
        """``(tensor_id, row, col)`` of the weight whose code starts at a physical bit, or ``(-1, -1, -1)``
        for a blank slot, a padding weight, or a bit that does not start a code."""
        none = (-1, -1, -1)
        if not 0 <= region < self.n_regions or not 0 <= bank < self.region_banks[region]:
            return none
        if not 0 <= row < self.geometry.bank_rows or not 0 <= bit < self.geometry.word_bits:
            return none
        lo, hi = self.region_ptr[region], self.region_ptr[region + 1]
        for tid in self.region_tensors[lo:hi]:
            p = self.placements[tid]
            if p.base_row <= row < p.base_row + p.rows:
                break
        else:
            return none
        stripe, word = divmod(row - p.base_row, p.words_per_tile)
        j = stripe * p.n_banks + bank
        if j >= p.n_tiles:
            return none
        pos = word * self.geometry.word_bits + bit
        if pos % p.fmt.bits:
            return none
        byte, nib = divmod(pos, 8)
        line, within = divmod(byte, 64)
        r, jj = divmod(within, 4)
        if p.fmt.bits == 8:
            c = line * 4 + jj
        else:
            c = line * 8 + (4 if nib else 0) + jj
        t, b = divmod(j, p.n_blocks)
        out_row, col = t * TILE_ROWS + r, b * p.fmt.tile_k + c
        if out_row >= p.n or col >= p.k:
            return none
        return p.tensor_id, out_row, col

    # ---- batch decoders (Cython)
    def encode_batch(self, tensor_ids, rows, cols):
        """Vectorized :meth:`encode`: int64 arrays in, ``(region, bank, row, bit)`` int64 arrays out."""
        from hcemu import _core

        t, r, c = (np.ascontiguousarray(a, dtype=np.int64).reshape(-1) for a in (tensor_ids, rows, cols))
        return _core.rom_encode(self.table, self.geometry.word_bits, t, r, c)

    def decode_batch(self, regions, banks, rows, bits):
        """Vectorized :meth:`decode`: ``(tensor_id, row, col)`` int64 arrays, -1 where nothing starts."""
        from hcemu import _core

        a = [np.ascontiguousarray(x, dtype=np.int64).reshape(-1) for x in (regions, banks, rows, bits)]
        return _core.rom_decode(self.table, self.region_banks, self.region_ptr, self.region_tensors,
                                self.geometry.bank_rows, self.geometry.word_bits, *a)

    def global_bit(self, region, bank, row, bit) -> np.ndarray:
        """One flat chip-wide bit address per physical address (for overlap checks)."""
        gb = self.region_bank_base[np.asarray(region, np.int64)] + np.asarray(bank, np.int64)
        return (gb * self.geometry.bank_rows + np.asarray(row, np.int64)) * self.geometry.word_bits + np.asarray(bit, np.int64)

    # ---- per-bank reads (what the chip counts)
    def tensor_banks(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Chip-wide bank ids and rows each reads in one pass of a product over matrix ``name``."""
        p = self.placements[self.tensor_id(name)]
        used = min(p.n_banks, p.n_tiles)
        tiles_in_bank = p.n_tiles // p.n_banks + (np.arange(used) < p.n_tiles % p.n_banks)
        ids = self.region_bank_base[p.region] + np.arange(used, dtype=np.int64)
        return ids, (tiles_in_bank * p.words_per_tile).astype(np.int64)

    def row_banks(self, name: str, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Chip-wide bank ids and rows each reads to fetch output row ``row`` of ``name`` (embedding lookup)."""
        p = self.placements[self.tensor_id(name)]
        if not 0 <= row < p.n:
            raise IndexError(f"{p.name}: row {row} outside 0..{p.n - 1}")
        lines = tile_bytes(p.fmt) // 64
        words = min(lines, p.words_per_tile)   # one word per 64-byte line, or fewer when a word spans lines
        j = (row // TILE_ROWS) * p.n_blocks + np.arange(p.n_blocks, dtype=np.int64)
        banks, counts = np.unique(j % p.n_banks, return_counts=True)
        return self.region_bank_base[p.region] + banks, counts.astype(np.int64) * words

    # ---- mask data
    def bank_image(self, region: int, codes_of) -> np.ndarray:
        """The words of every bank of ``region`` as uint8 (banks, bank_rows, word_bits // 8).

        codes_of(name) -> uint8 (n_row_tiles, n_blocks, tile_bytes): the matrix codes in ROM layout.
        """
        g = self.geometry
        nbanks = int(self.region_banks[region])
        out = np.zeros((nbanks, g.bank_rows, g.word_bits // 8), np.uint8)
        lo, hi = self.region_ptr[region], self.region_ptr[region + 1]
        for tid in self.region_tensors[lo:hi]:
            p = self.placements[tid]
            codes = np.asarray(codes_of(p.name)).reshape(p.n_tiles, -1)
            stripes = -(-p.n_tiles // p.n_banks)
            full = np.zeros((stripes * p.n_banks, codes.shape[1]), np.uint8)
            full[: p.n_tiles] = codes
            lay = full.reshape(stripes, p.n_banks, p.words_per_tile, g.word_bits // 8).transpose(1, 0, 2, 3)
            out[:, p.base_row: p.base_row + p.rows] = lay.reshape(p.n_banks, p.rows, g.word_bits // 8)
        return out

    def to_dict(self) -> dict:
        return {"n_banks": self.n_banks, "n_experts": self.n_experts,
                "regions": [{"region": r, "banks": int(self.region_banks[r]),
                             "bank_base": int(self.region_bank_base[r]),
                             "rows_used": int(self.region_rows_used[r])} for r in range(self.n_regions)]}
