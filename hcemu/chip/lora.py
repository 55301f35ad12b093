"""LoRA adapters resident in the chip's SRAM: the form the side path reads, its size and its events.

:class:`SramAdapter` turns a :class:`hcemu.model.lora.LoraAdapter` into what the silicon would hold
(docs/numerics.md "LoRA adapters"): for every adapted matrix, ``A`` (r x k) and ``s * B`` (n x r, the
adapter scale folded in) either as int8 with fp16 scales (default; blocks of 32 inputs where the width
allows, else one scale per row: :func:`hcemu.formats.adapter_weight_format`) quantized by the
compiler's rule, or as fp16 values. The ROM image is never touched.
"""
from __future__ import annotations

import numpy as np

from hcemu.events import FIELDS, adapter_counts
from hcemu.formats import ADAPTER_BLOCK, ADAPTER_FORMATS, WeightFormat, adapter_sram_bytes, adapter_weight_format
from hcemu.kernels.lora import CimAdapter
from hcemu.model.lora import LoraAdapter, LoraError
from hcemu.model.spec import LAYER_MATRICES
from hcemu.rom.quantize import quantize_matrix

DEFAULT_ADAPTER_SRAM_BYTES = 32 * 2**20
"""SRAM a :class:`~hcemu.chip.Chip` sets aside for adapters beside its KV cache when no ``sram_bytes``
is given (assumption: room for several rank-16 adapters on every matrix of a small model, e.g. six of
5.2 MB on SmolLM2-135M in int8; a Llama 3.1 8B one needs 42 MB)."""


def _b_layout(sb: np.ndarray):
    """``(matrix, WeightFormat)`` the host holds an int8 ``B`` (n x r) in: for r < 32 its one scale per
    row is held as one block of 32 inputs whose padding is zero (the same codes and scale, the faster
    block kernels); else :func:`hcemu.formats.adapter_weight_format`."""
    n, r = sb.shape
    if r < ADAPTER_BLOCK:
        padded = np.zeros((n, ADAPTER_BLOCK), np.float32)
        padded[:, :r] = sb
        return padded, WeightFormat(8, ADAPTER_BLOCK)
    return sb, adapter_weight_format(r)


def _fp16(x: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = np.ascontiguousarray(x, dtype=np.float32).astype(np.float16)
    if not np.isfinite(h).all():
        raise LoraError(f"{what}: a value exceeds the fp16 range (max |x| {float(np.abs(x).max()):.6g})")
    return h


class SramAdapter:
    """One LoRA adapter in a chip's SRAM.

    ``slots[(layer, kind)]``: the :class:`~hcemu.kernels.lora.CimAdapter` of each adapted matrix;
    ``nbytes``: SRAM bytes it occupies (:func:`hcemu.formats.adapter_sram_bytes` summed);
    ``layer_counts``: int64 (n_layers, len(FIELDS)) events of one token pass through every layer's
    side paths (:func:`hcemu.events.adapter_counts`).
    """

    def __init__(self, adapter: LoraAdapter, spec, fmt: str = "int8", name: str | None = None):
        if fmt not in ADAPTER_FORMATS:
            raise ValueError(f"adapter format must be one of {ADAPTER_FORMATS}, got {fmt!r}")
        if not isinstance(adapter, LoraAdapter):
            raise TypeError(f"expected a LoraAdapter, got {type(adapter).__name__}")
        self.source = adapter
        self.name = name or adapter.name
        self.fmt = fmt
        self.slots = {}
        self.layer_counts = np.zeros((spec.n_layers, len(FIELDS)), np.int64)
        nbytes = 0
        for (layer, kind), p in adapter.pairs.items():
            n, k = spec.matrix_shape(kind)
            r = p.rank
            if layer >= spec.n_layers or p.a.shape != (r, k) or p.b.shape != (n, r):
                raise LoraError(f"adapter {self.name!r}: blk.{layer}.{kind} ({p.a.shape}, {p.b.shape}) does not "
                                f"fit {spec.name} ({spec.n_layers} layers, {kind} {n}x{k})")
            where = f"adapter {self.name!r} blk.{layer}.{kind}"
            sb = np.float32(p.scale) * p.b
            if fmt == "int8":
                a = quantize_matrix(p.a, adapter_weight_format(k), f"{where}.lora_a")
                b = quantize_matrix(*_b_layout(sb), f"{where}.lora_b (scaled)")
            else:
                a, b = _fp16(p.a, f"{where}.lora_a"), _fp16(sb, f"{where}.lora_b (scaled)")
            self.slots[(layer, kind)] = CimAdapter(a, b)
            nbytes += adapter_sram_bytes(fmt, n, k, r)
            self.layer_counts[layer] += adapter_counts(fmt, n, k, r)
        self.nbytes = int(nbytes)

    def __repr__(self) -> str:
        return (f"SramAdapter({self.name!r}, {self.fmt}, {len(self.slots)} matrices, ranks "
                f"{sorted(self.source.ranks)}, {self.nbytes} bytes)")


def selection_slots(adapters, n_layers: int) -> list:
    """Per layer, 7 lists (LAYER_MATRICES order) of the CimAdapters of ``adapters`` in order."""
    slots = [[[] for _ in LAYER_MATRICES] for _ in range(n_layers)]
    col = {k: j for j, k in enumerate(LAYER_MATRICES)}
    for ad in adapters:
        for (layer, kind), ca in ad.slots.items():
            slots[layer][col[kind]].append(ca)
    return slots
