"""The ROM image file (``.hcrom``): what the compiler writes and the chip reads.

Layout (all integers little-endian; ``docs/rom.md`` has the full description)::

    0      preamble, 4096 bytes: magic b"HCROM\\0\\x1a\\n", u32 version, u32 preamble size,
           u64 directory offset, u64 directory bytes, u64 file bytes, directory SHA-256,
           then SHA-256 of the preceding 72 bytes; zero padding
    4096   sections, each aligned to 4096 bytes: per matrix its codes (uint8, ROM tile layout),
           fp16 scales and (asymmetric) fp16 offsets; per norm vector its float32 values
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
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from hcemu.events import FIELD_INDEX, product_counts
from hcemu.formats import ActFormat, Plan, WeightFormat
from hcemu.layout import PackedWeights, dequantize, layout_shape, pack, tile_bytes
from hcemu.model.source import BLOCK_TYPES, FLOAT_TYPES
from hcemu.model.spec import ModelSpec
from hcemu.rom.address import AddressMap
from hcemu.rom.die import DieAssignment
from hcemu.rom.geometry import RomGeometry
from hcemu.rom.quantize import (ErrorStats, import_blocks, lossless_import, q4_0_offset_fits, quantize_codes,
                                quantize_matrix, represented)

MAGIC = b"HCROM\x00\x1a\n"
VERSION = 1
PREAMBLE_BYTES = 4096
ALIGN = 4096
_PRE = struct.Struct("<8sIIQQQ32s")
CHUNK_ELEMS = 1 << 22   # weights quantized per chunk (bounds the compiler's working memory)
META_ARRAYS = ("scales", "offsets", "subscales", "submins")  # PackedWeights arrays beside the codes


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
    return Plan(d["name"], _fmt_from_dict(d["matrices"]), _fmt_from_dict(d["embedding"]),
                _fmt_from_dict(d["output"]), ActFormat(**d["activations"]), d["kv"], d.get("description", ""),
                tuple((key, _fmt_from_dict(f)) for key, f in d.get("overrides", ())),
                bool(d.get("source_formats", False)))


def _fmt_from_dict(d: dict) -> WeightFormat:
    return WeightFormat(d["bits"], d["group"], d["asymmetric"], d.get("kind", "int"))


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


def _region_of(spec: ModelSpec, kind: str, layer) -> int:
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

    die: only the matrices of that die (its layers; the embedding and the head where it holds them).
    With tied embeddings a die holding the head but not the embedding stores its own copy of
    ``token_embd.weight`` (embedding format) in the head region.
    """
    die = _check_die(spec, die)
    notes = []
    out = []
    for name, kind, layer, shape in spec.matrices():
        if layer is not None and not die.holds_layer(layer):
            continue
        region = _region_of(spec, kind, layer)
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
            if (die.holds_layer(layer) if layer is not None else die.head)]


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
    return AddressMap(geometry, spec.n_layers, [(nm, reg, fmt, *shape) for nm, _k, _l, reg, fmt, shape in matrices])


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
    """ROM bits of each region (int64 (n_layers + 2,): layers, head, embedding) of the image
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
                want = int(np.prod(shape)) * np.dtype(dtype).itemsize
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
                nt, nb = layout_shape(fmt, n, k)
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

                sections = {"codes": section(code_chunks(), np.uint8, (nt, nb, tile_bytes(fmt)))}
                for a in META_ARRAYS:
                    if meta[a]:
                        shape = (nt,) + meta[a][0].shape[1:]
                        sections[a] = section(meta[a], meta[a][0].dtype, shape)
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
            f.write(head + hashlib.sha256(head).digest())
    finally:
        if bar is not None:
            bar.close()
    return CompileReport(tuple(report_rows), tot, os.fspath(out_path), file_bytes, time.perf_counter() - t0,
                         tuple(notes))


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

    def __init__(self, path: str, directory: dict, mm: mmap.mmap | None):
        self.path = path
        self.directory = directory
        self._mm = mm
        self.spec = ModelSpec.from_dict(directory["spec"])
        self.plan = plan_from_dict(directory["plan"])
        self.geometry = RomGeometry.from_dict(directory["geometry"])
        self._tensors = {t["name"]: t for t in directory["tensors"]}
        self._vectors = {v["name"]: v for v in directory["vectors"]}
        self.aliases = dict(directory.get("aliases", {}))
        try:
            self.die = (DieAssignment.from_dict(directory["die"]) if "die" in directory
                        else DieAssignment.whole(self.spec.n_layers))
        except (TypeError, ValueError) as exc:
            raise RomImageError(f"{path}: corrupt die description: {exc}") from None
        if self.die.n_layers != self.spec.n_layers:
            raise RomImageError(f"{path}: the die description is of a {self.die.n_layers}-layer model, "
                                f"the spec has {self.spec.n_layers}")
        self.directory_sha256 = ""  # SHA-256 of the directory (hex), set by load()
        self.address_map = AddressMap(self.geometry, self.spec.n_layers,
                                      [(t["name"], t["region"], _fmt_from_dict(t["fmt"]), t["n"], t["k"])
                                       for t in directory["tensors"]])
        stored = [r["banks"] for r in directory["address_map"]["regions"]]
        if stored != [int(b) for b in self.address_map.region_banks]:
            raise RomImageError(f"{path}: directory's bank counts {stored} disagree with the placement rule")
        self._cache: dict[str, PackedWeights] = {}

    # ---- loading
    @classmethod
    def load(cls, path, verify: bool = True) -> "RomImage":
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
                raise RomImageError(f"{path}: unsupported ROM image version {version} (this hcemu reads version {VERSION})")
            if hashlib.sha256(pre[:_PRE.size]).digest() != pre[_PRE.size:_PRE.size + 32]:
                raise RomImageError(f"{path}: corrupt preamble (SHA-256 mismatch)")
            if size < file_bytes:
                raise RomImageError(f"{path}: truncated: {size} bytes, the preamble says {file_bytes}")
            if size > file_bytes:
                raise RomImageError(f"{path}: {size - file_bytes} unexpected trailing bytes (file {size}, preamble says {file_bytes})")
            if pre_bytes != PREAMBLE_BYTES or dir_off + dir_len != file_bytes:
                raise RomImageError(f"{path}: corrupt preamble (directory at {dir_off}+{dir_len}, file {file_bytes})")
            f.seek(dir_off)
            blob = f.read(dir_len)
            if hashlib.sha256(blob).digest() != dir_sha:
                raise RomImageError(f"{path}: corrupt directory (SHA-256 mismatch)")
            try:
                directory = json.loads(blob.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RomImageError(f"{path}: unreadable directory: {exc}") from None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        img = cls(path, directory, mm)
        img.directory_sha256 = dir_sha.hex()
        for what, sec in img._sections():
            end = sec["offset"] + sec["nbytes"]
            if sec["offset"] % ALIGN or end > dir_off:
                raise RomImageError(f"{path}: section {what} at {sec['offset']}+{sec['nbytes']} is misplaced")
        if verify:
            img.verify()
        return img

    def _sections(self):
        for t in self.directory["tensors"] + self.directory["vectors"]:
            for kind, sec in t["sections"].items():
                yield f"{t['name']}/{kind}", sec

    def verify(self) -> None:
        """Check every section's SHA-256; RomImageError names the first corrupt one."""
        for what, sec in self._sections():
            h = hashlib.sha256(memoryview(self._mm)[sec["offset"]: sec["offset"] + sec["nbytes"]]).hexdigest()
            if h != sec["sha256"]:
                raise RomImageError(f"{self.path}: corrupt section {what} (SHA-256 mismatch)")

    def _array(self, sec: dict) -> np.ndarray:
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
        return self.address_map.bank_image(region, lambda nm: self.matrix(nm).codes)

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
        slots = sum(t["sections"]["codes"]["nbytes"] * 8 for t in self.directory["tensors"])
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
