"""Write a GGUF file re-quantized to one block type (a k-quant, Q5_0/Q5_1, MXFP4, NVFP4, Q8_0, Q4_0):
a model in the format under test whose own float weights are the reference, so that an image compiled
with plan ``gguf`` from it is a lossless import (its KLD against that file's float reference is the
activation and KV quantization alone).

``requantize_gguf(src, dst, "Q4_K")`` copies every metadata key of ``src`` and re-quantizes each matrix
(:func:`hcemu.rom.blocks.quantize`, or ``gguf.quants.quantize`` for Q8_0/Q4_0) from its float32
values; rows that are not a multiple of the type's super-block fall back as llama.cpp does
(:func:`hcemu.formats.fallback_format`). Vectors are written as float32. The file appears at ``dst``
only when complete (written beside it, then renamed).
"""
from __future__ import annotations

import os

import numpy as np

from hcemu.formats import BLOCK_KINDS, KIND_BY_GGML, WeightFormat, fallback_format

_INT_TYPES = {("int", 8, False): "Q8_0", ("int", 4, False): "Q4_0", ("int", 4, True): "Q4_1"}


def type_for(ggml_type: str, k: int) -> str:
    """The GGUF type a row of ``k`` weights is written in when ``ggml_type`` is asked for."""
    if ggml_type in ("Q8_0", "Q4_0", "Q4_1"):
        return ggml_type
    if ggml_type not in KIND_BY_GGML:
        raise ValueError(f"cannot write {ggml_type!r}; known: Q8_0, Q4_0, Q4_1, {', '.join(KIND_BY_GGML)}")
    fmt = fallback_format(WeightFormat.of_kind(KIND_BY_GGML[ggml_type].name), k)
    if fmt.block is not None:
        return fmt.block.ggml_type if k % fmt.block.super_k == 0 else "Q8_0"
    return _INT_TYPES[(fmt.kind, fmt.bits, fmt.asymmetric)]


def requantize_gguf(src, dst, ggml_type: str) -> dict:
    """Write ``dst`` from ``src`` with every matrix in ``ggml_type`` (module doc). Returns
    ``{tensor name: type written}``."""
    import gguf

    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom import blocks

    reader = gguf.GGUFReader(os.fspath(src), "r")
    arch = reader.fields["general.architecture"].contents()
    written = {}
    dst = os.fspath(dst)
    tmp = f"{dst}.{os.getpid()}.tmp"  # renamed over dst when complete (gguf's writer wants a path)
    try:
        with GGUFSource(src) as source:
            writer = gguf.GGUFWriter(tmp, arch)
            for key, field in reader.fields.items():
                if key.startswith("GGUF.") or key == "general.architecture":
                    continue
                vtype = field.types[0]
                sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
            for t in reader.tensors:
                w = source.float32(t.name)
                if w.ndim != 2:
                    writer.add_tensor(t.name, np.ascontiguousarray(w, np.float32))
                    written[t.name] = "F32"
                    continue
                ty = type_for(ggml_type, w.shape[1])
                if ty in BLOCK_KINDS_GGML:
                    # GGUF's NVFP4 blocks carry no tensor scale: quantize with g = 1
                    data = blocks.encode(blocks.quantize(w, ty, t.name, 1.0 if ty == "NVFP4" else None), ty)
                else:
                    data = gguf.quants.quantize(w, gguf.GGMLQuantizationType[ty])
                writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType[ty])
                written[t.name] = ty
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return written


BLOCK_KINDS_GGML = {k.ggml_type for k in BLOCK_KINDS.values()}
