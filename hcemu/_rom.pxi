# ROM address decoding (batch): the Cython twin of hcemu.rom.address.AddressMap.encode / decode.
# The placement table is int64 (n_tensors, 10), columns as hcemu.rom.address.T_*.
from libc.stdint cimport int64_t
import numpy as _np

cdef enum:
    _T_REGION = 0
    _T_N = 1
    _T_K = 2
    _T_BITS = 3
    _T_TILE_K = 4
    _T_NBLOCKS = 5
    _T_WPT = 6
    _T_BANKS = 7
    _T_BASE_ROW = 8
    _T_NTILES = 9
    _T_COLS = 10



cdef int64_t _TABLE_MAX = (<int64_t>1) << 31   # keeps every product of two entries inside int64


cdef Py_ssize_t _bad_table_row(const int64_t[:, ::1] table) noexcept nogil:
    """Index of the first placement row whose entries the loops cannot use (a zero divisor, a negative
    size, values beyond 2**31), or -1."""
    cdef Py_ssize_t t, c
    for t in range(table.shape[0]):
        for c in range(_T_COLS):
            if table[t, c] < 0 or table[t, c] >= _TABLE_MAX:
                return t
        if (table[t, _T_N] < 1 or table[t, _T_K] < 1 or (table[t, _T_BITS] != 4 and table[t, _T_BITS] != 8)
                or table[t, _T_TILE_K] < 8 or table[t, _T_TILE_K] % 8 or table[t, _T_NBLOCKS] < 1
                or table[t, _T_WPT] < 1 or table[t, _T_BANKS] < 1 or table[t, _T_NTILES] < 1):
            return t
    return -1


cdef int _check_table(str fn, const int64_t[:, ::1] table) except -1:
    if table.shape[1] != _T_COLS:
        raise ValueError(f"{fn}: placement table must have {_T_COLS} columns, got {table.shape[1]}")
    cdef Py_ssize_t bad = _bad_table_row(table)
    if bad >= 0:
        raise ValueError(f"{fn}: placement table row {bad} is not a placement (sizes must be positive, bits "
                         f"4 or 8, tile_k a multiple of 8, every entry in 0..2**31): "
                         f"{[table[bad, c] for c in range(_T_COLS)]}")
    return 0


cdef int64_t _rom_encode_loop(const int64_t[:, ::1] table, int64_t word_bits,
                              const int64_t[::1] tid, const int64_t[::1] row, const int64_t[::1] col,
                              int64_t[::1] o_region, int64_t[::1] o_bank, int64_t[::1] o_row,
                              int64_t[::1] o_bit) noexcept nogil:
    """Fill the outputs; return -1 on success or the index of the first out-of-range input."""
    cdef Py_ssize_t i, m = tid.shape[0], nt = table.shape[0]
    cdef int64_t t, r, c, j, pos, tr, tc, nb, tk, banks
    for i in range(m):
        t = tid[i]
        if t < 0 or t >= nt:
            return i
        r = row[i]
        c = col[i]
        if r < 0 or r >= table[t, _T_N] or c < 0 or c >= table[t, _T_K]:
            return i
        tk = table[t, _T_TILE_K]
        nb = table[t, _T_NBLOCKS]
        banks = table[t, _T_BANKS]
        tr = r >> 4
        j = tr * nb + c // tk
        tc = c % tk
        r = r & 15
        if table[t, _T_BITS] == 8:
            pos = ((tc >> 2) * 64 + r * 4 + (tc & 3)) * 8
        else:
            pos = ((tc >> 3) * 64 + r * 4 + (tc & 3)) * 8 + (4 if (tc & 7) >= 4 else 0)
        o_region[i] = table[t, _T_REGION]
        o_bank[i] = j % banks
        o_row[i] = table[t, _T_BASE_ROW] + (j // banks) * table[t, _T_WPT] + pos // word_bits
        o_bit[i] = pos % word_bits
    return -1


def rom_encode(const int64_t[:, ::1] table, int64_t word_bits, const int64_t[::1] tensor_ids,
               const int64_t[::1] rows, const int64_t[::1] cols):
    """Physical ``(region, bank, row, bit)`` int64 arrays of weights ``(tensor, row, col)``."""
    _check_table("rom_encode", table)
    if word_bits < 32 or word_bits & (word_bits - 1) or word_bits >= _TABLE_MAX:
        raise ValueError(f"word_bits must be a power of two >= 32, got {word_bits}")
    cdef Py_ssize_t m = tensor_ids.shape[0]
    if rows.shape[0] != m or cols.shape[0] != m:
        raise ValueError(f"tensor_ids, rows, cols must have equal lengths, got {m}, {rows.shape[0]}, {cols.shape[0]}")
    outs = [_np.empty(m, _np.int64) for _ in range(4)]
    cdef int64_t[::1] a = outs[0], b = outs[1], c = outs[2], d = outs[3]
    cdef int64_t bad
    with nogil:
        bad = _rom_encode_loop(table, word_bits, tensor_ids, rows, cols, a, b, c, d)
    if bad >= 0:
        t = tensor_ids[bad]
        shape = f"{table[t, _T_N]}x{table[t, _T_K]}" if 0 <= t < table.shape[0] else "no such tensor"
        raise IndexError(f"rom_encode: entry {bad}: tensor {t} ({shape}), row {rows[bad]}, col {cols[bad]} out of range")
    return tuple(outs)


cdef void _rom_decode_loop(const int64_t[:, ::1] table, const int64_t[::1] region_banks,
                           const int64_t[::1] region_ptr, const int64_t[::1] region_tensors,
                           int64_t bank_rows, int64_t word_bits,
                           const int64_t[::1] reg, const int64_t[::1] bank, const int64_t[::1] row,
                           const int64_t[::1] bit, int64_t[::1] o_tid, int64_t[::1] o_row,
                           int64_t[::1] o_col) noexcept nogil:
    cdef Py_ssize_t i, m = reg.shape[0], n_regions = region_banks.shape[0]
    cdef int64_t g, lo, hi, mid, t, base, rows, stripe, word, j, pos, byte, nib, line, within, r, jj, c, tr, bb
    for i in range(m):
        o_tid[i] = -1
        o_row[i] = -1
        o_col[i] = -1
        g = reg[i]
        if g < 0 or g >= n_regions or bank[i] < 0 or bank[i] >= region_banks[g]:
            continue
        if row[i] < 0 or row[i] >= bank_rows or bit[i] < 0 or bit[i] >= word_bits:
            continue
        # last tensor of the region whose base row <= row (tensors are sorted by base row)
        lo = region_ptr[g]
        hi = region_ptr[g + 1]
        if lo == hi:
            continue
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if table[region_tensors[mid], _T_BASE_ROW] <= row[i]:
                lo = mid
            else:
                hi = mid
        t = region_tensors[lo]
        base = table[t, _T_BASE_ROW]
        rows = ((table[t, _T_NTILES] + table[t, _T_BANKS] - 1) // table[t, _T_BANKS]) * table[t, _T_WPT]
        if row[i] < base or row[i] >= base + rows:
            continue
        stripe = (row[i] - base) // table[t, _T_WPT]
        word = (row[i] - base) % table[t, _T_WPT]
        j = stripe * table[t, _T_BANKS] + bank[i]
        if j >= table[t, _T_NTILES]:
            continue
        pos = word * word_bits + bit[i]
        if pos % table[t, _T_BITS]:
            continue
        byte = pos >> 3
        nib = pos & 7
        line = byte >> 6
        within = byte & 63
        r = within >> 2
        jj = within & 3
        if table[t, _T_BITS] == 8:
            c = line * 4 + jj
        else:
            c = line * 8 + (4 if nib else 0) + jj
        tr = j // table[t, _T_NBLOCKS]
        bb = j % table[t, _T_NBLOCKS]
        r = tr * 16 + r
        c = bb * table[t, _T_TILE_K] + c
        if r >= table[t, _T_N] or c >= table[t, _T_K]:
            continue
        o_tid[i] = t
        o_row[i] = r
        o_col[i] = c


def rom_decode(const int64_t[:, ::1] table, const int64_t[::1] region_banks, const int64_t[::1] region_ptr,
               const int64_t[::1] region_tensors, int64_t bank_rows, int64_t word_bits,
               const int64_t[::1] regions, const int64_t[::1] banks, const int64_t[::1] rows,
               const int64_t[::1] bits):
    """Logical ``(tensor_id, row, col)`` int64 arrays of physical addresses; -1 where no weight starts."""
    _check_table("rom_decode", table)
    if not 1 <= word_bits < _TABLE_MAX or not 1 <= bank_rows < _TABLE_MAX:
        raise ValueError(f"rom_decode: word_bits {word_bits} and bank_rows {bank_rows} must be in 1..2**31")
    if region_ptr.shape[0] != region_banks.shape[0] + 1:
        raise ValueError(f"region_ptr must have {region_banks.shape[0] + 1} entries, got {region_ptr.shape[0]}")
    if region_tensors.shape[0] != table.shape[0]:
        raise ValueError(f"region_tensors must list {table.shape[0]} tensors, got {region_tensors.shape[0]}")
    cdef Py_ssize_t k
    for k in range(region_ptr.shape[0]):
        if region_ptr[k] < 0 or region_ptr[k] > table.shape[0] or (k and region_ptr[k] < region_ptr[k - 1]):
            raise ValueError(f"region_ptr is not a valid CSR index at entry {k}")
    for k in range(region_tensors.shape[0]):
        if region_tensors[k] < 0 or region_tensors[k] >= table.shape[0]:
            raise ValueError(f"region_tensors[{k}] = {region_tensors[k]} is not a tensor id")
    cdef Py_ssize_t m = regions.shape[0]
    if banks.shape[0] != m or rows.shape[0] != m or bits.shape[0] != m:
        raise ValueError(f"regions, banks, rows, bits must have equal lengths, got {m}, {banks.shape[0]}, "
                         f"{rows.shape[0]}, {bits.shape[0]}")
    outs = [_np.empty(m, _np.int64) for _ in range(3)]
    cdef int64_t[::1] a = outs[0], b = outs[1], c = outs[2]
    with nogil:
        _rom_decode_loop(table, region_banks, region_ptr, region_tensors, bank_rows, word_bits,
                         regions, banks, rows, bits, a, b, c)
    return tuple(outs)
