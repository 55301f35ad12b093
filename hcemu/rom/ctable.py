"""The C table of a ROM image: what the C library (``libhcemu``, csrc/hc_lib.c) reads instead of the JSON directory.

The directory of an image is JSON (docs/rom.md); a C program should not need a JSON parser to run a
chip. So the compiler also writes one more section, the *C table*: fixed-size little-endian records
holding the spec fields the compiled decoder needs, the plan's KV format and activation groups, the
RoPE frequencies, the per-pass event rows of :mod:`hcemu.events` and, per matrix and vector, its
sections' offsets and sizes. The preamble's padding (at byte :data:`RECORD_OFFSET`) points at it and
carries its CRC-32 (zlib's polynomial; the C side checks it without a SHA-256).

One source: the table is a pure function of the directory (:func:`c_table` of its spec, plan, die,
tensors and vectors), so the compiler writes ``c_table(directory)`` and the loader checks that the
bytes in the file equal ``c_table`` of the directory it read (``RomImage.load``). docs/embedding.md
lists every field; csrc/hc_lib.c reads them.

Layout (``<``: little-endian, no padding), version :data:`VERSION`::

    header        HEADER (see its fields below)
    layers        n_layers x 9 int32: vectors attn_norm, ffn_norm; tensors wq, wk, wv, wo, wg, wu, wd (-1: absent)
    frequencies   head_dim / 2 float64: RoPE angular frequencies (hcemu.model.ops.rope_frequencies)
    events        (n_layers + 3) x n_fields int64: one pass through each layer (products, vector work,
                  the K/V append), one head pass, one embedding lookup, one attended key
    tensors       n_tensors x TENSOR
    vectors       n_vectors x VECTOR
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from hcemu._validate import from_dict
from hcemu.events import (FIELDS, attention_counts, embed_counts, head_vector_counts, layer_vector_counts,
                          product_counts)
from hcemu.formats import WeightFormat

VERSION = 1
"""Version of the C table's layout (bumped with any change to it; the C loader refuses others)."""
MAGIC = b"HCCTAB\x00\x00"
RECORD_OFFSET = 104
"""Byte of the preamble where the table's record sits (after the preamble's 72 bytes and their SHA-256)."""
RECORD = struct.Struct("<8sIIQQ")   # magic, version, crc32 of the table, offset, bytes
HEADER = struct.Struct("<8sIIIIIIII" + "q" * 11 + "d" * 5 + "iiii")
TENSOR = struct.Struct("<64sIIIIqqqqqqqqqq")
VECTOR = struct.Struct("<64sqqq")
LAYER = struct.Struct("<9i")
NAME_BYTES = 64

# ``features``: what an image's model or plan uses beyond a plain Llama decoder with integer formats.
FEATURES = {
    "moe": 1 << 0, "qkv_bias": 1 << 1, "qk_norm": 1 << 2, "post_norms": 1 << 3, "sliding_window": 1 << 4,
    "block_formats": 1 << 5, "partial_die": 1 << 6, "rope_neox": 1 << 7, "gelu": 1 << 8, "attn_scale": 1 << 9,
    "attn_softcap": 1 << 10, "final_softcap": 1 << 11, "embed_scale": 1 << 12,
}
"""Bit of each feature in the header's ``features`` (csrc/hcemu_chip.h repeats them as HC_FEAT_*)."""


def features(spec, plan, die, tensors) -> int:
    """The ``features`` bit mask of an image (:data:`FEATURES`)."""
    on = {
        "moe": spec.is_moe, "qkv_bias": spec.qkv_bias, "qk_norm": spec.qk_norm != "none",
        "post_norms": spec.post_norms,
        "sliding_window": any(spec.block(i).window or spec.block(i).rope == "local" for i in range(spec.n_layers)),
        "block_formats": any(fmt.block is not None for fmt in _formats(tensors)),
        "partial_die": not (die.embedding and die.head and die.n_die_layers == spec.n_layers),
        "rope_neox": spec.rope_style == "neox", "gelu": spec.ffn_act == "gelu", "attn_scale": spec.attn_scale != 0,
        "attn_softcap": spec.attn_softcap != 0, "final_softcap": spec.final_softcap != 0,
        "embed_scale": spec.embed_scale != 1.0,
    }
    return sum(bit for name, bit in FEATURES.items() if on[name])


def _formats(tensors) -> list[WeightFormat]:
    """The WeightFormat of each directory entry (its ``fmt`` object)."""
    return [from_dict(WeightFormat, t["fmt"], f"{t['name']} fmt") for t in tensors]


def _name(s: str) -> bytes:
    b = s.encode("utf-8")[:NAME_BYTES - 1]
    return b + b"\0" * (NAME_BYTES - len(b))


def _sec(t: dict, kind: str) -> tuple[int, int]:
    s = t["sections"].get(kind)
    return (0, 0) if s is None else (int(s["offset"]), int(s["nbytes"]))


def table_nbytes(spec, n_tensors: int, n_vectors: int) -> int:
    """Bytes of the C table of a model of ``spec`` with ``n_tensors`` and ``n_vectors`` records (the
    layout above; what :func:`c_table` writes and csrc/hc_lib.c requires)."""
    return (HEADER.size + spec.n_layers * LAYER.size + spec.head_dim // 2 * 8
            + (spec.n_layers + 3) * len(FIELDS) * 8 + n_tensors * TENSOR.size + n_vectors * VECTOR.size)


def c_table(spec, plan, die, tensors: list, vectors: list) -> bytes:
    """The C table of the image whose directory holds ``spec``, ``plan``, ``die`` and the ``tensors`` and
    ``vectors`` entries (with their sections)."""
    from hcemu.model.ops import rope_frequencies

    t_index = {t["name"]: i for i, t in enumerate(tensors)}
    v_index = {v["name"]: i for i, v in enumerate(vectors)}
    fmts = _formats(tensors)
    act = plan.activations
    layers = b""
    event_rows = []
    per_pass, per_key = attention_counts(spec, plan.kv)
    layer_const = layer_vector_counts(spec) + per_pass
    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    for i in range(spec.n_layers):
        row = layer_const.copy()
        for name, _kind, _shape in spec.layer_matrices(i):
            j = t_index.get(name)
            if j is not None:
                row += product_counts(fmts[j], tensors[j]["n"], tensors[j]["k"])
        event_rows.append(row)
        ids = [v_index.get(f"blk.{i}.attn_norm.weight", -1), v_index.get(f"blk.{i}.ffn_norm.weight", -1)]
        ids += [t_index.get(f"blk.{i}.{kind}.weight", -1) for kind in kinds]
        layers += LAYER.pack(*ids)
    out_name = "token_embd.weight" if spec.tied_embeddings else "output.weight"
    emb, out = t_index.get("token_embd.weight", -1), t_index.get(out_name, -1)
    head = head_vector_counts(spec)
    if out >= 0:
        head = head + product_counts(fmts[out], tensors[out]["n"], tensors[out]["k"])
    embed = embed_counts(spec, fmts[emb]) if emb >= 0 and die.embedding else np.zeros(len(FIELDS), np.int64)
    event_rows += [head, embed, per_key]
    header = HEADER.pack(
        MAGIC, VERSION, HEADER.size, len(FIELDS), spec.n_layers + 2 + spec.n_layers * spec.n_experts,
        len(tensors), len(vectors), features(spec, plan, die, tensors), 1 if plan.kv == "int8" else 0,
        spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.d_ff, spec.vocab_size,
        spec.max_context, act.group_for(spec.d_model), act.group_for(spec.q_dim), act.group_for(spec.d_ff),
        spec.norm_eps, spec.attn_scale, spec.attn_softcap, spec.embed_scale, spec.final_softcap,
        emb, out, v_index.get("output_norm.weight", -1), 0)
    freqs = np.ascontiguousarray(rope_frequencies(spec), dtype="<f8").tobytes()
    events = np.ascontiguousarray(np.stack(event_rows), dtype="<i8").tobytes()
    recs = b""
    for t, fmt in zip(tensors, fmts):
        blk = fmt.block is not None
        recs += TENSOR.pack(_name(t["name"]), fmt.bits if not blk else 0, fmt.group if not blk else 0,
                            1 if fmt.asymmetric else 0, 1 if blk else 0, t["n"], t["k"],
                            *_sec(t, "codes"), *_sec(t, "scales"), *_sec(t, "offsets"), 0, 0)
    for v in vectors:
        recs += VECTOR.pack(_name(v["name"]), v["n"], *_sec(v, "values"))
    return header + layers + freqs + events + recs


def record(table: bytes, offset: int) -> bytes:
    """The preamble record pointing at ``table`` written at ``offset``."""
    return RECORD.pack(MAGIC, VERSION, zlib.crc32(table), offset, len(table))


def directory_entry(table: bytes, offset: int) -> dict:
    """The directory's ``c_table`` entry for ``table`` at ``offset``."""
    return {"version": VERSION, "offset": offset, "nbytes": len(table), "crc32": zlib.crc32(table)}
