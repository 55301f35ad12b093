"""Bounds of a GGUF file, checked before any parser trusts its counts.

The ``gguf`` package's reader believes the counts in a file: a metadata array claiming 10^12 elements
makes it loop (and allocate) once per claimed element, long after the file has ended. :func:`check_gguf`
walks the header, the metadata and the tensor infos first, reading only the bytes they occupy, and
raises :class:`ValueError` naming the first count, size or offset that the file cannot hold or that
exceeds the limits below. After it passes, every count the reader loops over is bounded by the file
and by these limits.

The layout (GGUF v2/v3, little- or big-endian): magic ``GGUF``, u32 version, u64 tensor count,
u64 metadata count; per metadata entry a string key, a u32 value type and the value (scalars, a u64-
length string, or an array: u32 item type, u64 count, items); per tensor a string name, u32 n_dims,
n_dims u64 dimensions (innermost first), u32 ggml type, u64 offset relative to the data section, which
starts at the next multiple of ``general.alignment`` (default 32) after the tensor infos.
"""
from __future__ import annotations

import mmap
import os
import struct

MAX_TENSORS = 1 << 16
"""Tensor infos a file may declare (Llama 3.1 405B has 1138; assumed generous bound)."""
MAX_METADATA_KEYS = 1 << 16
"""Metadata entries a file may declare (real files have tens)."""
MAX_METADATA_ELEMENTS = 1 << 21
"""Array elements over all metadata (a 128k-token Llama 3 vocabulary with its merges and token types
has about 540k; the ``gguf`` reader spends Python time and memory on each one)."""
MAX_ARRAY_DEPTH = 2
"""Nesting of metadata arrays (real files nest none)."""
MAX_DIMS = 4
"""Dimensions of a tensor (ggml's GGML_MAX_DIMS)."""
VERSIONS = (2, 3)

_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _block_sizes() -> dict:
    """``{ggml type id: (elements per block, bytes per block)}`` as the ``gguf`` package knows them."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}


class _Cursor:
    def __init__(self, buf, size: int, path: str, endian: str):
        self.buf, self.size, self.path, self.pos, self.e = buf, size, path, 0, endian

    def fail(self, msg: str) -> ValueError:
        return ValueError(f"{self.path}: not a readable GGUF file: {msg} (at byte {self.pos} of {self.size})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes, the file ends first (truncated?)")

    def unpack(self, fmt: str, what: str):
        s = struct.Struct(self.e + fmt)
        self.need(s.size, what)
        v = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v[0] if len(v) == 1 else v

    def string(self, what: str, decode: bool = False):
        n = self.unpack("Q", f"{what} length")
        self.need(n, what)
        start = self.pos
        self.pos += n
        if not decode:
            return None
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8: {exc}") from None


def _unique_string(c: _Cursor, seen: set, what: str) -> str:
    """A UTF-8 string that is not in ``seen`` (added to it)."""
    name = c.string(what, decode=True)
    if name in seen:
        raise c.fail(f"{what} {name!r} appears twice")
    seen.add(name)
    return name


def check_gguf(path) -> dict:
    """Check the counts, sizes and offsets of the GGUF file at ``path`` against the file and the limits
    of this module, without trusting any of them. Returns ``{"version", "tensors", "metadata",
    "data_offset", "alignment"}``. Raises FileNotFoundError / OSError when the file cannot be read
    and ValueError naming what is wrong otherwise."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise ValueError(f"{path}: not a readable GGUF file: {size} bytes, shorter than the 24-byte header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _walk(memoryview(mm), size, path)


def _walk(buf, size: int, path: str) -> dict:
    try:
        return _walk_view(buf, size, path)
    finally:
        buf.release()


def _walk_view(buf, size: int, path: str) -> dict:
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a readable GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    (v_le,) = struct.unpack_from("<I", buf, 4)
    endian = "<" if v_le & 0xFFFF else ">"   # as the gguf reader: a zero low half means the other byte order
    c = _Cursor(buf, size, path, endian)
    c.pos = 4
    version = c.unpack("I", "version")
    if version not in VERSIONS:
        raise c.fail(f"version {version} is not supported (supported: {', '.join(map(str, VERSIONS))})")
    n_tensors, n_kv = c.unpack("QQ", "counts")
    if n_tensors > MAX_TENSORS or n_kv > MAX_METADATA_KEYS:
        raise c.fail(f"{n_tensors} tensors and {n_kv} metadata entries exceed the limits "
                     f"({MAX_TENSORS}, {MAX_METADATA_KEYS})")
    # the smallest entry: an 8-byte empty key length, a 4-byte type, a 1-byte value; a tensor info: 8 + 4 + 8 + 4 + 8
    if n_kv * 13 + n_tensors * 32 > size - c.pos:
        raise c.fail(f"{n_kv} metadata entries and {n_tensors} tensor infos cannot fit in the file")
    budget = [MAX_METADATA_ELEMENTS]
    keys = set()
    alignment = 32
    for _ in range(n_kv):
        key = _unique_string(c, keys, "metadata key")
        vtype = c.unpack("I", f"type of {key!r}")
        start = c.pos
        _value(c, vtype, key, 0, budget)
        if key == "general.alignment":
            if vtype != 4:
                raise c.fail(f"general.alignment must be a u32, got value type {vtype}")
            (alignment,) = struct.unpack_from(endian + "I", buf, start)
            if alignment == 0 or alignment & (alignment - 1):
                raise c.fail(f"general.alignment {alignment} is not a power of two")
    blocks = _block_sizes()
    infos = []
    names = set()
    for _ in range(n_tensors):
        name = _unique_string(c, names, "tensor name")
        n_dims = c.unpack("I", f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = [c.unpack("Q", f"tensor {name!r} dimension") for _ in range(n_dims)]
        gtype = c.unpack("I", f"tensor {name!r} type")
        offset = c.unpack("Q", f"tensor {name!r} offset")
        if gtype not in blocks:
            raise c.fail(f"tensor {name!r} has unknown ggml type {gtype}")
        if min(dims) < 1:
            raise c.fail(f"tensor {name!r} has an empty dimension: {dims}")
        block, type_bytes = blocks[gtype]
        if dims[0] % block:
            raise c.fail(f"tensor {name!r}: {dims[0]} elements per row is not a multiple of the {block}-element block")
        elements = 1
        for d in dims:
            elements *= d
        infos.append((name, offset, elements // block * type_bytes))
    data_offset = -(-c.pos // alignment) * alignment
    for name, offset, nbytes in infos:
        if offset % alignment or data_offset + offset + nbytes > size:
            raise ValueError(f"{path}: not a readable GGUF file: tensor {name!r} at data offset {offset} with "
                             f"{nbytes} bytes lies outside the file ({size} bytes, data from {data_offset}, "
                             f"{alignment}-byte alignment)")
    return {"version": version, "tensors": n_tensors, "metadata": n_kv, "data_offset": data_offset,
            "alignment": alignment}


def _value(c: _Cursor, vtype: int, key: str, depth: int, budget: list) -> None:
    if vtype in _SCALAR_BYTES:
        c.need(_SCALAR_BYTES[vtype], f"value of {key!r}")
        c.pos += _SCALAR_BYTES[vtype]
    elif vtype == _STRING:
        c.string(f"string value of {key!r}")
    elif vtype == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise c.fail(f"{key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        itype, count = c.unpack("IQ", f"array header of {key!r}")
        budget[0] -= count
        if budget[0] < 0:
            raise c.fail(f"{key!r}: {count} array elements exceed the metadata limit of {MAX_METADATA_ELEMENTS}")
        if itype in _SCALAR_BYTES:
            c.need(count * _SCALAR_BYTES[itype], f"{count} array elements of {key!r}")
            c.pos += count * _SCALAR_BYTES[itype]
            return
        if itype not in (_STRING, _ARRAY):
            raise c.fail(f"{key!r}: unknown array item type {itype}")
        c.need(count * 8, f"{count} array elements of {key!r}")   # every string or array has an 8-byte count
        if itype == _STRING:  # the common case (vocabularies), in a tight loop
            length, buf, size, pos = struct.Struct(c.e + "Q").unpack_from, c.buf, c.size, c.pos
            for _ in range(count):
                if pos + 8 > size:
                    break
                pos += 8 + length(buf, pos)[0]
                if pos > size:
                    break
            else:
                c.pos = pos
                return
            c.pos = min(pos, size)
            raise c.fail(f"the strings of {key!r} run past the end of the file")
        for _ in range(count):
            _value(c, itype, key, depth + 1, budget)
    else:
        raise c.fail(f"{key!r} has unknown value type {vtype}")
