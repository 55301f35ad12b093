"""Fuzz targets: each takes one ``bytes`` input and runs one case through a hostile-input boundary.

The outcome of every case is either *accepted* or a Python exception of a type documented for that
stage (docs/reliability.md "What users can expect"); anything else (another exception type, a message
that is empty, a crash, a hang) is a defect and raises :class:`Defect`. :func:`run_case` returns the
outcome label (``"accepted"`` or ``"<stage>:<ExceptionType>"``) that the drivers count.

Targets
-------
image_bytes   the ROM image loader on raw bytes: the seed images with byte mutations (checksums catch most)
image_struct  structure-aware: the directory JSON mutated (shapes, offsets, dtypes, formats, geometry, bank
              counts, spec and plan values, types, deletions), payload bytes too, then re-signed (section,
              directory and preamble SHA-256) so checksums do not catch it; an accepted image runs one
              prefill and one decode on a Chip
gguf_bytes    the GGUF source on raw bytes: the seed GGUF with byte mutations
adapter_bytes the LoRA adapter reader on raw bytes: seed adapter GGUFs (F32, F16, Q8_0) with byte mutations;
              an accepted adapter is made resident on a Chip and selected for one prefill and one decode
gguf_struct   structure-aware GGUF: header counts, metadata (types, values, huge array counts, corrupt
              vocabulary and merges), tensor infos (dimensions, types, offsets, huge counts) rewritten;
              an accepted file builds its tokenizer and, when it has every matrix, compiles and runs
kernels       every Cython wrapper of hcemu._core with drawn dtypes, shapes, strides, alignment, aliasing
              of outputs and inputs, negative and huge sizes; accepted results of the vector unit and the
              CIM products are compared with the numpy oracle (silently wrong numbers are defects)
cli           ``hcemu`` argument vectors drawn from each command's options, with hostile values and paths
c_table       the C library's loader (libhcemu, csrc/hc_lib.c): the C table of a seed image (int4, int8)
              with 1..6 hostile fields (an int32, int64 or float64 at an aligned offset: header counts,
              layer indices, RoPE frequencies, event rows, section offsets and sizes) or byte flips, its
              CRC-32 re-signed (in 7 cases of 8) so the checks behind the CRC are reached; through
              ctypes: open, create a chip, one prefill and one decode. Outcome: accepted, or a libhcemu
              status with a non-empty message (``c:<status>``)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import tempfile

import numpy as np

from fuzz.draw import Draw, mutate_bytes

TARGETS = ("image_bytes", "image_struct", "gguf_bytes", "gguf_struct", "adapter_bytes", "kernels", "cli", "c_table")


class Defect(Exception):
    """A case whose outcome is not documented: an unexpected exception type or an empty message."""


class Context:
    """Seeds and a scratch folder shared by the cases of one process."""

    def __init__(self, folder: str | None = None):
        from fuzz.seeds import make_seeds

        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.TemporaryDirectory(prefix="hcemu-fuzz-", dir=shm)
        self.scratch = self._tmp.name
        self.seeds = make_seeds(folder or os.path.join(self.scratch, "seeds"))
        with open(self.seeds["gguf"], "rb") as f:
            self.gguf_bytes = f.read()
        self.image_bytes = {}
        for plan, path in self.seeds["images"].items():
            with open(path, "rb") as f:
                self.image_bytes[plan] = f.read()
        self.adapter_bytes = {}
        for name, path in self.seeds["adapters"].items():
            with open(path, "rb") as f:
                self.adapter_bytes[name] = f.read()
        self._image = None
        self.clib = None   # libhcemu through ctypes, loaded by the first c_table case
        self.cache = os.path.join(self.scratch, "cache")  # the CLI's image cache while a case runs

    def image(self):
        """The seed int4 image, loaded once (the adapter cases run chips on it)."""
        if self._image is None:
            from hcemu.rom.image import RomImage

            self._image = RomImage.load(self.seeds["images"]["int4"])
        return self._image

    def path(self, name: str) -> str:
        return os.path.join(self.scratch, name)

    def write(self, name: str, data: bytes) -> str:
        p = self.path(name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
        self._tmp.cleanup()


def _documented():
    from hcemu.rom.image import RomImageError

    return {
        # stage -> exception types a user can expect there (docs/reliability.md)
        "load": (RomImageError, OSError),
        "chip": (ValueError, OverflowError),
        "gguf": (ValueError, OSError),
        "tokenizer": (ValueError,),
        "adapter": (ValueError, OSError),
        "compile": (ValueError, OSError),
        "kernel": (TypeError, ValueError, OverflowError, IndexError),
    }


class _Stage:
    """``with stage("load"):`` turns a documented exception into an outcome label and anything else
    into a Defect."""

    def __init__(self, name: str, allowed):
        self.name, self.allowed, self.outcome = name, allowed, None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            return False
        if issubclass(et, Defect):
            return False
        if issubclass(et, self.allowed) and not issubclass(et, (KeyError, AttributeError, ZeroDivisionError)) \
                and str(ev).strip():
            self.outcome = f"{self.name}:{et.__name__}"
            return True
        raise Defect(f"stage {self.name}: undocumented {et.__name__}: {ev!r}") from ev


RAW_TARGETS = ("image_bytes", "gguf_bytes", "adapter_bytes")
"""Targets whose input is the file itself (a coverage-guided engine mutates it directly)."""


def make_input(ctx: Context, target: str, random_bytes: bytes) -> bytes:
    """A case's input from random bytes: for the raw targets a seed file with byte mutations drawn from
    them (:func:`fuzz.draw.mutate_bytes`), for the others the bytes themselves."""
    if target not in RAW_TARGETS:
        return random_bytes
    draw = Draw(random_bytes)
    if target == "gguf_bytes":
        return mutate_bytes(ctx.gguf_bytes, draw)
    if target == "adapter_bytes":
        return mutate_bytes(ctx.adapter_bytes[draw.choice(sorted(ctx.adapter_bytes))], draw)
    return mutate_bytes(ctx.image_bytes[draw.choice(sorted(ctx.image_bytes))], draw)


def seed_inputs(ctx: Context, target: str) -> list:
    """The unmutated inputs of ``target`` (a coverage-guided engine's starting corpus)."""
    if target == "gguf_bytes":
        return [ctx.gguf_bytes]
    if target == "image_bytes":
        return [ctx.image_bytes[p] for p in sorted(ctx.image_bytes)]
    if target == "adapter_bytes":
        return [ctx.adapter_bytes[n] for n in sorted(ctx.adapter_bytes)]
    return [bytes(16)]


def run_case(ctx: Context, target: str, data: bytes) -> str:
    """Run one case of ``target`` on ``data`` (a file for the raw targets, choices for the others);
    the outcome label, or raise Defect."""
    return _TARGET_FUNCS[target](ctx, Draw(data[-64:] if target in RAW_TARGETS else data), data)


# ---------------------------------------------------------------- ROM images
def _run_image(ctx: Context, path: str) -> str:
    from hcemu.chip.chip import Chip
    from hcemu.rom.image import RomImage

    doc = _documented()
    with _Stage("load", doc["load"]) as st:
        img = RomImage.load(path)
    if st.outcome:
        return st.outcome
    with img:
        with _Stage("chip", doc["chip"]) as st:
            chip = Chip(img, kv_capacity_tokens=8)
            a = chip.prefill([1, 2, 3]).logits
            b = chip.decode(4).logits
            if a.shape != (1, img.spec.vocab_size) or b.shape != (1, img.spec.vocab_size):
                raise Defect(f"logits of shape {a.shape} / {b.shape} for a vocabulary of {img.spec.vocab_size}")
        if st.outcome:
            return st.outcome
        return "accepted" if np.isfinite(a).all() and np.isfinite(b).all() else "accepted:nonfinite-logits"


def image_bytes(ctx: Context, draw: Draw, data: bytes) -> str:
    return _run_image(ctx, ctx.write("case.hcrom", data))


_FOCUS = ("spec", "plan", "geometry", "address_map", "sections", "offset", "nbytes", "dtype", "shape", "fmt",
          "bits", "group", "asymmetric", "n", "k", "region", "banks", "bank_base_row", "rope_scaling",
          "rope_theta", "norm_eps", "n_layers", "d_model", "vocab_size", "tied_embeddings", "kv", "activations")
_DTYPES = ("uint8", "float16", "float32", "int8", "int64", "bool", "V0", "S0", "U3", "O", "<f2", ">f4", "f2",
           "complex128", "M8", "i", "", "not-a-dtype", "uint8,uint8", "(2,)f4", "V1", "float128")


def _paths(node, path=()):
    """Every (container, key, path) of a JSON tree, containers included."""
    out = []
    if isinstance(node, dict):
        for k in list(node):
            out.append((node, k, path + (k,)))
            out += _paths(node[k], path + (k,))
    elif isinstance(node, list):
        for i in range(len(node)):
            out.append((node, i, path + (i,)))
            out += _paths(node[i], path + (i,))
    return out


def _new_value(draw: Draw, old, key):
    kind = draw.int(0, 11)
    if key == "dtype" and kind < 6:
        return draw.choice(_DTYPES)
    if isinstance(old, bool) and kind < 4:
        return not old
    if isinstance(old, int) and not isinstance(old, bool) and kind < 6:
        return draw.choice((old + 1, old - 1, old * 2, -old, old + 4096, old - 4096, 0, old // 2,
                            draw.interesting_int()))
    if isinstance(old, float) and kind < 6:
        return draw.choice((old * 2, -old, old / 2, draw.float(), 0.0, 1.0))
    if isinstance(old, list) and kind < 6:
        new = list(old)
        op = draw.int(0, 3)
        if op == 0 and new:
            new.pop(draw.int(0, len(new) - 1))
        elif op == 1:
            new.insert(draw.int(0, len(new)), draw.interesting_int())
        elif op == 2 and new:
            i = draw.int(0, len(new) - 1)
            new[i] = _new_value(draw, new[i], key)
        else:
            new = new[::-1]
        return new
    return draw.choice((None, True, False, draw.interesting_int(), draw.float(), "", "x", draw.text(8), [],
                        {}, [1, 2], {"factor": 8.0}, "uint8", [[[[]]]], "int4"))


def mutate_json(d, draw: Draw) -> None:
    """1..6 mutations in place: replace a value (by its type, or with another type), delete a key or
    an item, duplicate or add one; half of them aimed at the fields that describe memory."""
    for _ in range(draw.int(1, 6)):
        paths = _paths(d)
        if not paths:
            return
        focus = [p for p in paths if p[1] in _FOCUS or (p[2] and p[2][-1] in _FOCUS)]
        container, key, _path = draw.choice(focus if focus and draw.bool() else paths)
        op = draw.int(0, 9)
        if op < 6:
            container[key] = _new_value(draw, container[key], key)
        elif op < 8:
            if isinstance(container, dict):
                del container[key]
            else:
                container.pop(key)
        elif op == 8 and isinstance(container, list):
            container.insert(key, json.loads(json.dumps(container[key])))
        elif isinstance(container, dict):
            container[draw.choice(("extra", "rope_type", "offsets", "values", "sha256", "aliases"))] = \
                _new_value(draw, None, "extra")


def resign(image: bytes, directory, payload: bytearray | None = None, dir_offset: int | None = None) -> bytes:
    """An image file with ``directory`` (any JSON value) as its directory and every checksum made to
    match: each section's SHA-256 over the bytes its offset and size name (where they are inside the
    payload), the directory's and the preamble's."""
    from hcemu.rom.image import _PRE, MAGIC, PREAMBLE_BYTES, VERSION

    magic, version, pre_bytes, dir_off, dir_len, file_bytes, _sha = _PRE.unpack_from(image)
    body = bytearray(image[:dir_off]) if payload is None else payload
    if isinstance(directory, dict):
        for group in ("tensors", "vectors"):
            items = directory.get(group)
            for t in items if isinstance(items, list) else ():
                secs = t.get("sections") if isinstance(t, dict) else None
                for sec in (secs.values() if isinstance(secs, dict) else ()):
                    if isinstance(sec, dict):
                        off, nb = sec.get("offset"), sec.get("nbytes")
                        if (isinstance(off, int) and isinstance(nb, int) and not isinstance(off, bool)
                                and 0 <= off <= off + nb <= len(body)):
                            sec["sha256"] = hashlib.sha256(body[off:off + nb]).hexdigest()
    _rewrite_c_table(body, directory)
    blob = json.dumps(directory).encode("utf-8")
    off = len(body) if dir_offset is None else dir_offset
    body = body[:off].ljust(off, b"\0")
    head = _PRE.pack(MAGIC, VERSION, PREAMBLE_BYTES, off, len(blob), off + len(blob), hashlib.sha256(blob).digest())
    body[:len(head) + 32] = head + hashlib.sha256(head).digest()
    return bytes(body) + blob


def _rewrite_c_table(body: bytearray, directory) -> None:
    """Where the edited directory still parses and its C table keeps its size, write the table the
    compiler would write for it (``c_table`` of the directory: section, record and directory entry),
    so that an edit of a spec or plan value reaches the loader's later checks and the chip instead of
    stopping at "corrupt C table". Anything else is left as it is (the loader refuses it)."""
    from hcemu.model.spec import ModelSpec
    from hcemu.rom import ctable
    from hcemu.rom.die import DieAssignment
    from hcemu.rom.image import plan_from_dict

    try:
        entry = directory["c_table"]
        off, nbytes = entry["offset"], entry["nbytes"]
        spec = ModelSpec.from_dict(directory["spec"])
        # the table's size from its counts before it is built (a spec edited to 7e9 layers or a huge
        # head_dim must not make the harness build a table of that size)
        if ctable.table_nbytes(spec, len(directory["tensors"]), len(directory["vectors"])) != nbytes:
            return
        die = DieAssignment.from_dict(directory["die"]) if "die" in directory else DieAssignment.whole(spec.n_layers)
        table = ctable.c_table(spec, plan_from_dict(directory["plan"]), die, directory["tensors"],
                               directory["vectors"])
    except Exception:   # a directory the compiler could not have written: the loader says why
        return
    if not (isinstance(off, int) and isinstance(nbytes, int) and len(table) == nbytes
            and 0 <= off <= off + nbytes <= len(body)):
        return
    body[off:off + nbytes] = table
    body[ctable.RECORD_OFFSET:ctable.RECORD_OFFSET + ctable.RECORD.size] = ctable.record(table, off)
    entry.update(ctable.directory_entry(table, off))


def _directory(image: bytes):
    from hcemu.rom.image import _PRE

    _m, _v, _p, off, ln, _f, _s = _PRE.unpack_from(image)
    return json.loads(image[off:off + ln]), off


def _plausible_edit(d, draw: Draw) -> None:
    """Edits that keep the image well formed (spec values the shapes do not depend on, plan activations
    and KV format, report fields), so that accepted images reach the chip."""
    spec, plan = d["spec"], d["plan"]
    for _ in range(draw.int(1, 3)):
        k = draw.int(0, 7)
        if k == 0:
            spec["rope_theta"] = draw.choice((1.0001, 2.0, 500000.0, 1e12, 1e300, 10000))
        elif k == 1:
            spec["norm_eps"] = draw.choice((1e-30, 1e-6, 0.5, 0.999))
        elif k == 2:
            spec["rope_scaling"] = draw.choice((None, {"factor": 1.0, "low_freq_factor": 0.5, "high_freq_factor": 1.0,
                                                       "original_context": 1},
                                                {"factor": 1e6, "low_freq_factor": 1e-9, "high_freq_factor": 1e9,
                                                 "original_context": 2**40}))
        elif k == 3:
            spec["max_context"] = draw.choice((1, 2, 3, 8, 2**40))
        elif k == 4:
            plan["activations"] = draw.choice(({"granularity": "token", "group": 0},
                                               {"granularity": "block", "group": 32},
                                               {"granularity": "block", "group": 64}))
        elif k == 5:
            plan["kv"] = draw.choice(("int8", "fp16"))
        elif k == 6:
            spec["name"], d["source"] = draw.text(8), draw.text(8)
        else:
            d["tensors"][draw.int(0, len(d["tensors"]) - 1)]["rmse"] = draw.choice((0, 1e300, -1.0))


def image_struct(ctx: Context, draw: Draw, data: bytes) -> str:
    seed = ctx.image_bytes[draw.choice(sorted(ctx.image_bytes))]
    directory, dir_off = _directory(seed)
    if draw.chance(4):
        _plausible_edit(directory, draw)
    else:
        mutate_json(directory, draw)
    payload = None
    if draw.chance(4):  # payload bytes too (scales, codes, norm vectors)
        payload = bytearray(seed[:dir_off])
        for _ in range(draw.int(1, 4)):
            i = draw.int(4096, dir_off - 8)
            payload[i:i + 2] = draw.choice((b"\x00\x7c", b"\x00\xfc", b"\x01\x7e", b"\xff\x7b", draw.bytes(2)))
    if draw.chance(8):
        directory = draw.choice(([directory], "x", None, 1, json.loads("[" * 12 + "]" * 12), {"spec": directory}))
    if draw.chance(16):  # a directory nested past the recursion limit
        directory = json.loads("[" * 200 + "]" * 200) if draw.bool() else {"spec": directory}
    dir_offset = None if not draw.chance(8) else draw.choice((0, 4096, dir_off - 4096, dir_off + 1))
    blob = resign(seed, directory, payload, dir_offset)
    if draw.chance(32):
        blob = blob.replace(b"[[[[", b"[" * 20000, 1) if b"[[[[" in blob else blob
    return _run_image(ctx, ctx.write("case.hcrom", blob))


# ---------------------------------------------------------------- GGUF
def _run_gguf(ctx: Context, path: str, draw: Draw) -> str:
    from hcemu.chip.chip import Chip
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.tokenizer import Tokenizer
    from hcemu.rom.image import RomImage, compile_model

    doc = _documented()
    with _Stage("gguf", doc["gguf"]) as st:
        src = GGUFSource(path)
    if st.outcome:
        return st.outcome
    with src:
        with _Stage("tokenizer", doc["tokenizer"]) as st:
            tok = Tokenizer.from_gguf(src)
            ids = tok.encode(draw.text(12) + " 12 ab")
            tok.decode(ids)
        tok_outcome = st.outcome
        with _Stage("compile", doc["compile"]) as st:
            compile_model(src, draw.choice(("int4", "int8", "int4-sym")), ctx.path("gguf.hcrom"), progress=False)
        if st.outcome:
            return st.outcome
    with _Stage("load", doc["load"]) as st:
        img = RomImage.load(ctx.path("gguf.hcrom"))
    if st.outcome:
        raise Defect(f"an image compiled from an accepted GGUF does not load: {st.outcome}")
    with img:
        with _Stage("chip", doc["chip"]) as st:
            chip = Chip(img, kv_capacity_tokens=8)
            chip.prefill([0, 1, 2])
            chip.decode(3)
    return st.outcome or tok_outcome or "accepted"


def gguf_bytes(ctx: Context, draw: Draw, data: bytes) -> str:
    return _run_gguf(ctx, ctx.write("case.gguf", data), draw)


# ---------------------------------------------------------------- LoRA adapters
def adapter_bytes(ctx: Context, draw: Draw, data: bytes) -> str:
    from hcemu.chip.chip import Chip
    from hcemu.model.lora import load_lora

    doc = _documented()
    img = ctx.image()
    with _Stage("adapter", doc["adapter"]) as st, np.errstate(all="ignore"):  # NaN Q8_0 scales dequantize
        adapter = load_lora(ctx.write("case.gguf", data), img.spec, scale=draw.choice((1.0, 0.5, -2.0)))
    if st.outcome:
        return st.outcome
    with _Stage("chip", doc["chip"]) as st:
        chip = Chip(img, kv_capacity_tokens=8)
        name = chip.load_adapter(adapter, fmt=draw.choice(("int8", "fp16"))).name
        a = chip.prefill([1, 2, 3], adapter=name).logits
        b = chip.decode(4, adapter=name).logits
        if a.shape != (1, img.spec.vocab_size) or b.shape != (1, img.spec.vocab_size):
            raise Defect(f"logits of shape {a.shape} / {b.shape} for a vocabulary of {img.spec.vocab_size}")
    if st.outcome:
        return st.outcome
    return "accepted" if np.isfinite(a).all() and np.isfinite(b).all() else "accepted:nonfinite-logits"


class _Gguf:
    """A GGUF file as values that can be rewritten freely, then serialized without checks."""

    SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def __init__(self, data: bytes):
        from gguf import GGUFReader

        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(data)
            f.flush()
            r = GGUFReader(f.name)
            self.version = 3
            self.kv = []   # (key, type, value) with value a python scalar, str, or (item type, list)
            for key, field in r.fields.items():
                if key.startswith("GGUF."):
                    continue
                t = int(field.types[0])
                if t == 9:
                    self.kv.append((key, 9, (int(field.types[-1]), list(field.contents()))))
                else:
                    self.kv.append((key, t, field.contents()))
            self.tensors = []  # [name, dims, type, offset]
            for t in r.tensors:
                self.tensors.append([t.name, [int(x) for x in t.shape], int(t.tensor_type),
                                     int(t.data_offset) - int(r.data_offset)])
            self.data = bytes(np.asarray(r.data[r.data_offset:]))
        self.alignment = 32
        self.counts = None   # (n_tensors, n_kv) to write instead of the true ones

    @staticmethod
    def _str(s) -> bytes:
        b = s if isinstance(s, bytes) else str(s).encode("utf-8", errors="surrogatepass")
        return struct.pack("<Q", len(b)) + b

    def _value(self, t, v) -> bytes:
        if t == 8:
            return self._str(v)
        if t == 9:
            it, items = v
            head = struct.pack("<IQ", it, len(items) if not isinstance(items, int) else items)
            if isinstance(items, int):   # a claimed count with no elements behind it
                return head
            return head + b"".join(self._value(it, x) for x in items)
        fmt = self.SCALAR.get(t)
        if fmt is None:
            return b""
        try:
            return struct.pack("<" + fmt, v)
        except (struct.error, TypeError, OverflowError):
            return struct.pack("<" + fmt, 0)

    def serialize(self) -> bytes:
        n_t, n_kv = self.counts or (len(self.tensors), len(self.kv))
        out = [b"GGUF", struct.pack("<IQQ", self.version, n_t % 2**64, n_kv % 2**64)]
        for key, t, v in self.kv:
            out.append(self._str(key) + struct.pack("<I", t % 2**32) + self._value(t, v))
        for name, dims, ty, off in self.tensors:
            out.append(self._str(name) + struct.pack("<I", len(dims))
                       + b"".join(struct.pack("<Q", d % 2**64) for d in dims)
                       + struct.pack("<IQ", ty % 2**32, off % 2**64))
        head = b"".join(out)
        pad = -len(head) % self.alignment
        return head + b"\0" * pad + self.data


def _mutate_gguf(g: _Gguf, draw: Draw) -> None:
    for _ in range(draw.int(1, 4)):
        what = draw.int(0, 11)
        if what == 0:
            g.counts = (draw.choice((len(g.tensors) + 1, 0, 2**40, 10**12, 2**64 - 1, draw.interesting_int())),
                        draw.choice((len(g.kv), len(g.kv) + 1, 0, 2**63, draw.interesting_int())))
        elif what == 1:
            g.version = draw.choice((1, 2, 4, 0, 2**31, 3 << 16))
        elif what <= 4 and g.kv:   # a metadata value
            i = draw.int(0, len(g.kv) - 1)
            key, t, v = g.kv[i]
            op = draw.int(0, 5)
            if op == 0:
                g.kv[i] = (key, draw.choice((4, 5, 6, 7, 8, 10, 12, 13, 99)), draw.choice(
                    (draw.interesting_int(), draw.float(), "x", True)))
            elif op == 1 and t == 9:   # a huge claimed count
                n_items = v[1] if isinstance(v[1], int) else len(v[1])   # an earlier edit may have claimed one
                g.kv[i] = (key, 9, (v[0], draw.choice((10**12, 2**32, 2**63, n_items + 1))))
            elif op == 2 and t == 9 and not isinstance(v[1], int):
                items = list(v[1])
                if items:
                    j = draw.int(0, len(items) - 1)
                    items[j] = draw.choice((draw.text(6), "", "\u0120a \u0120b", "nonexistent merge",
                                            draw.interesting_int(), items[0])) if v[0] == 8 else draw.interesting_int()
                g.kv[i] = (key, 9, (v[0], items))
            elif op == 3:
                del g.kv[i]
            elif op == 4:
                g.kv.append(g.kv[i])   # a duplicate key
            else:
                g.kv[i] = (key, t, draw.interesting_int() if isinstance(v, int) else
                           (draw.float() if isinstance(v, float) else v))
        elif what <= 6:   # llama.* and tokenizer keys with hostile values
            key = draw.choice(("llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                               "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.freq_base",
                               "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
                               "llama.context_length", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                               "general.alignment", "general.architecture", "tokenizer.ggml.pre",
                               "tokenizer.ggml.model", "llama.rope.scaling.type", "llama.rope.scaling.factor"))
            value = draw.choice((draw.interesting_int(), draw.float(), "llama", "gpt2", "x", -1, 0, 10**9))
            t = 8 if isinstance(value, str) else (6 if isinstance(value, float) else (11 if value < 0 else 10))
            g.kv = [kv for kv in g.kv if kv[0] != key] + [(key, t, value)]
        elif what <= 9 and g.tensors:   # a tensor info
            tinfo = g.tensors[draw.int(0, len(g.tensors) - 1)]
            op = draw.int(0, 5)
            if op == 0:
                tinfo[1] = [draw.choice((0, 1, 32, 10**12, 2**32, 2**63, draw.interesting_int())) for _ in
                            range(draw.int(0, 6))]
            elif op == 1 and tinfo[1]:
                tinfo[1][draw.int(0, len(tinfo[1]) - 1)] = draw.interesting_int()
            elif op == 2:
                tinfo[2] = draw.choice((0, 1, 2, 3, 6, 7, 8, 10, 12, 30, 31, 39, 40, 1000, 2**31))
            elif op == 3:
                tinfo[3] = draw.choice((tinfo[3] + 1, tinfo[3] + 32, 2**40, len(g.data), len(g.data) - 32, 0))
            elif op == 4:
                tinfo[0] = draw.choice(("token_embd.weight", "output.weight", "blk.0.attn_q.weight",
                                        "rope_freqs.weight", "x", ""))
            else:
                g.tensors.remove(tinfo)
        elif what == 10:
            g.alignment = draw.choice((1, 8, 64))
        else:
            g.data = mutate_bytes(g.data, draw, 2)


_GGUF_CACHE = {}


def gguf_struct(ctx: Context, draw: Draw, data: bytes) -> str:
    if "seed" not in _GGUF_CACHE:
        _GGUF_CACHE["seed"] = ctx.gguf_bytes
    g = _Gguf(_GGUF_CACHE["seed"])
    _mutate_gguf(g, draw)
    return _run_gguf(ctx, ctx.write("case.gguf", g.serialize()), draw)


# ---------------------------------------------------------------- kernel wrappers
_DTYPES_K = (np.float32, np.float32, np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32, np.int64,
             np.uint16, np.bool_, np.complex64, object)


def _array(draw: Draw, dtype, shape, fill: str = "normal"):
    """An array of ``dtype`` and ``shape`` laid out as drawn: C order, Fortran order, a strided or
    transposed view, read-only, or misaligned (a view at an odd byte offset)."""
    shape = tuple(shape)
    n = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(draw.int(0, 255))
    if np.dtype(dtype).kind == "f":
        vals = rng.standard_normal(n).astype(dtype)
        if fill == "hostile" and n:
            vals[rng.integers(0, n)] = draw.choice((np.nan, np.inf, -np.inf, 1e38, 0.0))
    elif dtype is object:
        vals = np.array([None] * n, dtype=object)
    elif np.dtype(dtype).kind == "b":
        vals = rng.integers(0, 2, n).astype(dtype)
    elif np.dtype(dtype).kind == "c":
        vals = rng.standard_normal(n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        vals = rng.integers(max(info.min, -100), min(info.max, 100), n, endpoint=True).astype(dtype)
    layout = draw.int(0, 9)
    if layout == 6 and dtype is not object and n:   # misaligned
        itemsize = np.dtype(dtype).itemsize
        buf = np.zeros(n * itemsize + 8, np.uint8)
        off = draw.int(1, max(1, itemsize - 1)) if itemsize > 1 else 1
        a = np.frombuffer(buf.data, dtype=dtype, count=n, offset=off).reshape(shape)
        a[...] = vals.reshape(shape)
        return a
    a = vals.reshape(shape)
    if layout == 7:
        a = np.asfortranarray(a)
    elif layout == 8 and a.ndim:
        big = np.repeat(a, 2, axis=-1)
        a = big[..., ::2]
    elif layout == 9:
        a = a.copy()
        a.flags.writeable = False
    return a


def _shape(draw: Draw, ndim: int):
    return tuple(draw.choice((0, 1, 2, 3, 16, 31, 32, 33, 64)) for _ in range(ndim))


def _scalar(draw: Draw, good):
    return good if draw.int(0, 3) else draw.choice((draw.interesting_int(), draw.float(), None, "x", -1, 0, 2**70))


def _alias(draw: Draw, out, inputs):
    """Maybe replace ``out`` by an input (in place), an overlapping view of one, or a view of another dtype."""
    k = draw.int(0, 7)
    if k == 0 and inputs:
        return draw.choice(inputs)
    if k == 1 and inputs:
        src = draw.choice(inputs)
        if isinstance(src, np.ndarray) and src.ndim and src.shape[0] > 1:
            shifted = np.concatenate([src, src[:1]])   # same shape as src, shifted one row in one buffer
            shifted[1:] = src
            return shifted[1:] if draw.bool() else shifted[:-1]
    if k == 2 and inputs:
        src = draw.choice(inputs)
        if isinstance(src, np.ndarray) and src.dtype.itemsize and src.nbytes % 4 == 0 and src.flags.c_contiguous \
                and src.size and out is not None and isinstance(out, np.ndarray):
            try:
                v = src.view(np.float32)
                if v.size >= out.size:
                    return v.reshape(-1)[:out.size].reshape(out.shape)
            except ValueError:
                pass
    return out


def _vector_case(draw: Draw):
    from hcemu import _core
    from hcemu.kernels import vector_ref as ref

    which = draw.choice(("rmsnorm", "rope", "silu_mul", "gelu_mul", "add_", "add_rows_", "scale_", "softcap_",
                         "sigmoid_", "axpy_rows_", "moe_route", "exp_f32", "f32_to_f16_bits"))
    f32 = lambda: np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K)  # noqa: E731
    m, d = draw.choice((0, 1, 2, 3, 5)), draw.choice((0, 1, 2, 8, 16, 32, 33))
    if which == "rmsnorm":
        x = _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, draw.int(0, 3)), draw.choice(("normal", "hostile")))
        w = _array(draw, f32(), (d,) if draw.int(0, 5) else _shape(draw, draw.int(0, 2)))
        eps = _scalar(draw, 1e-5)
        out = _alias(draw, None, [x, w]) if draw.bool() else (np.empty_like(x) if isinstance(x, np.ndarray) else None)
        x0, w0 = np.array(x, copy=True), np.array(w, copy=True)
        y = _core.rmsnorm(x, w, eps, out)
        return lambda: np.array_equal(y, ref.rmsnorm_ref(x0, w0, eps), equal_nan=True)
    if which == "rope":
        t, heads, hd = m, draw.choice((0, 1, 2, 3)), draw.choice((0, 1, 2, 4, 16, 17))
        x = _array(draw, f32(), (t, heads, hd) if draw.int(0, 5) else _shape(draw, draw.int(0, 4)))
        cos = _array(draw, f32(), (t, hd // 2) if draw.int(0, 5) else _shape(draw, 2))
        sin = _array(draw, f32(), (t, hd // 2) if draw.int(0, 5) else _shape(draw, 2))
        out = _alias(draw, None, [x, cos, sin])
        x0, c0, s0 = (np.array(a, copy=True) for a in (x, cos, sin))
        style = draw.choice(("normal", "neox", "normal", "x"))
        y = _core.rope(x, cos, sin, out, style)
        return lambda: np.array_equal(y, ref.rope_ref(x0, c0, s0, style), equal_nan=True)
    if which in ("silu_mul", "gelu_mul"):
        g = _array(draw, f32(), (m, d), draw.choice(("normal", "hostile")))
        u = _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, 2))
        out = _alias(draw, None, [g, u])
        g0, u0 = np.array(g, copy=True), np.array(u, copy=True)
        y = getattr(_core, which)(g, u, out)
        oracle = ref.silu_mul_ref if which == "silu_mul" else ref.gelu_mul_ref
        return lambda: np.array_equal(y, oracle(g0, u0), equal_nan=True)
    if which in ("scale_", "softcap_", "sigmoid_"):
        x = _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, draw.int(0, 3)), "hostile")
        arg = _scalar(draw, draw.choice((0.5, 30.0)))
        x0 = np.array(x, copy=True)
        if which == "sigmoid_":
            _core.sigmoid_(x)
            return None
        getattr(_core, which)(x, arg)
        if which == "softcap_":
            return lambda: np.array_equal(x, ref.softcap_ref(x0, arg), equal_nan=True)
        return lambda: np.array_equal(x, x0 * np.float32(arg), equal_nan=True)
    if which == "add_rows_":
        x = _array(draw, f32(), (m, d))
        b = _alias(draw, _array(draw, f32(), (d,) if draw.int(0, 5) else _shape(draw, 1)), [x])
        x0, b0 = np.array(x, copy=True), np.array(b, copy=True)
        _core.add_rows_(x, b)
        return lambda: np.array_equal(x, x0 + b0[None, :], equal_nan=True)
    if which == "axpy_rows_":
        y_ = _array(draw, f32(), (m, d))
        x = _alias(draw, _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, 2)), [y_])
        w = _array(draw, f32(), (m,) if draw.int(0, 5) else _shape(draw, 1))
        y0, x0, w0 = (np.array(a, copy=True) for a in (y_, x, w))
        _core.axpy_rows_(y_, x, w)
        return lambda: np.array_equal(y_, y0 + x0 * w0[:, None], equal_nan=True)
    if which == "moe_route":
        logits = _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, 2), draw.choice(("normal", "hostile")))
        k, norm, scale = _scalar(draw, draw.choice((1, 2))), draw.bool(), _scalar(draw, 1.0)
        l0 = np.array(logits, copy=True)
        sel, wts = _core.moe_route(logits, k, norm, scale)
        want = ref.moe_route_ref(l0, k, norm, scale)
        return lambda: np.array_equal(sel, want[0]) and np.array_equal(wts, want[1])
    if which == "add_":
        x = _array(draw, f32(), (m, d))
        y_in = _alias(draw, _array(draw, f32(), (m, d) if draw.int(0, 5) else _shape(draw, 2)), [x])
        x0, y0 = np.array(x, copy=True), np.array(y_in, copy=True)
        r = _core.add_(x, y_in)
        return lambda: np.array_equal(r, ref.add_ref(x0, y0), equal_nan=True)
    x = _array(draw, draw.choice(_DTYPES_K), _shape(draw, draw.int(0, 3)), "hostile")
    getattr(_core, which)(x)
    return None


def _packed(draw: Draw):
    from hcemu.formats import WeightFormat
    from hcemu.layout import pack

    fmt = draw.choice((WeightFormat(8, 32), WeightFormat(8, 0), WeightFormat(4, 32), WeightFormat(4, 32, True),
                       WeightFormat(4, 64), "mxfp4", "nvfp4", "q4_k", "q6_k", "q5_1", "q3_k"))
    n, k = draw.choice((1, 16, 17, 32)), draw.choice((32, 64))
    rng = np.random.default_rng(draw.int(0, 255))
    if isinstance(fmt, str):   # a block format, quantized from floats by the compiler's own routine
        from hcemu.rom.quantize import quantize_matrix

        fmt = WeightFormat.of_kind(fmt)
        k = max(k, fmt.block.super_k)
        pw = quantize_matrix((rng.standard_normal((n, k)) * 0.1).astype(np.float32), fmt, "fuzz")
        return _hostile_fields(draw, pw)
    lo, hi = (0, 15) if fmt.asymmetric else ((-8, 7) if fmt.bits == 4 else (-128, 127))
    q = rng.integers(lo, hi, (n, k), endpoint=True)
    blocks = (n,) if fmt.per_channel else (n, k // fmt.group)
    d = (rng.random(blocks) * 0.01 + 1e-3).astype(np.float16)
    m = (rng.standard_normal(blocks) * 0.01).astype(np.float16) if fmt.asymmetric else None
    return _hostile_fields(draw, pack(q, d, fmt, m))


def _hostile_fields(draw: Draw, pw):
    """``pw``, or (one case in six) a copy with one field made hostile: an array of another dtype or
    shape, a huge or negative size, a format of another kind, a NaN tensor scale."""
    import dataclasses

    from hcemu.formats import WeightFormat

    if draw.chance(6):
        field = draw.choice(("codes", "scales", "offsets", "n", "k", "fmt", "tensor_scale"))
        if field == "tensor_scale":
            pw = dataclasses.replace(pw, tensor_scale=draw.choice((float("nan"), float("inf"), -1.0, 0.0, "x", 2.0)))
        elif field in ("n", "k"):
            pw = dataclasses.replace(pw, **{field: draw.interesting_int()})
        elif field == "fmt":
            pw = dataclasses.replace(pw, fmt=draw.choice((None, "int8", WeightFormat(8, 64))))
        else:
            a = getattr(pw, field)
            shape = a.shape if a is not None and draw.bool() else _shape(draw, draw.int(1, 3))
            pw = dataclasses.replace(pw, **{field: _array(draw, draw.choice((np.uint8, np.float16, np.float32)), shape)})
    return pw


def _cim_case(draw: Draw):
    from hcemu import _core
    from hcemu.events import Events
    from hcemu.kernels import cim_ref

    pw = _packed(draw)
    which = draw.choice(("quantize_act", "cim_matmul", "cim_linear", "stream_read", "CimWeights"))
    m = draw.choice((0, 1, 2, 3, 65))
    k = pw.k if isinstance(pw.k, int) and 0 < pw.k < 4096 and draw.int(0, 5) else draw.choice((0, 1, 32, 33))
    if which == "CimWeights":
        _core.CimWeights(pw)
        return None
    if which == "stream_read":
        _core.stream_read(_array(draw, draw.choice((np.uint8, np.uint8, np.int8, np.float32)),
                                 _shape(draw, draw.int(0, 2))), _scalar(draw, 1))
        return None
    x = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K), (m, k), draw.choice(("normal", "hostile")))
    group = _scalar(draw, draw.choice((32, k if k else 1)))
    if which == "quantize_act":
        ng = k // group if isinstance(group, int) and group > 0 and k else 1
        q = _array(draw, np.int8 if draw.int(0, 5) else draw.choice(_DTYPES_K), (m, k))
        sc = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K), (m, ng))
        q = _alias(draw, q, [x])
        sc = _alias(draw, sc, [x, q])
        x0 = np.array(x, copy=True)
        _core.quantize_act(x, group, q, sc)
        return lambda: all(np.array_equal(a, b) for a, b in zip((q, sc), cim_ref.quantize_activations_ref(x0, group)))
    events = Events(2) if draw.bool() else draw.choice((None, object(), Events(0), "x"))
    region = _scalar(draw, draw.choice((0, 1, "head", "embed")))
    threads = _scalar(draw, draw.choice((1, 2)))
    if which == "cim_linear":
        out = _alias(draw, None, [x, pw.codes, pw.scales])
        x0 = np.array(x, copy=True)
        y = _core.cim_linear(x, group, pw, out=out, n_threads=threads, events=events, region=region)
        return lambda: np.array_equal(y, cim_ref.cim_linear_ref(x0, group, pw))
    q, sc = cim_ref.quantize_activations_ref(np.nan_to_num(np.asarray(x, np.float32)), group) if draw.int(0, 3) else (
        _array(draw, draw.choice((np.int8, np.uint8, np.float32)), (m, k)),
        _array(draw, draw.choice((np.float32, np.float64)), (m, 1)))
    q, sc = _array_like(draw, q), _array_like(draw, sc)
    out = _alias(draw, None, [q, sc, pw.codes, pw.scales])
    dots = None
    if draw.chance(4):
        dots = _alias(draw, _array(draw, np.int32, (m, _rows(pw), _blocks(pw))), [q, sc, out])
    q0, s0 = np.array(q, copy=True), np.array(sc, copy=True)
    y = _core.cim_matmul(q, sc, pw, out=out, n_threads=threads, events=events, region=region, dots=dots,
                         isa=draw.choice((None, None, None, "scalar", "bogus")))
    return lambda: np.array_equal(y, cim_ref.cim_matmul_ref(q0, s0, pw))


def _rows(pw):
    """Rows of ``dots`` for ``pw``: its padded rows, or 16 when a hostile ``n`` would make the harness
    itself allocate gigabytes."""
    return -(-pw.n // 16) * 16 if isinstance(pw.n, int) and 0 < pw.n <= 4096 else 16


def _blocks(pw):
    codes = pw.codes
    return codes.shape[1] if isinstance(codes, np.ndarray) and codes.ndim > 1 and codes.shape[1] <= 4096 else 1


def _array_like(draw: Draw, a):
    """``a`` or a hostile layout of it (same values)."""
    if not isinstance(a, np.ndarray) or not draw.chance(3):
        return a
    b = _array(draw, a.dtype.type, a.shape)
    try:
        b[...] = a if b.flags.writeable else b
    except ValueError:
        pass
    return b


def _lora_case(draw: Draw):
    """CimAdapter (int8 PackedWeights or fp16 arrays, hostile fields) and adapter_apply (drawn q, act_scales,
    x, y, col; y aliasing an input); an accepted apply must equal lora_ref bit for bit."""
    from hcemu import _core
    from hcemu.formats import adapter_weight_format
    from hcemu.kernels.cim_ref import quantize_activations_ref
    from hcemu.kernels.lora_ref import adapter_apply_ref
    from hcemu.rom.quantize import quantize_matrix

    n, k, r = draw.choice((1, 16, 17, 32)), draw.choice((32, 64)), draw.choice((1, 4, 16, 32, 33))
    rng = np.random.default_rng(draw.int(0, 255))
    a32 = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    b32 = (rng.standard_normal((n, r)) * 0.3).astype(np.float32)
    if draw.bool():
        a = _hostile_fields(draw, quantize_matrix(a32, adapter_weight_format(k)))
        b = _hostile_fields(draw, quantize_matrix(b32, adapter_weight_format(r)))
    else:
        a = _array(draw, np.float16 if draw.int(0, 5) else draw.choice(_DTYPES_K), (r, k) if draw.int(0, 5) else _shape(draw, draw.int(0, 3)))
        b = _array(draw, np.float16 if draw.int(0, 5) else draw.choice(_DTYPES_K), (n, r) if draw.int(0, 5) else _shape(draw, 2))
    ad = _core.CimAdapter(a, b)
    if draw.chance(5):
        return None
    m = draw.choice((0, 1, 2, 3, 65))
    x = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K), (m, k) if draw.int(0, 5) else _shape(draw, 2),
               draw.choice(("normal", "hostile")))
    if ad.fmt == "int8" and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == k and np.isfinite(x).all():
        q, sc = quantize_activations_ref(np.ascontiguousarray(x), draw.choice((32, k)))
        q, sc = _array_like(draw, q), _array_like(draw, sc)
    else:
        q = _array(draw, np.int8 if draw.int(0, 5) else draw.choice(_DTYPES_K), _shape(draw, 2))
        sc = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K), _shape(draw, 2))
    col = _scalar(draw, draw.choice((0, 3)))
    y = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K), (m, n + 7) if draw.int(0, 5) else _shape(draw, 2))
    y = _alias(draw, y, [x, sc])
    copies = [None if v is None else np.array(v, copy=True) for v in (q, sc, x, y)]
    ad_a, ad_b = ad.a, ad.b
    _core.adapter_apply(ad, q, sc, x, y, col)
    if ad.fmt == "int8":
        copies[2] = None
    else:
        copies[0] = copies[1] = None
    want = adapter_apply_ref(ad_a, ad_b, *copies, col)
    return lambda: np.array_equal(np.asarray(y), want, equal_nan=True)


def _attn_case(draw: Draw):
    from hcemu import _core
    from hcemu.events import Events
    from hcemu.kernels import attention_ref

    L, hkv, cap, hd = draw.choice((1, 2)), draw.choice((1, 2)), draw.choice((1, 4, 8)), draw.choice((2, 16, 32))
    i8 = draw.bool()
    which = draw.choice(("KVStore", "append", "attend", "reset", "filled", "attn_qk_i8"))
    if which == "attn_qk_i8":
        _core.attn_qk_i8(_array(draw, draw.choice((np.int8, np.float32)), _shape(draw, 1)),
                         _array(draw, draw.choice((np.int8, np.int8, np.uint8)), _shape(draw, 2)),
                         draw.choice(("scalar", "avx2", "bogus", None)))
        return None
    shape = (L, hkv, cap, hd)
    if which == "KVStore":
        arrays = [_array(draw, draw.choice((np.int8, np.int8, np.uint16, np.float32)),
                         shape if draw.int(0, 4) else _shape(draw, draw.int(0, 4))) for _ in range(2)]
        scales = [_array(draw, draw.choice((np.uint16, np.uint16, np.float16)),
                         shape[:3] if draw.int(0, 4) else _shape(draw, 3)) for _ in range(2)]
        if draw.chance(4):
            arrays[1] = arrays[0]
        _core.KVStore(*arrays, *(scales if i8 else (None, None)))
        return None
    if i8:
        store = _core.KVStore(np.zeros(shape, np.int8), np.zeros(shape, np.int8), np.zeros(shape[:3], np.uint16),
                              np.zeros(shape[:3], np.uint16))
    else:
        store = _core.KVStore(np.zeros(shape, np.uint16), np.zeros(shape, np.uint16))
    layer = _scalar(draw, 0)
    if which == "reset":
        store.reset(_scalar(draw, 1))
        return None
    if which == "filled":
        store.filled(layer)
        return None
    t = draw.choice((0, 1, 2, 3))
    k = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K),
               (t, hkv, hd) if draw.int(0, 5) else _shape(draw, draw.int(0, 4)), draw.choice(("normal", "hostile")))
    v = _array(draw, np.float32, (t, hkv, hd)) if draw.int(0, 5) else k
    events = Events(L) if draw.bool() else draw.choice((None, object()))
    if which == "append":
        store.append(layer, k, v, events, _scalar(draw, None))
        return None
    ok = store.append(0, np.ones((min(t, cap), hkv, hd), np.float32), np.ones((min(t, cap), hkv, hd), np.float32))
    nh = hkv * draw.choice((1, 2))
    q = _array(draw, np.float32 if draw.int(0, 5) else draw.choice(_DTYPES_K),
               (max(ok, 0), nh, hd) if draw.int(0, 5) else _shape(draw, draw.int(0, 4)))
    out = _alias(draw, None, [q])
    start = _scalar(draw, 0)
    opts = {} if draw.bool() else {"scale": _scalar(draw, 0.25), "softcap": _scalar(draw, 0.0),
                                   "window": _scalar(draw, draw.choice((0, 1, 2)))}
    store.attend(q, 0, start, out, events, None, **opts)
    del attention_ref
    return None


def _rom_case(draw: Draw):
    from hcemu import _core

    n = draw.choice((0, 1, 2, 3))
    table = _array(draw, np.int64 if draw.int(0, 5) else draw.choice((np.int32, np.float64)),
                   (draw.choice((0, 1, 2)), draw.choice((10, 10, 9, 11))))
    if isinstance(table, np.ndarray) and table.dtype == np.int64 and table.flags.writeable and table.size:
        for r in range(table.shape[0]):
            if table.shape[1] == 10 and draw.int(0, 3):
                table[r] = [0, 16, 32, draw.choice((4, 8)), 32, 1, 1, 4, 0, 1]
            if draw.chance(3):
                table[r, draw.int(0, table.shape[1] - 1)] = draw.interesting_int() % 2**63 * draw.choice((1, -1))
    ids = [_array(draw, np.int64 if draw.int(0, 5) else np.int32, (n,)) for _ in range(4)]
    if draw.bool():
        _core.rom_encode(table, _scalar(draw, 512), ids[0], ids[1], ids[2])
    else:
        nr = draw.choice((1, 2))
        _core.rom_decode(table, np.full(nr, 4, np.int64), np.array([0] * nr + [len(table) if hasattr(table, "__len__") else 0], np.int64),
                         np.arange(len(table) if hasattr(table, "__len__") else 0, dtype=np.int64),
                         _scalar(draw, 2048), _scalar(draw, 512), *ids)
    return None


def tiny_decoder_parts():
    """A one-layer KV cache (4 tokens), its layer tuple (int4 weights) and RoPE tables for a Decoder."""
    from hcemu.formats import WeightFormat
    from hcemu.kernels.attention import KVCache
    from hcemu.layout import pack

    d, f, nh, hd = 32, 64, 2, 16
    kv = KVCache(1, 1, hd, 4)
    packed = {}
    for name, (n, k) in (("wq", (nh * hd, d)), ("wk", (hd, d)), ("wv", (hd, d)), ("wo", (d, nh * hd)),
                         ("wg", (f, d)), ("wu", (f, d)), ("wd", (d, f))):
        rng = np.random.default_rng(len(packed))
        packed[name] = pack(rng.integers(-8, 7, (n, k), endpoint=True), np.full((n, k // 32), 0.01, np.float16),
                            WeightFormat(4, 32))
    norm = np.ones(d, np.float32)
    layer = [norm, norm] + [packed[k] for k in ("wq", "wk", "wv", "wo", "wg", "wu", "wd")]
    cos = np.ones((4, hd // 2), np.float32)
    sin = np.zeros((4, hd // 2), np.float32)
    return kv, layer, cos, sin, dict(d_model=d, n_heads=nh, d_ff=f, norm_eps=1e-5, act_group_d=32, act_group_q=32,
                                     act_group_f=32)


def _decoder_case(draw: Draw):
    from hcemu import _core

    kv, layer, cos, sin, sizes = tiny_decoder_parts()
    if draw.chance(3):
        layer[draw.int(0, 8)] = draw.choice((None, _array(draw, np.float32, _shape(draw, 1)), layer[5], "x"))
    args = {k: _scalar(draw, v) for k, v in sizes.items()}
    if draw.chance(4):
        args.update(rope_neox=draw.bool(), ffn_gelu=draw.bool(), attn_scale=_scalar(draw, 0.0),
                    attn_softcap=_scalar(draw, 0.0), expert_scale=_scalar(draw, 1.0))
    args.update(cos=cos if draw.int(0, 5) else _array(draw, np.float32, _shape(draw, 2)), sin=sin)
    dec = _core.Decoder(kv._store, [layer], **args)
    t, d = draw.choice((0, 1, 2, 5)), sizes["d_model"]
    x = _array(draw, np.float32, (t, d) if draw.int(0, 5) else _shape(draw, 2), draw.choice(("normal", "hostile")))
    if draw.chance(4) and cos.size >= t * d:
        x = cos.reshape(-1)[: t * d].reshape(t, d)   # x aliasing a RoPE table
    dec.forward(x, _scalar(draw, 0), _scalar(draw, 1), None)
    return None


def kernels(ctx: Context, draw: Draw, data: bytes) -> str:
    group = draw.choice(("vector", "cim", "attention", "rom", "decoder", "isa", "lora"))
    with _Stage("kernel", _documented()["kernel"]) as st:
        if group == "isa":
            from hcemu import _core

            name = draw.choice(("scalar", "bogus", "", None, 1))
            if name in _core.isa_supported():
                return "isa:accepted"   # switching paths is process-wide; tests cover it (restore_isa)
            _core.isa_set(name)
            check = None
        else:
            with np.errstate(all="ignore"):
                check = {"vector": _vector_case, "cim": _cim_case, "attention": _attn_case, "rom": _rom_case,
                         "decoder": _decoder_case, "lora": _lora_case}[group](draw)
        if check is not None:
            with np.errstate(all="ignore"):
                if not check():
                    raise Defect(f"{group}: an accepted call returned other numbers than the numpy oracle "
                                 f"(aliasing or layout not honoured)")
    return f"{group}:{st.outcome}" if st.outcome else f"{group}:accepted"


# ---------------------------------------------------------------- CLI
def _cli_argv(ctx: Context, draw: Draw) -> list:
    paths = [ctx.seeds["images"]["int4"], ctx.seeds["images"]["int8"], ctx.seeds["gguf"], ctx.path("missing.hcrom"),
             ctx.path("missing.gguf"), ctx.scratch, "/dev/null", ctx.path("corrupt.hcrom"), ctx.path("corrupt.gguf"),
             ctx.path("text.txt"), "", "-", "nonsense", "llama-3.1-8b"]
    ints = ("0", "1", "2", "-1", "3", "64", "2147483648", "99999999999999999999", "x", "1.5", "nan", "")
    floats = ("0", "0.5", "1", "-1", "nan", "inf", "-inf", "1e309", "x", "")
    opts = {
        "inspect": [("image", paths), ("--json", None), ("--no-verify", None),
                    ("--floorplan", ("hc1", "x", "")), ("--kv-tokens", ints)],
        "run": [("model", paths[:9]), ("--prompt", ("hi", "", "\u00e9\u0000", "a" * 40)), ("--plan", ("int4", "int8", "x")),
                ("--max-new-tokens", ints[:6] + ints[8:]), ("--temperature", floats), ("--top-k", ints),
                ("--top-p", floats), ("--seed", ints), ("--raw", None), ("--threads", ints),
                ("--kv-tokens", ints), ("--kv", ("int8", "fp16", "x")), ("--context", ints), ("--json", None),
                ("--no-progress", None)],
        "compile": [("model", paths[2:9]), ("--plan", ("int4", "int8", "hc1-int4", "x")),
                    ("--out", (ctx.path("out.hcrom"), ctx.scratch, "/dev/null/x.hcrom", "")),
                    ("--bank-rows", ints), ("--word-bits", ints), ("--banks-per-tile", ints),
                    ("--no-progress", None), ("--json", None)],
        "eval": [("model", paths[2:9]), ("--plan", ("int4", "int8,int4", ",", "x")),
                 ("--text", (ctx.path("text.txt"), ctx.path("missing.txt"), ctx.seeds["gguf"], ctx.scratch)),
                 ("--ctx", ints), ("--max-tokens", ints), ("--workers", ("1", "0", "-1", "x")), ("--threads", ints),
                 ("--kv", ("int8", "x")), ("--json", None), ("--no-progress", None)],
        "compare": [("--model", ("llama-3.1-8b", "smollm2-135m", "x", "")), ("--context", ints),
                    ("--generated", ints), ("--chip", ("hc1", "x")), ("--plan", ("int4", "x")),
                    ("--cost", ("default", "x")), ("--json", None), ("--csv", None),
                    ("--plot", (ctx.path("p.png"), "/dev/null/p.png")), ("--no-host", None)],
        "kernels": [("--isa", ("bogus", "x")), ("--threads", ints), ("--json", None), ("--quick", None)],
        "serve-sim": [("--fleet", ("hc1:1", "h100:1", "h100-fp8:2", "x:1", "hc1:0", "hc1:-1", "hc1:x", "", ":")),
                      ("--model", ("llama-3.1-8b", "x")), ("--rate", ("0", "-1", "nan", "inf", "x", "2")),
                      ("--duration", ("0", "-1", "nan", "inf", "x", "3")),
                      ("--trace", (ctx.path("text.txt"), ctx.path("missing.csv"), "/dev/null", ctx.scratch)),
                      ("--arrival", ("poisson", "gamma", "x")), ("--cv", floats), ("--prompt", floats),
                      ("--output", floats), ("--lengths", ("fixed", "lognormal", "x")), ("--seed", ints),
                      ("--gpu-precision", ("bf16", "x")), ("--engine", ("vllm", "x")), ("--slo-ttft", floats),
                      ("--slo-tpot", floats), ("--sweep", ("1,2", "x", "", "nan", "-1")),
                      ("--workers", ("1", "0", "-1")), ("--json", None), ("--no-progress", None)],
        "economics": [("--model", ("llama-3.1-8b", "x")), ("--context", ints), ("--generated", ints),
                      ("--chip", ("hc1", "x")), ("--gpu", ("h200", "x")), ("--gpu-precision", ("fp8", "x")),
                      ("--demand", floats), ("--lifetime", floats), ("--economics", ("default", "x")),
                      ("--plot", (ctx.path("e.png"), "/dev/null/e.png")), ("--json", None)],
        "validate": [("--json", None), ("--markdown", None), ("--sources", None)],
        "fetch": [("model", ("x", "", "smollm2x"))],
    }
    cmd = draw.choice(tuple(opts) + ("", "--version", "--help", "nonsense"))
    argv = [cmd] if cmd else []
    if cmd == "compare":
        argv.append("--no-host")   # the host row measures real layers: seconds per case
    if cmd == "kernels":
        argv += ["--isa", "bogus"]  # a valid run is a benchmark: minutes
    if cmd == "run":
        argv.append(draw.choice(paths[:9]))   # MODEL defaults to smollm2: a download and a 135M compile
    if cmd == "serve-sim":
        argv += ["--duration", "3", "--no-progress"]   # bounded work unless a drawn option changes it
    for _ in range(draw.int(0, 6) if cmd in opts else 0):
        name, values = draw.choice(opts[cmd])
        if name.startswith("--"):
            argv.append(name)
            if values is not None and not draw.chance(10):
                argv.append(draw.choice(values))
        else:
            argv.insert(1, draw.choice(values))
    if draw.chance(10):
        argv.insert(draw.int(0, len(argv)), draw.choice(("--bogus", "-x", "--", "--json=1")))
    return argv


def cli(ctx: Context, draw: Draw, data: bytes) -> str:
    from hcemu import cli as cli_mod

    if not os.path.exists(ctx.path("text.txt")):
        ctx.write("text.txt", ("the chip reads its weights from ROM. " * 20).encode())
        ctx.write("corrupt.hcrom", ctx.image_bytes["int8"][:5000])
        ctx.write("corrupt.gguf", ctx.gguf_bytes[:3000])
    argv = _cli_argv(ctx, draw)
    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("HCEMU_CACHE")
    os.environ["HCEMU_CACHE"] = ctx.cache
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_mod.main(argv)
    except SystemExit as exc:   # argparse: usage errors (2), --help/--version (0)
        code = exc.code if isinstance(exc.code, int) else 1
        return f"exit:{code}"
    except Exception as exc:
        raise Defect(f"hcemu {' '.join(map(repr, argv))}: {type(exc).__name__}: {exc!r}") from exc
    finally:
        if before is None:
            os.environ.pop("HCEMU_CACHE", None)
        else:
            os.environ["HCEMU_CACHE"] = before
    if rc != 0 and not (err.getvalue().strip() or out.getvalue().strip()):
        raise Defect(f"hcemu {argv}: exit {rc} without a message")
    return f"exit:{rc}"


# ---------------------------------------------------------------- the C library's image loader
C_TABLE_SEEDS = ("int4", "int8")
"""Seed images the C library runs (it refuses block formats, mixtures of experts and Gemma 2's kinds)."""
_HOSTILE_INT = (0, 1, -1, 2, 3, 7, 31, 32, 33, 64, 255, 256, 4096, 65535, 2**31 - 1, -2**31, 2**32 - 1, 2**40,
                2**62, 2**63 - 1, -2**63)
_HOSTILE_F64 = (0.0, -0.0, 1.0, -1.0, 1e-300, 1e300, 5e-324, float("inf"), float("-inf"), float("nan"), 3.0e38)


def _mutate_table(table: bytearray, draw: Draw) -> None:
    """1..6 hostile fields or byte flips in place (``table`` keeps its length)."""
    for _ in range(draw.int(1, 6)):
        kind = draw.int(0, 3)
        if kind == 3:   # a flipped byte anywhere
            table[draw.int(0, len(table) - 1)] ^= 1 << draw.int(0, 7)
            continue
        width = 4 if kind == 0 else 8
        off = draw.int(0, len(table) // width - 1) * width
        if kind == 2:
            table[off:off + 8] = struct.pack("<d", draw.choice(_HOSTILE_F64) if draw.bool() else draw.float())
        else:
            v = draw.choice(_HOSTILE_INT) if draw.bool() else draw.interesting_int()
            table[off:off + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def c_table(ctx: Context, draw: Draw, data: bytes) -> str:
    from hcemu.rom import ctable
    from fuzz.seeds import tests_module

    clib = tests_module("libhcemu_ctypes")
    if ctx.clib is None:
        ctx.clib = clib.load()
    image = bytearray(ctx.image_bytes[draw.choice(C_TABLE_SEEDS)])
    rec = ctable.RECORD_OFFSET
    magic, version, crc, off, n = ctable.RECORD.unpack_from(image, rec)
    table = bytearray(image[off:off + n])
    _mutate_table(table, draw)
    image[off:off + n] = table
    if not draw.chance(8):
        image[rec:rec + ctable.RECORD.size] = ctable.record(bytes(table), off)
    path = ctx.write("case.hcrom", bytes(image))
    try:
        chip = clib.CChip(ctx.clib, path, 8)
    except clib.CError as e:
        if not str(e).split(":", 1)[1].strip():
            raise Defect(f"libhcemu status {e.rc} without a message") from e
        return f"c:open:{e.rc}"
    try:
        vocab = chip.info.vocab_size
        if vocab < 1 or vocab > 1 << 20:
            raise Defect(f"libhcemu accepted a vocabulary of {vocab}")
        a, b = chip.prefill([1, 2, 3]), chip.decode(4)
    except clib.CError as e:
        if not str(e).split(":", 1)[1].strip():
            raise Defect(f"libhcemu status {e.rc} without a message") from e
        return f"c:run:{e.rc}"
    finally:
        chip.close()
    return "accepted" if np.isfinite(a).all() and np.isfinite(b).all() else "accepted:nonfinite-logits"


_TARGET_FUNCS = {"image_bytes": image_bytes, "image_struct": image_struct, "gguf_bytes": gguf_bytes,
                 "gguf_struct": gguf_struct, "adapter_bytes": adapter_bytes, "kernels": kernels,
                 "cli": cli, "c_table": c_table}
