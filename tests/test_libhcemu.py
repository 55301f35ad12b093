"""libhcemu, the whole chip in C (csrc/hc_lib.c, csrc/hcemu_chip.h; docs/embedding.md "The C library").

The C chip (driven here through ctypes, and through examples/c/greedy.c built with the system
compiler) must give the Python Chip's logits bit for bit and its event counts exactly, for the same
image and tokens; refuse what it does not run, old images and corrupt files with a status and a
message; and the compiler's C table must be the one the directory describes.
"""
import dataclasses
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from libhcemu_ctypes import CChip, CError, load
from model_helpers import TINY_SPEC

import hcemu
from hcemu.chip import Chip
from hcemu.formats import get_plan
from hcemu.model.synthetic import SyntheticSource
from hcemu.rom import RomImage, compile_model
from hcemu.rom import ctable
from hcemu.rom.image import RomImageError

HC_EINVAL, HC_ECAPACITY = -1, -5
HC_EIO, HC_EFORMAT, HC_EOLDIMAGE, HC_ENOTSUPPORTED, HC_EBUSY = -20, -21, -22, -23, -24
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"


@pytest.fixture(scope="module")
def lib():
    try:
        return load()
    except FileNotFoundError as exc:  # a source tree whose extension was built before the library existed
        pytest.fail(str(exc))


def _compile(tmp_path_factory, spec, plan, name):
    path = tmp_path_factory.mktemp("libhcemu") / f"{name}.hcrom"
    compile_model(SyntheticSource(spec, seed=3), plan, path, progress=False)
    return path


def _same_run(lib, path, prompt, decode, capacity=160):
    """Prefill ``prompt`` then decode ``decode`` on both chips; assert identical logits bits and events."""
    with RomImage.load(path) as img:
        py = Chip(img, kv_capacity_tokens=capacity)
        c = CChip(lib, path, capacity)
        try:
            for i, tokens in enumerate([prompt] + [[t] for t in decode]):
                r, logits = (py.prefill(tokens), c.prefill(tokens)) if i == 0 else (py.decode(tokens[0]),
                                                                                   c.decode(tokens[0]))
                assert np.array_equal(r.logits[-1].view(np.int32), logits.view(np.int32)), f"step {i} logits"
                assert np.array_equal(r.events.counts, c.events()), f"step {i} events"
            assert c.position == py.position == len(prompt) + len(decode)
        finally:
            c.close()


KV_FP16 = dataclasses.replace(get_plan("int8"), kv="fp16")


@pytest.mark.parametrize("plan", ["int8", "int4", "int4-sym", "int8-pt", KV_FP16], ids=lambda p: getattr(p, "name", p) + (
    "-kvfp16" if getattr(p, "kv", "") == "fp16" else ""))
def test_c_chip_equals_python_chip(lib, tmp_path_factory, plan):
    path = _compile(tmp_path_factory, TINY_SPEC, plan, "tiny")
    prompt = (np.arange(70) * 7) % TINY_SPEC.vocab_size   # two prefill chunks (64 + 6)
    _same_run(lib, path, prompt, [5, 79, 0, 33])


def test_c_chip_gemma1_kinds(lib, tmp_path_factory):
    """The block kinds the C chip runs beyond Llama: NeoX RoPE, GeGLU, score scale and soft-cap, logit
    soft-cap, embedding scale, tied embeddings."""
    spec = dataclasses.replace(TINY_SPEC, name="tiny-gemma1", rope_style="neox", ffn_act="gelu", attn_scale=0.2,
                               attn_softcap=30.0, final_softcap=20.0, embed_scale=8.0, tied_embeddings=True)
    path = _compile(tmp_path_factory, spec, "int4", "gemma1")
    _same_run(lib, path, [1, 2, 3, 4, 5, 6, 7], [9, 11])


def test_event_fields_are_pythons(lib):
    from hcemu.events import FIELDS

    names = [lib.hc_event_field_name(i) for i in range(len(FIELDS) + 1)]
    assert [n.decode() for n in names[:-1]] == list(FIELDS) and names[-1] is None
    assert lib.hc_abi_version() == 1


def test_c_chip_reset_and_errors(lib, tiny_image):
    c = CChip(lib, tiny_image.path, 16)
    try:
        first = c.prefill([3, 1, 4, 1, 5])
        assert c.position == 5
        with pytest.raises(CError, match="outside the vocabulary") as e:
            c.decode(TINY_SPEC.vocab_size)
        assert e.value.rc == HC_EINVAL and c.position == 5   # nothing ran
        with pytest.raises(CError, match="do not fit the KV cache") as e:
            c.prefill(np.zeros(12, np.int32))
        assert e.value.rc == HC_ECAPACITY and c.position == 5
        c.reset()
        assert c.position == 0 and not c.events().any()
        assert np.array_equal(c.prefill([3, 1, 4, 1, 5]).view(np.int32), first.view(np.int32))
    finally:
        c.close()
    with pytest.raises(CError, match="kv_capacity") as e:
        CChip(lib, tiny_image.path, TINY_SPEC.max_context + 1)
    assert e.value.rc == HC_EINVAL


def test_concurrent_calls_on_one_chip_are_refused(lib, tiny_image):
    """Two threads calling one chip: a call entered while the other is inside one returns HC_EBUSY and
    changes nothing; every other call succeeds (ctypes releases the GIL around each C call)."""
    import threading
    import time

    c = CChip(lib, tiny_image.path, TINY_SPEC.max_context)
    prompt = np.arange(64, dtype=np.int32) % TINY_SPEC.vocab_size
    seen, bad, stop = [], [], threading.Event()

    def hammer():
        while not stop.is_set():
            for call in (c.reset, lambda: c.prefill(prompt)):
                try:
                    call()
                except CError as e:   # a reset refused as busy may leave the cache full: HC_ECAPACITY, also clean
                    if e.rc != HC_ECAPACITY:
                        (seen if e.rc == HC_EBUSY else bad).append(e)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while not seen and not bad and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    try:
        assert not bad, bad[:3]
        assert seen, "no overlapping call was observed"
        assert "another thread" in str(seen[0])
        c.reset()
        assert c.position == 0
    finally:
        c.close()


@pytest.mark.parametrize("change, message", [
    ({"n_experts": 4, "n_experts_used": 2, "d_ff_expert": 32}, "mixture of experts"),
    ({"qkv_bias": True}, "Q/K/V biases"),
    ({"qk_norm": "head", "post_norms": True}, "q/k norms, post-norms"),
    ({"sliding_window": 4, "swa_layers": (0,)}, "sliding-window layers"),
])
def test_c_chip_refuses_architectures(lib, tmp_path_factory, change, message):
    spec = dataclasses.replace(TINY_SPEC, name="tiny-other", **change)
    path = _compile(tmp_path_factory, spec, "int8", "other")
    RomImage.load(path).close()   # the Python side runs it
    with pytest.raises(CError, match=message) as e:
        CChip(lib, path, 8)
    assert e.value.rc == HC_ENOTSUPPORTED


def test_c_chip_refuses_block_formats(lib, tmp_path_factory):
    path = _compile(tmp_path_factory, TINY_SPEC, "q4k", "q4k")   # 64-wide rows: Q5_0 (a block format)
    with pytest.raises(CError, match="block formats") as e:
        CChip(lib, path, 8)
    assert e.value.rc == HC_ENOTSUPPORTED


def _copy(src, dst, edit):
    data = bytearray(Path(src).read_bytes())
    edit(data)
    Path(dst).write_bytes(bytes(data))
    return dst


def _table_span(path):
    with RomImage.load(path) as img:
        e = img.directory["c_table"]
    return e["offset"], e["nbytes"]


def test_old_and_corrupt_images(lib, tiny_image, tmp_path):
    """An image without a C table (as written before it existed) and corrupt files get a status and a
    message from the C side; the Python loader refuses the same corruptions."""
    path = tiny_image.path
    off, n = _table_span(path)
    rec = slice(ctable.RECORD_OFFSET, ctable.RECORD_OFFSET + ctable.RECORD.size)

    def no_table(d):
        d[rec] = bytes(ctable.RECORD.size)
    old = _copy(path, tmp_path / "old.hcrom", no_table)
    with pytest.raises(CError, match="no C table.*recompile") as e:
        CChip(lib, old, 8)
    assert e.value.rc == HC_EOLDIMAGE
    with pytest.raises(RomImageError, match="corrupt C table"):   # its directory still names one
        RomImage.load(old, verify=False)

    def flip(d):
        d[off + 50] ^= 1
    bad = _copy(path, tmp_path / "bad.hcrom", flip)
    with pytest.raises(CError, match="CRC-32") as e:
        CChip(lib, bad, 8)
    assert e.value.rc == HC_EFORMAT
    with pytest.raises(RomImageError, match="corrupt C table"):
        RomImage.load(bad, verify=False)

    def newer(d):
        d[ctable.RECORD_OFFSET + 8:ctable.RECORD_OFFSET + 12] = struct.pack("<I", ctable.VERSION + 1)
    with pytest.raises(CError, match="newer libhcemu") as e:
        CChip(lib, _copy(path, tmp_path / "newer.hcrom", newer), 8)
    assert e.value.rc == HC_ENOTSUPPORTED

    def truncate(d):
        del d[len(d) - 10:]
    with pytest.raises(CError, match="preamble says") as e:
        CChip(lib, _copy(path, tmp_path / "short.hcrom", truncate), 8)
    assert e.value.rc == HC_EFORMAT
    with pytest.raises(CError, match="cannot open") as e:
        CChip(lib, tmp_path / "missing.hcrom", 8)
    assert e.value.rc == HC_EIO


def test_c_table_is_the_directorys(tiny_image):
    """One source: the table in the file is c_table() of the directory, and describes its sections."""
    d = tiny_image.directory
    off, n = d["c_table"]["offset"], d["c_table"]["nbytes"]
    table = bytes(memoryview(tiny_image._mm)[off:off + n])
    assert table == ctable.c_table(tiny_image.spec, tiny_image.plan, tiny_image.die, d["tensors"], d["vectors"])
    assert n == ctable.table_nbytes(tiny_image.spec, len(d["tensors"]), len(d["vectors"]))
    head = ctable.HEADER.unpack_from(table)
    assert head[0] == ctable.MAGIC and head[1] == ctable.VERSION and head[2] == ctable.HEADER.size
    assert head[9:12] == (TINY_SPEC.n_layers, TINY_SPEC.d_model, TINY_SPEC.n_heads)
    first = ctable.TENSOR.unpack_from(table, n - len(d["vectors"]) * ctable.VECTOR.size
                                      - len(d["tensors"]) * ctable.TENSOR.size)
    assert first[0].rstrip(b"\0").decode() == d["tensors"][0]["name"]
    assert first[7:9] == (d["tensors"][0]["sections"]["codes"]["offset"], d["tensors"][0]["sections"]["codes"]["nbytes"])


def _cc():
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.fixture(scope="module")
def greedy(tmp_path_factory):
    """examples/c/greedy.c built by the system compiler against the built library (its Makefile's line)."""
    cc = _cc()
    if not cc:
        pytest.skip("no C compiler")
    lib = hcemu.get_library()
    exe = tmp_path_factory.mktemp("greedy") / "greedy"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Werror", "-I", hcemu.get_include(), str(EXAMPLE / "greedy.c"),
                    lib, f"-Wl,-rpath,{os.path.dirname(lib)}", "-o", str(exe)], check=True, capture_output=True)
    return exe


def _python_greedy(path, prompt, n, capacity):
    with RomImage.load(path) as img:
        gen = Chip(img, kv_capacity_tokens=capacity).generate(prompt, n)
    return gen.ids, (gen.prefill_events + gen.decode_events).total()


def _run_example(exe, path, prompt, n):
    out = subprocess.run([str(exe), str(path), str(n), *map(str, prompt)], check=True, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    totals = dict(line.split() for line in out.stderr.splitlines())
    return [int(x) for x in out.stdout.split()], {k: int(v) for k, v in totals.items()}


def test_example_greedy_tiny(greedy, tiny_image):
    prompt = [1, 5, 9, 13]
    ids, totals = _run_example(greedy, tiny_image.path, prompt, 6)
    want_ids, want_totals = _python_greedy(tiny_image.path, prompt, 6, len(prompt) + 6)
    assert ids == want_ids and totals == want_totals


@pytest.fixture(scope="module")
def smollm2_int4(smollm2_gguf, tmp_path_factory):
    from hcemu.rom.cache import ensure_image

    return ensure_image(smollm2_gguf, "int4", out=str(tmp_path_factory.mktemp("smol-c") / "smollm2-int4.hcrom"),
                        progress=False)


def test_example_greedy_smollm2(greedy, smollm2_int4):
    """The C program on the SmolLM2 image prints the ids the Python chip generates (`hcemu run`'s
    greedy loop), and counts the same events."""
    prompt = [1, 9690, 42, 2114, 314, 253, 7225, 30]
    ids, totals = _run_example(greedy, smollm2_int4, prompt, 8)
    want_ids, want_totals = _python_greedy(smollm2_int4, prompt, 8, len(prompt) + 8)
    assert ids == want_ids and totals == want_totals


def _edit_table(path, dst, edit):
    """A copy of image ``path`` with its C table edited by ``edit(table: bytearray)`` and re-signed (CRC-32),
    as the ``c_table`` fuzz target does: the checks behind the CRC are what is tested."""
    off, n = _table_span(path)

    def apply(d):
        table = bytearray(d[off:off + n])
        edit(table)
        d[off:off + n] = table
        d[ctable.RECORD_OFFSET:ctable.RECORD_OFFSET + ctable.RECORD.size] = ctable.record(bytes(table), off)
    return _copy(path, dst, apply)


_HEAD = {"n_regions": 20, "act_group_d": 40 + 8 * 8, "final_softcap": 40 + 88 + 32}   # byte offsets in HEADER


@pytest.mark.parametrize("what, edit, message", [
    ("regions", lambda t: struct.pack_into("<I", t, _HEAD["n_regions"], 2**31), "counts out of range"),
    ("group", lambda t: struct.pack_into("<q", t, _HEAD["act_group_d"], 16), "activation group 16"),
    ("softcap", lambda t: struct.pack_into("<d", t, _HEAD["final_softcap"], 5e-324), "soft-cap is out of range"),
    ("rope", lambda t: struct.pack_into("<d", t, ctable.HEADER.size + TINY_SPEC.n_layers * ctable.LAYER.size,
                                        float("nan")), "RoPE frequency 0 is nan"),
])
def test_c_table_fields_the_kernels_would_refuse_are_refused_at_open(lib, tiny_image, tmp_path, what, edit, message):
    """The c_table fuzz target found tables that opened and then failed inside a kernel with a bare
    status (a subnormal soft-cap is 0 as float32, an activation group that splits the head's tiles, a
    NaN RoPE frequency) or made a 288-byte allocation fail (an absurd region count): now each is a
    corrupt table at open, named."""
    bad = _edit_table(tiny_image.path, tmp_path / f"{what}.hcrom", edit)
    with pytest.raises(CError, match=message) as e:
        CChip(lib, bad, 8)
    assert e.value.rc == HC_EFORMAT


def test_c_messages_show_corrupt_names_as_printable_ascii(lib, tiny_image, tmp_path):
    """A tensor name of raw bytes (invalid UTF-8, control codes) reaches the message as '?'s."""
    def edit(t):
        at = len(t) - len(tiny_image.directory["vectors"]) * ctable.VECTOR.size \
            - len(tiny_image.directory["tensors"]) * ctable.TENSOR.size
        t[at:at + 3] = b"\xff\x07\xc3"
        struct.pack_into("<I", t, at + 64 + 12, 1)   # the block-format flag: refused with the name
    bad = _edit_table(tiny_image.path, tmp_path / "name.hcrom", edit)
    with pytest.raises(CError, match=r"matrix \?\?\?") as e:   # hc_last_error decodes as UTF-8
        CChip(lib, bad, 8)
    assert e.value.rc == HC_ENOTSUPPORTED
