"""Bank geometry and the logical <-> physical decoder: bijection, no overlap, Cython == Python, and
the mapping agrees with the mask data (bits at a weight's address hold that weight's code)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hcemu.formats import get_plan
from hcemu.layout import unpack_codes
from hcemu.model.spec import ModelSpec
from hcemu.rom import AddressMap, RomGeometry, RomImage, compile_model
from hcemu.rom.image import _image_matrices

from test_rom import SPEC, FakeSource


def test_geometry_validation():
    RomGeometry(1024, 512, 16, 3)
    with pytest.raises(ValueError, match="bank_rows must be a power of two, got 1000"):
        RomGeometry(1000, 512, 16, 1)
    with pytest.raises(ValueError, match="word_bits must be a power of two"):
        RomGeometry(1024, 500, 16, 1)
    with pytest.raises(ValueError, match=r"word_bits must be in 32\.\.2048, got 4096"):
        RomGeometry(1024, 4096, 16, 1)
    with pytest.raises(ValueError, match="banks_per_tile must be a power of two, got 12"):
        RomGeometry(1024, 512, 12, 1)
    with pytest.raises(ValueError, match="tiles_per_region must be a positive integer, got 0"):
        RomGeometry(1024, 512, 16, 0)


def test_capacity_check():
    plan = get_plan("int4")
    mats, _ = _image_matrices(SPEC, plan)
    entries = [(nm, reg, fmt, *shape) for nm, _k, _l, reg, fmt, shape in mats]
    g = RomGeometry.for_model(SPEC, plan, bank_rows=32, word_bits=512, banks_per_tile=2)
    AddressMap(g, SPEC.n_layers, entries)
    small = RomGeometry(32, 512, 2, g.tiles_per_region - 1)
    with pytest.raises(ValueError, match=r"layer \d needs \d+ rows per bank .* banks have 32 rows"):
        AddressMap(small, SPEC.n_layers, entries)


def _all_weights(amap):
    t, r, c = [], [], []
    for p in amap.placements:
        rr, cc = np.meshgrid(np.arange(p.n), np.arange(p.k), indexing="ij")
        t.append(np.full(p.n * p.k, p.tensor_id))
        r.append(rr.ravel())
        c.append(cc.ravel())
    return np.concatenate(t), np.concatenate(r), np.concatenate(c)


def check_bijection(amap: AddressMap):
    g = amap.geometry
    t, r, c = _all_weights(amap)
    reg, bank, row, bit = amap.encode_batch(t, r, c)
    assert (row >= 0).all() and (row < g.bank_rows).all() and (bit >= 0).all() and (bit < g.word_bits).all()
    assert (bank < amap.region_banks[reg]).all()
    bits = np.array([amap.placements[i].fmt.bits for i in range(len(amap.placements))])[t]
    assert (bit % bits == 0).all()
    # no overlap: every weight's code occupies distinct bits
    flat = amap.global_bit(reg, bank, row, bit)
    for width in (4, 8):
        sel = bits == width
        span = (flat[sel][:, None] + np.arange(width)).ravel()
        assert np.unique(span).size == span.size
    starts = np.concatenate([(flat[bits == w][:, None] + np.arange(w)).ravel() for w in (4, 8)])
    assert np.unique(starts).size == starts.size, "codes of different widths overlap"
    assert starts.max() < amap.physical_bits
    # inverse: decode(encode(x)) == x
    dt, dr, dc = amap.decode_batch(reg, bank, row, bit)
    np.testing.assert_array_equal(dt, t)
    np.testing.assert_array_equal(dr, r)
    np.testing.assert_array_equal(dc, c)
    # every physical code position decodes to at most one weight and exactly the weights are hit
    for region in range(amap.n_regions):
        nb = int(amap.region_banks[region])
        if not nb:
            continue
        B, R, P = np.meshgrid(np.arange(nb), np.arange(g.bank_rows), np.arange(0, g.word_bits, 4), indexing="ij")
        it, ir, ic = amap.decode_batch(np.full(B.size, region), B.ravel(), R.ravel(), P.ravel())
        hit = it >= 0
        want = sum(p.n * p.k for p in amap.placements if p.region == region)
        assert hit.sum() == want
        key = (it[hit] * (1 << 40)) + ir[hit] * (1 << 20) + ic[hit]
        assert np.unique(key).size == want


def _map(spec, plan, geometry):
    mats, _ = _image_matrices(spec, plan)
    return AddressMap(geometry, spec.n_layers, [(nm, reg, fmt, *shape) for nm, _k, _l, reg, fmt, shape in mats])


@pytest.mark.parametrize("plan", ["int4", "int8", "int4-sym"])
@pytest.mark.parametrize("word_bits", [32, 512, 2048])
def test_bijection_whole_image(plan, word_bits):
    p = get_plan(plan)
    rows = 1024 if word_bits == 32 else 64
    check_bijection(_map(SPEC, p, RomGeometry.for_model(SPEC, p, bank_rows=rows, word_bits=word_bits, banks_per_tile=4)))


def test_too_shallow_banks_are_rejected():
    with pytest.raises(ValueError, match="too shallow"):
        RomGeometry.for_model(SPEC, get_plan("int8"), bank_rows=64, word_bits=32)


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 2), heads=st.sampled_from([(2, 1), (4, 2), (6, 3)]), hd=st.sampled_from([16, 32]),
       ff=st.sampled_from([32, 96, 160]), vocab=st.integers(17, 90), tied=st.booleans(),
       plan=st.sampled_from(["int4", "int8", "int4-sym"]), rows_log=st.integers(3, 8),
       word_log=st.integers(5, 11), bpt_log=st.integers(0, 3))
def test_bijection_property(layers, heads, hd, ff, vocab, tied, plan, rows_log, word_log, bpt_log):
    h, kv = heads
    spec = ModelSpec("h", layers, 64, h, kv, hd, ff, vocab, tied_embeddings=tied)
    p = get_plan(plan)
    try:
        g = RomGeometry.for_model(spec, p, 1 << rows_log, 1 << word_log, 1 << bpt_log)
        amap = _map(spec, p, g)
    except ValueError as exc:
        assert "too shallow" in str(exc)
        assume(False)
    check_bijection(amap)


def test_cython_decoder_equals_python():
    p = get_plan("int4")
    amap = _map(SPEC, p, RomGeometry.for_model(SPEC, p, bank_rows=64, word_bits=256, banks_per_tile=4))
    rng = np.random.default_rng(5)
    t = rng.integers(0, len(amap.placements), 400)
    r = np.array([rng.integers(0, amap.placements[i].n) for i in t])
    c = np.array([rng.integers(0, amap.placements[i].k) for i in t])
    reg, bank, row, bit = amap.encode_batch(t, r, c)
    for i in range(t.size):
        assert amap.encode(int(t[i]), int(r[i]), int(c[i])) == (reg[i], bank[i], row[i], bit[i])
    # random physical addresses, including blanks, padding, misaligned bits and out-of-range values
    m = 3000
    regs = rng.integers(-1, amap.n_regions + 1, m)
    banks = rng.integers(-1, 70, m)
    rows = rng.integers(-1, 66, m)
    bits = rng.integers(-1, 257, m)
    regs, banks = np.concatenate([regs, reg]), np.concatenate([banks, bank])
    rows, bits = np.concatenate([rows, row]), np.concatenate([bits, bit])
    m += reg.size
    dt, dr, dc = amap.decode_batch(regs, banks, rows, bits)
    for i in range(m):
        assert amap.decode(int(regs[i]), int(banks[i]), int(rows[i]), int(bits[i])) == (dt[i], dr[i], dc[i])
    assert (dt >= 0).sum() >= 400 and (dt < 0).sum() > 1000


def test_batch_decoder_validates():
    p = get_plan("int8")
    amap = _map(SPEC, p, RomGeometry.for_model(SPEC, p, bank_rows=64))
    with pytest.raises(IndexError, match=r"entry 1: tensor 0 \(200x64\), row 200, col 0 out of range"):
        amap.encode_batch([0, 0], [0, 200], [0, 0])
    with pytest.raises(IndexError, match="no such tensor"):
        amap.encode_batch([99], [0], [0])
    with pytest.raises(ValueError, match="equal lengths"):
        amap.encode_batch([0, 0], [0], [0])
    from hcemu import _core
    with pytest.raises(ValueError, match="Buffer dtype mismatch|int64"):
        _core.rom_encode(amap.table, 512, np.zeros(2, np.int32), np.zeros(2, np.int64), np.zeros(2, np.int64))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("romaddr") / "a.hcrom"
    g = RomGeometry.for_model(SPEC, get_plan("int4"), bank_rows=128, word_bits=128, banks_per_tile=4)
    compile_model(FakeSource(), "int4", path, geometry=g, progress=False)
    img = RomImage.load(path)
    yield img
    img.close()


def test_image_bijection_and_mask_data(image):
    """Over a whole compiled image: the bits at each weight's physical address are that weight's code."""
    amap = image.address_map
    check_bijection(amap)
    t, r, c = _all_weights(amap)
    reg, bank, row, bit = amap.encode_batch(t, r, c)
    for region in range(amap.n_regions):
        if not amap.region_banks[region]:
            continue
        words = image.bank_image(region)            # (banks, rows, bytes)
        sel = reg == region
        byte = words[bank[sel], row[sel], bit[sel] // 8].astype(np.int64)
        widths = np.array([p.fmt.bits for p in amap.placements])[t[sel]]
        code = np.where(widths == 8, byte, (byte >> (bit[sel] % 8)) & 0xF)
        want = np.empty(sel.sum(), np.int64)
        for p in amap.placements:
            if p.region != region:
                continue
            q = unpack_codes(image.matrix(p.name)).astype(np.int64)
            ids = np.nonzero(t[sel] == p.tensor_id)[0]
            raw = q[r[sel][ids], c[sel][ids]]
            want[ids] = raw & (0xFF if p.fmt.bits == 8 else 0xF)
        np.testing.assert_array_equal(code, want)


def test_tensor_and_row_banks(image):
    amap = image.address_map
    for p in amap.placements:
        ids, rows = image.tensor_banks(p.name)
        assert rows.sum() == p.n_tiles * p.words_per_tile
        assert ids.size == np.unique(ids).size == min(p.n_banks, p.n_tiles)
        lo, hi = amap.region_bank_base[p.region], amap.region_bank_base[p.region + 1]
        assert (ids >= lo).all() and (ids < hi).all()
        # rows read per bank == rows of that bank holding this tensor's tiles, via the decoder
        t, r, c = _all_weights(amap)
        sel = t == p.tensor_id
        reg, bank, row, _bit = amap.encode_batch(t[sel], r[sel], c[sel])
        occupied = {}
        for b, w in set(zip(bank.tolist(), row.tolist())):
            occupied[b] = occupied.get(b, 0) + 1
        got = {int(i - lo): int(n) for i, n in zip(ids, rows)}
        if p.n % 16 == 0:
            assert got == occupied
        else:  # words holding only padding rows are read too (whole tiles), but hold no weight
            assert got.keys() == occupied.keys() and all(got[b] >= occupied[b] for b in got)
    emb = amap.by_name["token_embd.weight"]
    ids, rows = image.row_banks("token_embd.weight", 37)
    t = np.full(emb.k, emb.tensor_id)
    reg, bank, row, _ = amap.encode_batch(t, np.full(emb.k, 37), np.arange(emb.k))
    assert set((amap.region_bank_base[reg] + bank).tolist()) == set(ids.tolist())
    assert rows.sum() == len(set(zip(bank.tolist(), row.tolist())))
    with pytest.raises(IndexError):
        image.row_banks("token_embd.weight", emb.n)


def test_bank_reads_match_event_rule(image):
    """Rows read per pass x word bits == rom_code_bits of docs/events.md (whole tiles, padding included)."""
    from hcemu.layout import layout_shape, tile_bytes

    for p in image.address_map.placements:
        _ids, rows = image.tensor_banks(p.name)
        nt, nb = layout_shape(p.fmt, p.n, p.k)
        assert int(rows.sum()) * image.geometry.word_bits == nt * nb * tile_bytes(p.fmt) * 8
