"""LoRA adapters held in SRAM: the side path beside a ROM product (``csrc/hc_lora.c``).

One :class:`CimAdapter` is one adapted matrix (n x k, rank r) in the SRAM form: int8 ``A`` and ``B``
(:class:`hcemu.layout.PackedWeights`, through the same CIM kernels as the ROM, so every ISA path gives
the same bits) or fp16 ``A`` and ``B`` (the vector unit's 16-lane dot). :func:`adapter_apply` adds
``B (A x)`` to a product's output; numerics in ``docs/numerics.md`` ("LoRA adapters"), oracle
:mod:`hcemu.kernels.lora_ref`.
"""
from __future__ import annotations

from hcemu import _core

CimAdapter = _core.CimAdapter
"""``CimAdapter(a, b)``: int8 PackedWeights (r x k, n x r), or float16 arrays (r, k), (n, r)."""

adapter_apply = _core.adapter_apply
"""``adapter_apply(ad, q, act_scales, x, y, col=0) -> y``: ``y[:, col:col+n] += B (A x)`` in place.

int8 form: ``q`` int8 (m, k), ``act_scales`` float32 (m, k // Ga) — the ROM product's activations;
fp16 form: ``x`` float32 (m, k). One C call, the GIL released.
"""
