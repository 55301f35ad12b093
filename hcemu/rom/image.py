"""The ROM image file (``.hcrom``): what the compiler writes and the chip reads.

Layout (all integers little-endian; ``docs/rom.md`` has the full description)::

    0      preamble, 4096 bytes: magic b"HCROM\\0\\x1a\\n", u32 version, u32 preamble size,
           u64 directory offset, u64 directory bytes, u64 file bytes, directory SHA-256,
           then SHA-256 of the preceding 72 bytes; zero padding
    4096   sections, each aligned to 4096 bytes: per matrix its codes (uint8, ROM tile layout),
           fp16 scales and (asymmetric) fp16 offsets (block formats: the records alone, codes and
           every level of scales, :func:`hcemu.layout.block_record`); per norm vector its float32 values
    end    the directory: UTF-8 JSON with the ModelSpec, the plan, the geometry, the address map, and
           per tensor its format, shape, source type, quantization error and sections
           (offset, bytes, dtype, shape, SHA-256)

The directory sits at the end so the compiler can stream tensor by tensor; the preamble is written
last. Loading memory-maps the file: matrices come back as :class:`~hcemu.layout.PackedWeights` whose
arrays are read-only views into the map.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hcemu._validate import from_dict
from hcemu.events import FIELD_INDEX, FIELDS, product_counts
from hcemu.formats import ActFormat, Plan, WeightFormat
from hcemu.layout import (PackedWeights, block_arrays, code_tiles, dequantize, layout_shape, pack, packed_arrays,
                          tile_bytes)
from hcemu.model.source import BLOCK_TYPES, FLOAT_TYPES
from hcemu.model.spec import EXPERT_MATRICES, MAX_MATRICES, ModelSpec
from hcemu.rom import ctable
from hcemu.rom.address import AddressMap
from hcemu.rom.ctable import c_table
from hcemu.rom.die import DieAssignment
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.quantize import (ErrorStats, import_blocks, lossless_import, q4_0_offset_fits, quantize_codes,
                                quantize_matrix, represented)

MAGIC = b"HCROM\x00\x1a\n"
VERSION = 2  # 2: block formats as one stream of records per row tile (hcemu.layout.block_record)
PREAMBLE_BYTES = 4096
ALIGN = 4096
_PRE = struct.Struct("<8sIIQQQ32s")
CHUNK_ELEMS = 1 << 22   # weights quantized per chunk (bounds the compiler's working memory)
META_ARRAYS = ("scales", "offsets")  # PackedWeights arrays beside the codes (integer formats)


class RomImageError(ValueError):
    """A ROM image file is truncated, corrupt, of another format, or of an unsupported version."""


# ---- (de)serialization of the plan
def _fmt_to_dict(f: WeightFormat) -> dict:
    d = {"bits": f.bits, "group": f.group, "asymmetric": f.asymmetric}
    if f.kind != "int":
        d["kind"] = f.kind
    return d


def plan_to_dict(plan: Plan) -> dict:
    wf = _fmt_to_dict
    d = {"name": plan.name, "matrices": wf(plan.matrices), "embedding": wf(plan.embedding),
         "output": wf(plan.output),
         "activations": {"granularity": plan.activations.granularity, "group": plan.activations.group},
         "kv": plan.kv, "description": plan.description}
    if plan.overrides:
        d["overrides"] = [[key, wf(f)] for key, f in plan.overrides]
    if plan.source_formats:
        d["source_formats"] = True
    return d


def plan_from_dict(d: dict) -> Plan:
    """The Plan of :func:`plan_to_dict`'s JSON object; TypeError/ValueError name a wrong, unknown or
    missing field."""
    if not isinstance(d, dict):
        raise TypeError(f"Plan must be an object (a JSON dict), got {type(d).__name__}")
    fields = {**d}
    for key in ("matrices", "embedding", "output"):
        if key in fields:
            fields[key] = _fmt_from_dict(fields[key], f"Plan.{key}")
    if "activations" in fields:
        fields["activations"] = from_dict(ActFormat, fields["activations"], "Plan.activations")
    if "overrides" in fields:
        ov = fields["overrides"]
        if not isinstance(ov, list) or not all(isinstance(x, list) and len(x) == 2 for x in ov):
            raise TypeError(f"Plan.overrides must be a list of [key, format] pairs, got {ov!r}"[:300])
        fields["overrides"] = tuple((key, _fmt_from_dict(f, f"Plan.overrides[{key!r}]")) for key, f in ov)
    return from_dict(Plan, fields)


def _fmt_from_dict(d: dict, what: str = "WeightFormat") -> WeightFormat:
    return from_dict(WeightFormat, d, what)


def _as_float32(a: np.ndarray, ggml_type: str) -> np.ndarray:
    """Float32 values of float source data (BF16 arrives as its uint16 bit patterns, see RawTensor)."""
    a = np.asarray(a)
    if ggml_type == "BF16":
        if a.dtype != np.uint16:
            raise TypeError(f"BF16 data must be uint16 bit patterns, got {a.dtype}")
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


@dataclass(frozen=True)
class CompileReport:
    """What compiling produced: per-tensor quantization error and totals.

    tensors: one dict per matrix: name, kind, layer, format, shape, source_type, method
    (``"import"`` = lossless, ``"quantize"`` from float, ``"requantize"`` from another block format),
    and the error fields of :meth:`ErrorStats.to_dict` (rmse, max_abs, sqnr_db, exact).
    """

    tensors: tuple
    totals: dict
    path: str = ""
    file_bytes: int = 0
    seconds: float = 0.0
    notes: tuple = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return {"path": self.path, "file_bytes": self.file_bytes, "seconds": self.seconds,
                "tensors": list(self.tensors), "totals": self.totals, "notes": list(self.notes)}

    def table(self) -> str:
        """Human-readable per-tensor error table."""
        lines = [f"{'tensor':34s} {'format':10s} {'source':6s} {'method':10s} {'rmse':>10s} {'max_abs':>10s} {'SQNR dB':>8s}"]
        for t in self.tensors:
            sq = "exact" if t["exact"] else ("-" if t["sqnr_db"] is None else f"{t['sqnr_db']:.2f}")
            lines.append(f"{t['name']:34s} {t['format']:10s} {t['source_type']:6s} {t['method']:10s} "
                         f"{t['rmse']:10.3e} {t['max_abs']:10.3e} {sq:>8s}")
        T = self.totals
        sq = "exact" if T["exact"] else ("-" if T["sqnr_db"] is None else f"{T['sqnr_db']:.2f}")
        lines.append(f"{'TOTAL (' + str(T['count']) + ' weights)':34s} {'':10s} {'':6s} "
                     f"{str(T['exact_tensors']) + ' exact':10s} {T['rmse']:10.3e} {T['max_abs']:10.3e} {sq:>8s}")
        return "\n".join(lines)


def _region_of(spec: ModelSpec, name: str, kind: str, layer) -> int:
    """The bank region a matrix lies in: its layer's; the head's or the embedding's; or, for an expert's
    matrix, that expert's own region (docs/rom.md "Regions")."""
    if kind in EXPERT_MATRICES:
        return spec.n_layers + 2 + int(layer) * spec.n_experts + int(name.split(".")[3])
    if layer is not None:
        return int(layer)
    return spec.n_layers + 1 if kind == "embedding" else spec.n_layers


def _check_die(spec: ModelSpec, die: DieAssignment | None) -> DieAssignment:
    if die is None:
        return DieAssignment.whole(spec.n_layers)
    if not isinstance(die, DieAssignment):
        raise TypeError(f"die must be a DieAssignment, got {type(die).__name__}")
    if die.n_layers != spec.n_layers:
        raise ValueError(f"{die.describe()} is of a {die.n_layers}-layer model; {spec.name} has {spec.n_layers}")
    return die


def _image_matrices(spec: ModelSpec, plan: Plan, die: DieAssignment | None = None):
    """``(name, kind, layer, region, fmt, (n, k))`` of every matrix the image stores, and notes.

    die: only the matrices of that die (its layers with the experts it holds; the embedding and the
    head where it holds them).
    With tied embeddings a die holding the head but not the embedding stores its own copy of
    ``token_embd.weight`` (embedding format) in the head region.
    """
    die = _check_die(spec, die)
    notes = []
    out = []
    for name, kind, layer, shape in spec.matrices():
        if layer is not None and not die.holds_layer(layer):
            continue
        if kind in EXPERT_MATRICES:   # expert parallelism: only the die's block of the layer's experts
            if not die.holds_expert(layer, int(name.split(".")[3]), spec.n_experts):
                continue
        elif layer is not None and not die.holds_layer_own(layer):
            continue
        region = _region_of(spec, name, kind, layer)
        if kind == "embedding" and not die.embedding:
            if not (spec.tied_embeddings and die.head):
                continue
            region = spec.n_layers  # the tied output product's own copy on the head die
        if kind == "output" and not die.head:
            continue
        out.append((name, kind, layer, region, plan.format_for(kind, name, shape[1]), shape))
    if spec.tied_embeddings and plan.embedding != plan.output and die.head:
        notes.append(f"tied embeddings: one ROM copy in the embedding format {plan.embedding.name} serves "
                     f"the output product (the plan asks {plan.output.name} for the output)")
    if spec.tied_embeddings and die.head and not die.embedding:
        notes.append(f"tied embeddings: {die.describe()} holds its own copy of token_embd.weight in the head "
                     f"region for the output product")
    return out, notes


def _image_norms(spec: ModelSpec, die: DieAssignment | None = None):
    """``(name, layer, length)`` of the norm vectors a die stores (its layers'; ``output_norm`` with the head)."""
    die = _check_die(spec, die)
    return [(name, layer, n) for name, layer, n in spec.norms()
            if (die.holds_layer_own(layer) if layer is not None else die.head)]


@dataclass(frozen=True)
class RomBits:
    """What the mask ROM of one image holds, in bits (the counts the die-area model prices).

    code_used: weight codes of every matrix (weight-tile padding included), ``code_bits`` per weight;
    code_physical: all banks x bank rows x word bits (blank bank slots included; what is fabricated),
    scaled by code_used / slot bits where block formats hold narrower codes than their 4-/8-bit host
    slots (:func:`dense_physical_bits`: a dense ROM packs Q3_K's 3-bit codes, not 4-bit slots);
    meta: every level of scales and offsets; vector: float32 norm vectors; banks: banks on the chip.
    """

    code_used: int
    code_physical: int
    meta: int
    vector: int
    banks: int

    @property
    def total(self) -> int:
        """Bits the die holds in ROM: physical code banks + scales/offsets + norm vectors."""
        return self.code_physical + self.meta + self.vector

    @property
    def bank_utilization(self) -> float:
        return self.code_used / self.code_physical if self.code_physical else 0.0

    def to_dict(self) -> dict:
        return {"code_used": self.code_used, "code_physical": self.code_physical, "meta": self.meta,
                "vector": self.vector, "banks": self.banks, "total": self.total,
                "bank_utilization": self.bank_utilization}


def source_format(ggml_type: str) -> WeightFormat | None:
    """The ROM format a GGUF block type imports into without loss, None for float types."""
    from hcemu.formats import INT4_G32, INT4A_G32, INT8_G32, KIND_BY_GGML

    fixed = {"Q8_0": INT8_G32, "Q4_0": INT4_G32, "Q4_1": INT4A_G32}
    if ggml_type in fixed:
        return fixed[ggml_type]
    if ggml_type in KIND_BY_GGML:
        return WeightFormat.of_kind(KIND_BY_GGML[ggml_type].name)
    if ggml_type in FLOAT_TYPES:
        return None
    raise ValueError(f"unsupported tensor type {ggml_type!r}; supported: {', '.join(FLOAT_TYPES + BLOCK_TYPES)}")


def resolve_plan(plan: Plan | str, source) -> Plan:
    """``plan`` made concrete for ``source``: a plan with ``source_formats`` (plan ``gguf``) gets one
    override per matrix, the format its source type imports into without loss (float tensors keep
    the plan's format); other plans are returned as they are. ValueError names a tensor of an
    unsupported type."""
    from dataclasses import replace

    from hcemu.formats import get_plan

    if isinstance(plan, str):
        plan = get_plan(plan)
    if not plan.source_formats:
        return plan
    overrides = []
    for name, _kind, _layer, _shape in source.spec.matrices():
        gtype = source.raw(name).ggml_type
        try:
            fmt = source_format(gtype)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if fmt is not None:
            overrides.append((name, fmt))
    return replace(plan, overrides=tuple(overrides), source_formats=False)


def model_address_map(spec: ModelSpec, plan: Plan, geometry: RomGeometry | None = None,
                      die: DieAssignment | None = None) -> AddressMap:
    """The placement :func:`compile_model` makes for ``spec`` in ``plan`` (default geometry
    :meth:`RomGeometry.for_model`; ``die``: of that die's image), from shapes alone."""
    geometry = geometry or RomGeometry.for_model(spec, plan)
    matrices, _ = _image_matrices(spec, plan, die)
    return AddressMap(geometry, spec.n_layers, [(nm, reg, fmt, *shape) for nm, _k, _l, reg, fmt, shape in matrices],
                      spec.n_experts)


def rom_bits_for_model(spec: ModelSpec, plan: Plan | str, geometry: RomGeometry | None = None,
                       die: DieAssignment | None = None) -> RomBits:
    """The :class:`RomBits` of the image :func:`compile_model` would write (of one die's image with
    ``die``), from shapes alone (equal to :meth:`RomImage.rom_bits` of that image; weights' values do
    not change sizes)."""
    from hcemu.formats import get_plan

    if isinstance(plan, str):
        plan = get_plan(plan)
    return _rom_bits_cached(spec, plan, geometry, _check_die(spec, die))


@lru_cache(maxsize=256)
def _rom_bits_cached(spec, plan, geometry, die):
    amap = model_address_map(spec, plan, geometry, die)
    matrices, _ = _image_matrices(spec, plan, die)
    per_matrix = sum(product_counts(fmt, n, k) for *_, fmt, (n, k) in matrices)
    used = int(per_matrix[FIELD_INDEX["rom_code_bits"]])   # the bits one pass reads are the bits held
    meta = int(per_matrix[FIELD_INDEX["rom_meta_bits"]])
    vector = sum(length for _nm, _l, length in _image_norms(spec, die)) * 32
    slots = sum(layout_shape(fmt, n, k)[0] * layout_shape(fmt, n, k)[1] * tile_bytes(fmt) * 8
                for *_, fmt, (n, k) in matrices)
    return RomBits(used, dense_physical_bits(amap.physical_bits, used, slots), meta, vector, amap.n_banks)


def dense_physical_bits(physical_bits: int, code_bits: int, slot_bits: int) -> int:
    """Fabricated code bits of a ROM whose banks (``physical_bits``, laid out with 4-/8-bit host slots
    holding ``slot_bits``) store ``code_bits`` of codes packed densely: physical x code / slot, rounded
    down (equal to ``physical_bits`` for the integer formats, whose codes fill their slots)."""
    return physical_bits if code_bits == slot_bits else physical_bits * code_bits // slot_bits


def region_rom_bits(spec: ModelSpec, plan: Plan, geometry: RomGeometry | None = None,
                    die: DieAssignment | None = None) -> np.ndarray:
    """ROM bits of each region (int64 (n_layers + 2 [+ n_layers * n_experts],): layers, head, embedding
    [, the experts of every layer]) of the image
    :func:`compile_model` writes (for ``die``): the region's banks as fabricated, its matrices' fp16
    scales and offsets, its float32 norm vectors (``output_norm`` with the head). Sums to
    :attr:`RomBits.total`."""
    die = _check_die(spec, die)
    amap = model_address_map(spec, plan, geometry, die)
    bits = amap.region_banks.astype(np.int64) * amap.geometry.bank_bits
    for _nm, _kind, _layer, region, fmt, (n, k) in _image_matrices(spec, plan, die)[0]:
        bits[region] += int(product_counts(fmt, n, k)[FIELD_INDEX["rom_meta_bits"]])
    for _nm, layer, length in _image_norms(spec, die):
        bits[spec.n_layers if layer is None else layer] += 32 * length
    return bits


def compile_model(source, plan: Plan | str, out_path, geometry: RomGeometry | None = None,
                  progress: bool = True, chunk_elems: int = CHUNK_ELEMS,
                  die: DieAssignment | None = None) -> CompileReport:
    """Quantize ``source`` (a :class:`~hcemu.model.source.ModelSource`) with ``plan`` into a ROM image.

    Streams tensor by tensor (and matrix rows in chunks of about ``chunk_elems`` weights) into a
    temporary file renamed to ``out_path`` on success: an exception leaves no file at ``out_path``.
    geometry: bank geometry; default :meth:`RomGeometry.for_model` (of the whole model, also for a
    die). die: write only that die's share of the model (:class:`~hcemu.rom.die.DieAssignment`; its
    directory then carries a ``die`` entry); the codes of every matrix are those of the whole image.
    Returns the :class:`CompileReport`.
    """
    from hcemu._io import atomic_write
    from hcemu.formats import get_plan

    plan = resolve_plan(plan, source)
    spec = source.spec
    geometry = geometry or RomGeometry.for_model(spec, plan)
    whole = die is None
    die = _check_die(spec, die)
    matrices, notes = _image_matrices(spec, plan, die)
    amap = model_address_map(spec, plan, geometry, die)
    norms = _image_norms(spec, die)
    total_weights = sum(n * k for *_, (n, k) in matrices)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_weights, unit="w", unit_scale=True, desc=f"compile {spec.name} {plan.name}",
                   file=sys.stderr, dynamic_ncols=True)
    tensors_dir, vectors_dir, report_rows = [], [], []
    totals = ErrorStats()
    exact_tensors = 0
    try:
        with atomic_write(out_path, "wb") as f:
            f.write(b"\0" * PREAMBLE_BYTES)
            pos = PREAMBLE_BYTES

            def section(arrays_or_chunks, dtype, shape):
                """Write one aligned section from an iterable of arrays; return its directory entry."""
                nonlocal pos
                start = _align(pos)
                if start > pos:
                    f.write(b"\0" * (start - pos))
                h = hashlib.sha256()
                nbytes = 0
                for a in arrays_or_chunks:
                    buf = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
                    h.update(buf)
                    f.write(buf)
                    nbytes += buf.size
                pos = start + nbytes
                want = math.prod(shape) * np.dtype(dtype).itemsize
                if nbytes != want:
                    raise RuntimeError(f"section of shape {shape} {dtype}: wrote {nbytes} bytes, expected {want}")
                return {"offset": start, "nbytes": nbytes, "dtype": np.dtype(dtype).name, "shape": list(shape),
                        "sha256": h.hexdigest()}

            for name, kind, layer, region, fmt, (n, k) in matrices:
                raw = source.raw(name)
                if tuple(raw.shape) != (n, k):
                    raise ValueError(f"{name}: source shape {tuple(raw.shape)} does not match the spec's {(n, k)}")
                gtype = raw.ggml_type
                if gtype in BLOCK_TYPES:
                    ok = lossless_import(gtype, fmt) and not (gtype == "Q4_0" and fmt.asymmetric
                                                              and not q4_0_offset_fits(raw.data, k))
                    method = "import" if ok else "requantize"
                elif gtype in FLOAT_TYPES:
                    method = "quantize"
                else:
                    raise ValueError(f"{name}: unsupported tensor type {gtype!r}; supported: "
                                     f"{', '.join(FLOAT_TYPES + BLOCK_TYPES)}")
                src = raw.data if method != "requantize" else source.float32(name)
                del raw
                rows_per_chunk = max(16, (chunk_elems // k) // 16 * 16)
                stats = ErrorStats()
                meta = {a: [] for a in META_ARRAYS}
                tscale = None
                if fmt.block is not None and fmt.block.name == "nvfp4" and method != "import":
                    from hcemu.rom.blocks import nvfp4_tensor_scale  # one tensor scale over all chunks

                    amax = max((float(np.abs(_as_float32(src[r0:r0 + rows_per_chunk], gtype if method == "quantize"
                                                          else "F32")).max()) for r0 in range(0, n, rows_per_chunk)),
                               default=0.0)
                    tscale = nvfp4_tensor_scale(amax)
                used_tscale = [1.0]

                def code_chunks():
                    for r0 in range(0, n, rows_per_chunk):
                        r1 = min(n, r0 + rows_per_chunk)
                        if method == "import":
                            pw = import_blocks(src[r0:r1], gtype, k, fmt, name)
                            w_hat = dequantize(pw)
                            stats.add_exact(w_hat.size, float(np.dot(w_hat.ravel().astype(np.float64),
                                                                     w_hat.ravel().astype(np.float64))))
                        elif fmt.block is not None:
                            w = _as_float32(src[r0:r1], gtype if method == "quantize" else "F32")
                            pw = quantize_matrix(w, fmt, name, tscale)
                            stats.add(w, dequantize(pw))
                        else:
                            w = _as_float32(src[r0:r1], gtype if method == "quantize" else "F32")
                            q, d, m = quantize_codes(w, fmt, name)
                            stats.add(w, represented(q, d, m, fmt))
                            pw = pack(q, d, fmt, m)
                        for a in META_ARRAYS:
                            if getattr(pw, a) is not None:
                                meta[a].append(getattr(pw, a))
                        used_tscale[0] = pw.tensor_scale
                        if bar is not None:
                            bar.update((r1 - r0) * k)
                        yield pw.codes

                arrays = packed_arrays(fmt, n, k)
                parts = {"codes": code_chunks(), **meta}
                sections = {a: section(parts[a], dtype, shape) for a, (dtype, shape) in arrays.items()}
                del src, meta
                err = stats.to_dict()
                if method == "import":
                    err["exact"] = True
                    exact_tensors += 1
                totals.merge(stats)
                p = amap.by_name[name]
                row = {"name": name, "kind": kind, "layer": layer, "region": region, "format": fmt.name,
                       "bits_per_weight": fmt.bits_per_weight(k),
                       "fmt": _fmt_to_dict(fmt),
                       "n": n, "k": k, "source_type": gtype, "method": method, **err,
                       "bank_base_row": p.base_row, "banks": p.n_banks}
                report_rows.append({kk: v for kk, v in row.items() if kk not in ("fmt",)})
                if used_tscale[0] != 1.0:
                    row["tensor_scale"] = used_tscale[0]
                tensors_dir.append({**row, "sections": sections})
            for name, layer, length in norms:
                raw = source.raw(name)
                v = (_as_float32(raw.data, raw.ggml_type) if raw.ggml_type in FLOAT_TYPES
                     else np.asarray(source.float32(name), np.float32))
                if v.shape != (length,):
                    raise ValueError(f"{name}: source shape {v.shape} does not match the spec's ({length},)")
                if not np.isfinite(v).all():
                    raise ValueError(f"{name}: holds NaN or infinity")
                vectors_dir.append({"name": name, "layer": layer, "n": length, "source_type": raw.ggml_type,
                                    "sections": {"values": section([v], np.float32, (length,))}})
            # the C table (hcemu/rom/ctable.py): a function of the directory's entries, written as its own section
            table = c_table(spec, plan, die, tensors_dir, vectors_dir)
            table_offset = section([np.frombuffer(table, np.uint8)], np.uint8, (len(table),))["offset"]
            tot = totals.to_dict()
            tot["exact_tensors"] = exact_tensors
            tot["tensors"] = len(tensors_dir)
            directory = {
                "format": "hcrom", "version": VERSION, "created_by": _created_by(),
                "source": getattr(source, "description", spec.name),
                "spec": spec.to_dict(), "plan": plan_to_dict(plan), "geometry": geometry.to_dict(),
                "address_map": amap.to_dict(), "tensors": tensors_dir, "vectors": vectors_dir,
                "aliases": {"output.weight": "token_embd.weight"} if spec.tied_embeddings and die.head else {},
                "totals": tot, "notes": notes, "compile_seconds": time.perf_counter() - t0,
            }
            directory["c_table"] = ctable.directory_entry(table, table_offset)
            if not whole:
                directory["die"] = die.to_dict()
            blob = json.dumps(directory, allow_nan=False).encode("utf-8")
            dir_offset = _align(pos)
            f.write(b"\0" * (dir_offset - pos))
            f.write(blob)
            file_bytes = dir_offset + len(blob)
            head = _PRE.pack(MAGIC, VERSION, PREAMBLE_BYTES, dir_offset, len(blob), file_bytes,
                             hashlib.sha256(blob).digest())
            f.seek(0)
            f.write(head + hashlib.sha256(head).digest() + ctable.record(table, table_offset))
    finally:
        if bar is not None:
            bar.close()
    return CompileReport(tuple(report_rows), tot, os.fspath(out_path), file_bytes, time.perf_counter() - t0,
                         tuple(notes))


_REPORT_NUMBERS = ("rmse", "max_abs", "count", "sum_sq_err", "sum_sq_ref", "bits_per_weight")
_SHA256_HEX = frozenset("0123456789abcdef")


def _canon(v) -> str:
    """A JSON value as canonical text: equal texts mean equal values of equal JSON types (1 != 1.0 != true)."""
    return json.dumps(v, sort_keys=True)


def check_directory(d, path: str, payload_end: int):
    """Check that the directory ``d`` of the image at ``path`` describes exactly what
    :func:`compile_model` writes for its spec, plan, geometry and die: the matrices and vectors in
    order with their formats, shapes and placement, the address map, and per tensor its sections with
    the dtype and shape of the ROM layout (:func:`~hcemu.layout.packed_arrays`), aligned, inside
    ``[PREAMBLE_BYTES, payload_end)`` and not overlapping; the report fields have their JSON types.
    Counts are bounded before any list the spec implies is built (a spec claiming 10^9 layers costs
    nothing), and the placement is built only once every section is known to lie in the file.
    Returns ``(spec, plan, geometry, die, address_map)``; raises RomImageError naming the field.
    """
    def bad(msg):
        return RomImageError(f"{path}: corrupt directory: {msg}")

    def obj(v, what, keys=None, optional=()):
        if not isinstance(v, dict):
            raise bad(f"{what} must be an object, got {type(v).__name__}")
        if keys is not None:
            missing = [k for k in keys if k not in v and k not in optional]
            extra = sorted(str(k) for k in v if k not in keys)
            if missing or extra:
                raise bad(f"{what}: missing {missing or '-'}, unknown {extra or '-'}")
        return v

    def lst(v, what):
        if not isinstance(v, list):
            raise bad(f"{what} must be a list, got {type(v).__name__}")
        return v

    def number(v, what, none_ok=False):
        if v is None and none_ok:
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise bad(f"{what} must be a number, got {type(v).__name__} {v!r}")

    def same(got, want, what):
        if _canon(got) != _canon(want):
            raise bad(f"{what} is {got!r}, expected {want!r}")

    obj(d, "the directory")
    for key in ("spec", "plan", "geometry", "address_map", "tensors", "vectors", "totals"):
        if key not in d:
            raise bad(f"no {key!r}")
    same(d.get("format", "hcrom"), "hcrom", "format")
    same(d.get("version", VERSION), VERSION, "version")
    try:
        spec = ModelSpec.from_dict(d["spec"])
        plan = plan_from_dict(d["plan"])
        geometry = RomGeometry.from_dict(d["geometry"])
        die = DieAssignment.from_dict(obj(d["die"], "die")) if "die" in d else DieAssignment.whole(spec.n_layers)
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    if die.n_layers != spec.n_layers:
        raise bad(f"the die description is of a {die.n_layers}-layer model, the spec has {spec.n_layers}")
    if plan.source_formats:
        raise bad("the plan still asks for source formats (a compiled image holds them as overrides)")
    tensors, vectors = lst(d["tensors"], "tensors"), lst(d["vectors"], "vectors")
    if spec.n_matrices > MAX_MATRICES or die.n_die_layers > len(tensors) + len(vectors):
        raise bad(f"the spec lists {spec.n_matrices} matrices over {spec.n_layers} layers (limit {MAX_MATRICES}); "
                  f"the directory holds {len(tensors)} matrices and {len(vectors)} vectors")
    matrices, _ = _image_matrices(spec, plan, die)
    norms = _image_norms(spec, die)
    if len(tensors) != len(matrices) or len(vectors) != len(norms):
        raise bad(f"{len(tensors)} matrices and {len(vectors)} vectors, but the spec ({spec.n_layers} layers, "
                  f"{die.describe()}) needs {len(matrices)} and {len(norms)}")
    aliases = obj(d.get("aliases", {}), "aliases")
    same(aliases, {"output.weight": "token_embd.weight"} if spec.tied_embeddings and die.head else {}, "aliases")
    extents = []

    def sections(v, what, layout):
        obj(v, f"{what} sections", tuple(layout))
        for kind, (dtype, shape) in layout.items():
            sec = obj(v[kind], f"{what}/{kind}", ("offset", "nbytes", "dtype", "shape", "sha256"))
            same(sec["dtype"], dtype.name, f"{what}/{kind} dtype")
            same(sec["shape"], list(shape), f"{what}/{kind} shape")
            nbytes = math.prod(shape) * dtype.itemsize
            same(sec["nbytes"], nbytes, f"{what}/{kind} nbytes")
            off = sec["offset"]
            if (not isinstance(off, int) or isinstance(off, bool) or off % ALIGN or off < PREAMBLE_BYTES
                    or off + nbytes > payload_end):
                raise bad(f"section {what}/{kind} at {off!r}+{nbytes} is misplaced (payload "
                          f"{PREAMBLE_BYTES}..{payload_end}, {ALIGN}-byte aligned)")
            sha = sec["sha256"]
            if not isinstance(sha, str) or len(sha) != 64 or not _SHA256_HEX.issuperset(sha):
                raise bad(f"{what}/{kind} sha256 is not a SHA-256 hex digest: {sha!r}")
            extents.append((off, off + nbytes, f"{what}/{kind}"))

    report_keys = ("name", "kind", "layer", "region", "format", "bits_per_weight", "fmt", "n", "k", "source_type",
                   "method", "count", "rmse", "max_abs", "sqnr_db", "exact", "sum_sq_err", "sum_sq_ref",
                   "bank_base_row", "banks", "tensor_scale", "sections")
    for i, (t, (name, kind, layer, region, fmt, (n, k))) in enumerate(zip(tensors, matrices)):
        what = f"tensors[{i}]"
        obj(t, what, report_keys, optional=("count", "sum_sq_err", "sum_sq_ref", "bits_per_weight", "tensor_scale"))
        want = {"name": name, "kind": kind, "layer": layer, "region": region, "format": fmt.name,
                "fmt": _fmt_to_dict(fmt), "n": n, "k": k}
        for key, value in want.items():
            same(t[key], value, f"{what}.{key}")
        if not isinstance(t["source_type"], str) or t["method"] not in ("import", "quantize", "requantize"):
            raise bad(f"{what}: source_type {t['source_type']!r} / method {t['method']!r}")
        for key in _REPORT_NUMBERS:
            if key in t:
                number(t[key], f"{what}.{key}")
        number(t["sqnr_db"], f"{what}.sqnr_db", none_ok=True)
        if not isinstance(t["exact"], bool):
            raise bad(f"{what}.exact must be true or false, got {t['exact']!r}")
        if "tensor_scale" in t:
            ts = t["tensor_scale"]
            if fmt.block is None or fmt.block.name != "nvfp4" or not isinstance(ts, float) or not 0 < ts < math.inf:
                raise bad(f"{what}.tensor_scale {ts!r}: only NVFP4 matrices hold one, a positive finite float")
        try:
            layout = packed_arrays(fmt, n, k)
        except ValueError as exc:   # a width the format cannot tile
            raise bad(f"{what}: {exc}") from None
        sections(t["sections"], name, layout)
    for i, (v, (name, layer, length)) in enumerate(zip(vectors, norms)):
        what = f"vectors[{i}]"
        obj(v, what, ("name", "layer", "n", "source_type", "sections"))
        same([v["name"], v["layer"], v["n"]], [name, layer, length], f"{what} (name, layer, n)")
        if not isinstance(v["source_type"], str):
            raise bad(f"{what}.source_type must be a string")
        sections(v["sections"], name, {"values": (np.dtype(np.float32), (length,))})
    extents.sort()
    for (_s0, e0, a), (s1, _e1, b) in zip(extents, extents[1:]):
        if s1 < e0:
            raise bad(f"sections {a} and {b} overlap")
    # every matrix's bytes lie in the file now, so the placement's numbers are bounded by it
    try:
        amap = AddressMap(geometry, spec.n_layers, [(nm, reg, fmt, *shape) for nm, _k, _l, reg, fmt, shape in matrices],
                          spec.n_experts)
    except ValueError as exc:  # a layer the geometry cannot hold
        raise bad(f"the spec, plan and geometry do not make an image: {exc}") from None
    stored, placed = obj(d["address_map"], "address_map"), amap.to_dict()
    if spec.n_experts == 0 and "n_experts" not in stored:   # images written before experts existed
        placed.pop("n_experts", None)
    same(stored, placed, "address_map")
    for i, (t, (name, *_rest)) in enumerate(zip(tensors, matrices)):
        p = amap.by_name[name]
        same([t["bank_base_row"], t["banks"]], [p.base_row, p.n_banks], f"tensors[{i}] (bank_base_row, banks)")
    totals = obj(d["totals"], "totals", ("count", "rmse", "max_abs", "sqnr_db", "exact", "sum_sq_err",
                                         "sum_sq_ref", "exact_tensors", "tensors"))
    for key, value in totals.items():
        if key == "exact":
            if not isinstance(value, bool):
                raise bad("totals.exact must be true or false")
        else:
            number(value, f"totals.{key}", none_ok=key == "sqnr_db")
    notes = lst(d.get("notes", []), "notes")
    if not all(isinstance(x, str) for x in notes):
        raise bad("notes must be strings")
    for key in ("source", "created_by"):
        if not isinstance(d.get(key, ""), str):
            raise bad(f"{key} must be a string")
    number(d.get("compile_seconds", 0.0), "compile_seconds")
    return spec, plan, geometry, die, amap


def _created_by() -> str:
    from hcemu import __version__
    return f"hcemu {__version__}"


class RomImage:
    """A compiled ROM image, memory-mapped read-only.

    ``die``: the :class:`~hcemu.rom.die.DieAssignment` the image holds (the whole model unless it is
    one die of a multi-chip system). ``directory_sha256``: hex SHA-256 of its directory, which holds
    the SHA-256 of every section (a manifest names an image by it).

    ``RomImage.load(path, verify=True)``: ``verify=False`` skips the SHA-256 of the payload sections
    (seconds on an 8B image); the preamble and directory checksums are always checked.
    """

    def __init__(self, path: str, directory: dict, mm: mmap.mmap | None, payload_end: int | None = None):
        """Checks ``directory`` (:func:`check_directory`; sections must end by ``payload_end``, default
        the map's size) and raises RomImageError naming what is wrong."""
        self.path = path
        self.directory = directory
        self._mm = mm
        end = payload_end if payload_end is not None else (len(mm) if mm is not None else 0)
        self.spec, self.plan, self.geometry, self.die, self.address_map = check_directory(directory, path, end)
        self._tensors = {t["name"]: t for t in directory["tensors"]}
        self._vectors = {v["name"]: v for v in directory["vectors"]}
        self.aliases = dict(directory.get("aliases", {}))
        self.directory_sha256 = ""  # SHA-256 of the directory (hex), set by load()
        self._cache: dict[str, PackedWeights] = {}

    # ---- loading
    @classmethod
    def load(cls, path, verify: bool = True) -> "RomImage":
        """Open and check an image. Raises FileNotFoundError (no such file), another OSError (not
        readable: a directory, no permission), RomImageError (a ValueError: not an image, truncated,
        corrupt, or a directory that does not describe what the compiler writes)."""
        path = os.fspath(path)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            pre = f.read(PREAMBLE_BYTES)
            if len(pre) < _PRE.size + 32:
                raise RomImageError(f"{path}: truncated: {size} bytes, smaller than the {_PRE.size + 32}-byte preamble")
            magic, version, pre_bytes, dir_off, dir_len, file_bytes, dir_sha = _PRE.unpack_from(pre)
            if magic != MAGIC:
                raise RomImageError(f"{path}: not an hcemu ROM image (magic {magic!r}, expected {MAGIC!r})")
            if version != VERSION:
                raise RomImageError(f"{path}: unsupported ROM image version {version} (this hcemu reads version {VERSION})"
                                    + (": recompile it with this hcemu (hcemu compile)" if version < VERSION else ""))
            if hashlib.sha256(pre[:_PRE.size]).digest() != pre[_PRE.size:_PRE.size + 32]:
                raise RomImageError(f"{path}: corrupt preamble (SHA-256 mismatch)")
            if size < file_bytes:
                raise RomImageError(f"{path}: truncated: {size} bytes, the preamble says {file_bytes}")
            if size > file_bytes:
                raise RomImageError(f"{path}: {size - file_bytes} unexpected trailing bytes (file {size}, preamble says {file_bytes})")
            if pre_bytes != PREAMBLE_BYTES or dir_off < PREAMBLE_BYTES or dir_off + dir_len != file_bytes:
                raise RomImageError(f"{path}: corrupt preamble (directory at {dir_off}+{dir_len}, file {file_bytes})")
            f.seek(dir_off)
            blob = f.read(dir_len)
            if hashlib.sha256(blob).digest() != dir_sha:
                raise RomImageError(f"{path}: corrupt directory (SHA-256 mismatch)")
            try:
                directory = json.loads(blob.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, int digits
                raise RomImageError(f"{path}: unreadable directory: {type(exc).__name__}: {exc}") from None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            img = cls(path, directory, mm, payload_end=dir_off)
        except BaseException:
            mm.close()
            raise
        img.directory_sha256 = dir_sha.hex()
        try:
            if verify:
                img.verify()
            img._check_c_table(pre, dir_off)
        except BaseException:
            img.close()
            raise
        return img

    def _check_c_table(self, pre: bytes, payload_end: int) -> None:
        """An image with a C table (hcemu/rom/ctable.py): the preamble's record and the directory's entry
        agree, and the table's bytes are those :func:`~hcemu.rom.ctable.c_table` makes of the directory.
        Images written before the table existed have neither (the C library refuses them); a table of
        another version or event-field count (another hcemu's) is left to the C library."""
        entry = self.directory.get("c_table")
        rec = pre[ctable.RECORD_OFFSET:ctable.RECORD_OFFSET + ctable.RECORD.size]
        if entry is None:
            if rec.strip(b"\0"):
                raise RomImageError(f"{self.path}: corrupt preamble (a C table record, but no c_table in the directory)")
            return
        if not isinstance(entry, dict) or sorted(entry) != ["crc32", "nbytes", "offset", "version"] or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in entry.values()):
            raise RomImageError(f"{self.path}: corrupt directory: c_table must be an object of integers "
                                f"version, offset, nbytes, crc32, got {entry!r}"[:300])
        if entry["version"] != ctable.VERSION:
            return   # another hcemu's table: the C library it came with reads it; Python does not need it
        off, n = entry["offset"], entry["nbytes"]
        if off % ALIGN or off < PREAMBLE_BYTES or n < ctable.HEADER.size or off + n > payload_end:
            raise RomImageError(f"{self.path}: corrupt directory: the C table at {off}+{n} is misplaced")
        table = bytes(memoryview(self._mm)[off:off + n])
        if ctable.record(table, off) != rec or zlib.crc32(table) != entry["crc32"]:
            raise RomImageError(f"{self.path}: corrupt C table (its preamble record, CRC-32 or directory entry "
                                f"disagree)")
        if ctable.HEADER.unpack_from(table)[3] != len(FIELDS):
            return   # written by an hcemu that counted other event fields: not this one's to rebuild (C reads it)
        if table != c_table(self.spec, self.plan, self.die, self.directory["tensors"], self.directory["vectors"]):
            raise RomImageError(f"{self.path}: corrupt C table (it does not describe the directory)")

    def _sections(self):
        for t in self.directory["tensors"] + self.directory["vectors"]:
            for kind, sec in t["sections"].items():
                yield t, f"{t['name']}/{kind}", kind, sec

    def verify(self) -> None:
        """Check every section's SHA-256, and that scales, offsets and norm vectors hold defined values
        (finite floats; no undefined MXFP4/NVFP4 scale byte): a file edited and re-signed passes the
        checksums. RomImageError names the first bad section."""
        from hcemu.rom.blocks import undefined_scale_bytes

        for t, what, kind, sec in self._sections():
            h = hashlib.sha256(memoryview(self._mm)[sec["offset"]: sec["offset"] + sec["nbytes"]]).hexdigest()
            if h != sec["sha256"]:
                raise RomImageError(f"{self.path}: corrupt section {what} (SHA-256 mismatch)")
            if kind != "codes":
                levels = {kind: self._array(sec)}
            elif "fmt" in t and _fmt_from_dict(t["fmt"]).block is not None:   # the levels inside the records
                fmt = _fmt_from_dict(t["fmt"])
                levels = block_arrays(PackedWeights(fmt, t["n"], t["k"], self._array(sec)))
                del levels["codes"]
            else:
                continue
            for level, a in levels.items():
                where = what if kind != "codes" else f"{what} ({level})"
                if a.dtype.kind == "f":
                    if not np.isfinite(a).all():
                        raise RomImageError(f"{self.path}: section {where} holds NaN or infinity")
                elif level == "scales":
                    block = _fmt_from_dict(t["fmt"]).block
                    if block is not None and undefined_scale_bytes(a, block.scale).any():
                        raise RomImageError(f"{self.path}: section {where} holds undefined {block.scale} scale bytes")

    def _array(self, sec: dict) -> np.ndarray:
        # dtype, shape and bounds were checked against the format and the file by check_directory
        dt = np.dtype(sec["dtype"])
        a = np.frombuffer(self._mm, dtype=dt, count=sec["nbytes"] // dt.itemsize, offset=sec["offset"])
        return a.reshape(sec["shape"])

    # ---- content
    def names(self) -> list[str]:
        """Names of every stored tensor: matrices in placement order, then norm vectors."""
        return list(self._tensors) + list(self._vectors)

    def resolve(self, name: str) -> str:
        """The stored matrix serving ``name`` (``output.weight`` -> ``token_embd.weight`` when tied)."""
        name = self.aliases.get(name, name)
        if name not in self._tensors:
            raise KeyError(f"no matrix {name!r} in {self.path}; matrices: {len(self._tensors)}, "
                           f"e.g. {', '.join(list(self._tensors)[:3])}")
        return name

    def matrix(self, name: str) -> PackedWeights:
        """The matrix in ROM layout; its arrays are read-only views into the memory-mapped file."""
        name = self.resolve(name)
        if name not in self._cache:
            t = self._tensors[name]
            s = t["sections"]
            self._cache[name] = PackedWeights(_fmt_from_dict(t["fmt"]), t["n"], t["k"], self._array(s["codes"]),
                                              *(self._array(s[a]) if a in s else None for a in META_ARRAYS),
                                              float(t.get("tensor_scale", 1.0)))
        return self._cache[name]

    def vector(self, name: str) -> np.ndarray:
        """A norm weight vector, float32 (read-only view)."""
        try:
            return self._array(self._vectors[name]["sections"]["values"])
        except KeyError:
            raise KeyError(f"no vector {name!r} in {self.path}") from None

    def tensor_info(self, name: str) -> dict:
        return self._tensors[self.resolve(name)]

    @property
    def report(self) -> CompileReport:
        rows = tuple({k: v for k, v in t.items() if k not in ("fmt", "sections")} for t in self.directory["tensors"])
        return CompileReport(rows, self.directory["totals"], self.path, os.path.getsize(self.path),
                             self.directory.get("compile_seconds", 0.0), tuple(self.directory.get("notes", ())))

    # ---- banks (what the chip counts)
    def tensor_banks(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Chip-wide bank ids (int64) and rows each reads in one pass of a product over ``name``."""
        return self.address_map.tensor_banks(self.resolve(name))

    def row_banks(self, name: str, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Chip-wide bank ids and rows each reads to fetch one row of ``name`` (embedding lookup)."""
        return self.address_map.row_banks(self.resolve(name), row)

    def bank_image(self, region: int) -> np.ndarray:
        """The mask data of ``region``'s banks: uint8 (banks, bank_rows, word_bits // 8)."""
        return self.address_map.bank_image(region, lambda nm: code_tiles(self.matrix(nm)))

    @property
    def meta_bits(self) -> int:
        """Bits of scales (every level) and offsets held in ROM beside the banks (the format's widths:
        :meth:`WeightFormat.meta_bits`, which the host sections of integer formats equal)."""
        return sum(int(product_counts(_fmt_from_dict(t["fmt"]), t["n"], t["k"])[FIELD_INDEX["rom_meta_bits"]])
                   for t in self.directory["tensors"])

    @property
    def vector_bits(self) -> int:
        return sum(v["sections"]["values"]["nbytes"] * 8 for v in self.directory["vectors"])

    @property
    def rom_bits(self) -> RomBits:
        """What this image's ROM holds, read from its directory and address map (see :class:`RomBits`)."""
        used = sum(int(product_counts(_fmt_from_dict(t["fmt"]), t["n"], t["k"])[FIELD_INDEX["rom_code_bits"]])
                   for t in self.directory["tensors"])
        slots = sum(8 * tile_bytes(f) * math.prod(layout_shape(f, t["n"], t["k"]))   # the codes' host slots
                    for t in self.directory["tensors"] for f in (_fmt_from_dict(t["fmt"]),))
        return RomBits(used, dense_physical_bits(self.address_map.physical_bits, used, slots), self.meta_bits,
                       self.vector_bits, self.address_map.n_banks)

    def close(self) -> None:
        self._cache.clear()
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # arrays handed out still view the map; it closes when they are freed
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RomImage({self.path!r}, {self.spec.name}, plan {self.plan.name}, {len(self._tensors)} matrices)"
