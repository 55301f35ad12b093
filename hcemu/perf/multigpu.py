"""Tensor parallelism on GPUs: a model too large for one GPU's memory, split over ``tp`` GPUs.

Each GPU holds ``1 / tp`` of every layer matrix and of the LM head (column/row-parallel, Megatron
style) and of every user's KV cache (KV heads split); one decode step of a batch of ``B`` users at
``keys`` keys takes, per GPU,

    t = max((W / tp + B (row + keys KV / tp)) / (BW eta_mem), B FLOP(keys) / tp / (peak eta_compute))
        + launches + allreduces_per_layer x n_layers x allreduce(B x d_model x dtype bytes)

with the roofline coefficients of :meth:`hcemu.perf.gpu.GpuModel.step_coefficients` (the weight, KV and
FLOP terms divided by ``tp``, the embedding row and the launches not) and the all-reduce of
:class:`hcemu.perf.links.TensorParallelSpec`. Power and price are ``tp`` GPUs'.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from hcemu.model.spec import ModelSpec
from hcemu.perf.gpu import GpuModel, GpuResult, GpuWork
from hcemu.perf.links import GPU_TP_PRESET, TensorParallelSpec, get_tp
from hcemu.perf.specs import DTYPE_BYTES, GpuSpec, get_gpu

TP_DEGREES = (1, 2, 4, 8)
"""Tensor-parallel degrees tried, within one 8-GPU NVLink server."""


class TensorParallelGpuModel(GpuModel):
    """:class:`GpuModel` over ``tp`` GPUs joined by NVLink (``interconnect``: a
    :class:`TensorParallelSpec` or preset name; default the GPU's in :data:`GPU_TP_PRESET`)."""

    def __init__(self, gpu: GpuSpec | str = "b200", tp: int = 2, interconnect: TensorParallelSpec | str | None = None,
                 engine=None):
        super().__init__(gpu, engine)
        if isinstance(tp, bool) or int(tp) != tp or tp < 1:
            raise ValueError(f"tp must be a positive integer, got {tp!r}")
        self.tp = int(tp)
        base = self.gpu.name.split("-")[0]   # a deployment variant ("b200-fp8") keeps its board's NVLink
        self.interconnect = get_tp(interconnect or GPU_TP_PRESET.get(base, "nvlink4-tp"))

    def weight_bytes(self, spec: ModelSpec) -> float:
        """Weight bytes one GPU holds (its 1 / tp share of :attr:`GpuWork.resident_bytes`: every expert of a
        mixture-of-experts model, as :meth:`GpuModel.weight_bytes`)."""
        return GpuWork.of(spec, self.gpu).resident_bytes / self.tp

    def allreduce_seconds(self, spec: ModelSpec, batch) -> np.ndarray:
        """Seconds of one step's all-reduces for ``batch`` users (0 at tp = 1)."""
        batch = np.asarray(batch, dtype=np.float64)
        ic = self.interconnect
        if self.tp == 1:
            return np.zeros_like(batch)
        nbytes = batch * spec.d_model * DTYPE_BYTES[self.gpu.weight_dtype]
        return ic.allreduces_per_layer * spec.n_layers * np.vectorize(lambda b: ic.allreduce_s(self.tp, b))(nbytes)

    def step_seconds(self, spec: ModelSpec, batch, keys) -> np.ndarray:
        """Seconds of one decode step of ``batch`` users at ``keys`` keys on each of the ``tp`` GPUs."""
        batch = np.asarray(batch, dtype=np.float64)
        keys = np.asarray(keys, dtype=np.float64)
        if np.any(batch < 1):
            raise ValueError(f"batch must be >= 1, got {batch.min()}")
        c, tp = self.step_coefficients(spec), self.tp
        mem = c.weights_s(batch) / tp + batch * c.mem_s_per_token + batch * keys * c.mem_s_per_kv_key / tp
        comp = batch * (c.comp_s_per_token + keys * c.comp_s_per_attn_key) / tp
        return np.maximum(mem, comp) + c.launch_s + self.allreduce_seconds(spec, batch)

    def max_batch(self, spec: ModelSpec, context: int) -> int:
        """Users whose KV share at ``context`` tokens fits beside the weight share in each GPU."""
        g, w = self.gpu, GpuWork.of(spec, self.gpu)
        free = g.memory_gb * 1e9 * g.usable_memory_fraction - w.resident_bytes / self.tp
        if free <= 0:
            return 0
        return int(min(g.max_batch, free // (context * w.kv_bytes_per_key / self.tp)))

    def evaluate(self, spec: ModelSpec, n_prompt: int, n_generated: int) -> GpuResult:
        """As :meth:`GpuModel.evaluate`, with ``tp`` GPUs' power (``power_w``, energies per token)."""
        r = super().evaluate(spec, n_prompt, n_generated)
        p = self.gpu.power_w * self.tp
        return replace(r, gpu=f"{self.gpu.name} x{self.tp}", power_w=p, energy_j_per_token=p / r.aggregate_tok_s,
                       energy_j_per_token_batch1=p * r.latency_s_per_token)


def tensor_parallel_degree(spec: ModelSpec, gpu: GpuSpec | str, context: int, degrees=TP_DEGREES) -> int | None:
    """The smallest degree in ``degrees`` whose GPUs hold ``spec``'s weights and one user's KV at
    ``context`` tokens; None when even the largest does not."""
    gpu = get_gpu(gpu)
    for tp in degrees:
        if TensorParallelGpuModel(gpu, tp).max_batch(spec, context) >= 1:
            return tp
    return None


def cheapest_tensor_parallel(spec: ModelSpec, gpu: GpuSpec | str, n_prompt: int, n_generated: int, cost="default",
                             degrees=TP_DEGREES):
    """Among the degrees that hold the model and one user's KV, the one with the lowest cost per Mtok
    at its largest batch (what a provider would deploy): ``(tp, GpuResult, cents per Mtok)``, or None
    when no degree fits."""
    from hcemu.perf.cost import CostModel

    gpu = get_gpu(gpu)
    cm = CostModel(cost)
    best = None
    for tp in degrees:
        model = TensorParallelGpuModel(gpu, tp)
        if model.max_batch(spec, n_prompt + n_generated - 1) < 1:
            continue
        r = model.evaluate(spec, n_prompt, n_generated)
        cents = tp * cm.gpu(gpu, r.aggregate_tok_s).cents_per_mtok
        if best is None or cents < best[2]:
            best = (tp, r, float(cents))
    return best
