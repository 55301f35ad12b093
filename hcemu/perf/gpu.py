"""GpuModel: a roofline over the same per-layer work the chip does — weights, KV bytes and FLOPs.

One decode step of a batch of ``B`` users at position ``p`` takes

    t(B, p) = max((W + B * KV(p)) / (bandwidth * eta_mem), B * FLOP(p) / (peak * eta_compute))
              + (kernels_per_layer * n_layers + kernels_head) * launch_overhead

with ``W`` the weight bytes read once per step (every layer matrix and the LM head in the GPU's
weight dtype, plus one embedding row per user), ``KV(p)`` the K/V bytes one user reads at position ``p``
(``p + 1`` keys) and ``FLOP(p) = 2 * (weight MACs + attention MACs)``. A mixture-of-experts layer reads
its own matrices and the experts the batch's tokens fire: under balanced routing
``E * (1 - (1 - k/E)^B)`` distinct experts for ``B`` users (``k`` at batch 1); each user's FLOPs count
its ``k`` experts. Per-user tok/s at batch 1 is the
mean over the decode positions; the serving curve evaluates batches at the mean decode position.
The largest batch is bounded by HBM (weights + every user's KV at the final context) and by
``max_batch``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hcemu.model.spec import ModelSpec
from hcemu.perf.analytic import decode_positions
from hcemu.perf.specs import DTYPE_BYTES, GpuSpec, get_gpu


@dataclass(frozen=True)
class GpuWork:
    """Per-step work of one user's decode token on a GPU (bytes, FLOPs), affine in the keys attended."""

    weight_bytes: float          # read once per step at batch 1, shared by the batch
    per_user_bytes: float        # embedding row, per user per step
    kv_bytes_per_key: float      # per user per key attended
    flops: float                 # per user per step, weight products
    flops_per_key: float         # per user per key attended (q.k and p.v)
    expert_bytes: float = 0.0    # one routed expert of every layer (mixture of experts), in weight bytes
    n_experts: int = 0
    n_experts_used: int = 0

    @classmethod
    def of(cls, spec: ModelSpec, gpu: GpuSpec) -> "GpuWork":
        wb, kb = DTYPE_BYTES[gpu.weight_dtype], DTYPE_BYTES[gpu.kv_dtype]
        layer = spec.active_layer_params      # a layer's own matrices and the experts one token fires
        head = spec.vocab_size * spec.d_model
        return cls(weight_bytes=(spec.n_layers * layer + head) * wb, per_user_bytes=spec.d_model * wb,
                   kv_bytes_per_key=spec.n_layers * 2 * spec.kv_dim * kb,
                   flops=2.0 * (spec.n_layers * layer + head),
                   flops_per_key=spec.n_layers * 2.0 * 2 * spec.n_heads * spec.head_dim,
                   expert_bytes=spec.n_layers * spec.expert_params * wb, n_experts=spec.n_experts,
                   n_experts_used=spec.n_experts_used)

    def batch_weight_bytes(self, batch):
        """Weight bytes one step of ``batch`` users reads: with experts, the distinct ones the batch fires
        (balanced routing: ``E (1 - (1 - k/E)^B)`` per layer)."""
        batch = np.asarray(batch, dtype=np.float64)
        if not self.n_experts:
            return self.weight_bytes + 0.0 * batch
        fired = self.n_experts * (1.0 - (1.0 - self.n_experts_used / self.n_experts) ** batch)
        return self.weight_bytes + (fired - self.n_experts_used) * self.expert_bytes

    @property
    def resident_bytes(self) -> float:
        """Weight bytes held in GPU memory (every expert)."""
        return self.weight_bytes + (self.n_experts - self.n_experts_used) * self.expert_bytes


@dataclass(frozen=True)
class GpuResult:
    gpu: str
    model: str
    n_prompt: int
    n_generated: int
    latency_s_per_token: float
    per_user_tok_s: float
    serving_batch: int
    serving_per_user_tok_s: float
    aggregate_tok_s: float
    power_w: float
    energy_j_per_token: float
    energy_j_per_token_batch1: float
    weight_bytes: float
    memory_batch_limit: int

    def to_dict(self) -> dict:
        return asdict(self)


class GpuModel:
    def __init__(self, gpu: GpuSpec | str = "b200"):
        self.gpu = get_gpu(gpu)

    def weight_bytes(self, spec: ModelSpec) -> float:
        """Bytes of weights the GPU holds (every layer matrix, every expert, the LM head); a batch-1
        decode step reads :attr:`GpuWork.weight_bytes` of them."""
        return GpuWork.of(spec, self.gpu).resident_bytes

    def step_seconds(self, spec: ModelSpec, batch, keys) -> np.ndarray:
        """Seconds of one decode step for ``batch`` users each attending ``keys`` keys (broadcast arrays)."""
        g, w = self.gpu, GpuWork.of(spec, self.gpu)
        batch = np.asarray(batch, dtype=np.float64)
        keys = np.asarray(keys, dtype=np.float64)
        if np.any(batch < 1):
            raise ValueError(f"batch must be >= 1, got {batch.min()}")
        mem = (w.batch_weight_bytes(batch) + batch * (w.per_user_bytes + keys * w.kv_bytes_per_key)) / (
            g.mem_bandwidth_tb_s * 1e12 * g.bandwidth_efficiency)
        comp = batch * (w.flops + keys * w.flops_per_key) / (
            g.peak_tflops(g.weight_dtype) * 1e12 * g.compute_efficiency)
        launches = (g.kernels_per_layer * spec.n_layers + g.kernels_head) * g.kernel_launch_us * 1e-6
        return np.maximum(mem, comp) + launches

    def arithmetic_intensity(self, spec: ModelSpec, batch, keys) -> np.ndarray:
        """FLOPs per HBM byte of one step (for the roofline plot)."""
        w = GpuWork.of(spec, self.gpu)
        batch = np.asarray(batch, dtype=np.float64)
        flops = batch * (w.flops + keys * w.flops_per_key)
        return flops / (w.batch_weight_bytes(batch) + batch * (w.per_user_bytes + keys * w.kv_bytes_per_key))

    def max_batch(self, spec: ModelSpec, context: int) -> int:
        """Users whose KV at ``context`` tokens fits in HBM beside the weights (capped by ``max_batch``)."""
        g, w = self.gpu, GpuWork.of(spec, self.gpu)
        free = g.memory_gb * 1e9 * g.usable_memory_fraction - w.resident_bytes
        if free <= 0:
            return 0
        return int(min(g.max_batch, free // (context * w.kv_bytes_per_key)))

    def serving_curve(self, spec: ModelSpec, n_prompt: int, n_generated: int, batches=None) -> dict[str, np.ndarray]:
        """Per-user and aggregate tok/s as the batch grows (users at the mean decode position)."""
        context = n_prompt + n_generated - 1
        top = self.max_batch(spec, context)
        if top < 1:
            raise ValueError(f"{spec.name} does not fit in {self.gpu.name}'s {self.gpu.memory_gb} GB "
                             f"with a {context}-token context")
        b = np.arange(1, top + 1) if batches is None else np.asarray(batches, dtype=np.int64)
        keys = np.mean(decode_positions(n_prompt, n_generated) + 1.0)
        t = self.step_seconds(spec, b, keys)
        return {"batch": b, "per_user_tok_s": 1.0 / t, "aggregate_tok_s": b / t}

    def evaluate(self, spec: ModelSpec, n_prompt: int, n_generated: int) -> GpuResult:
        if n_prompt < 1 or n_generated < 2:
            raise ValueError(f"need n_prompt >= 1 and n_generated >= 2, got {n_prompt}, {n_generated}")
        pos = decode_positions(n_prompt, n_generated)
        latency = float(self.step_seconds(spec, 1, pos + 1.0).mean())
        curve = self.serving_curve(spec, n_prompt, n_generated)
        i = len(curve["batch"]) - 1
        agg = float(curve["aggregate_tok_s"][i])
        p = self.gpu.power_w
        return GpuResult(
            gpu=self.gpu.name, model=spec.name, n_prompt=n_prompt, n_generated=n_generated,
            latency_s_per_token=latency, per_user_tok_s=1.0 / latency, serving_batch=int(curve["batch"][i]),
            serving_per_user_tok_s=float(curve["per_user_tok_s"][i]), aggregate_tok_s=agg, power_w=p,
            energy_j_per_token=p / agg, energy_j_per_token_batch1=p * latency,
            weight_bytes=GpuWork.of(spec, self.gpu).weight_bytes,
            memory_batch_limit=self.max_batch(spec, n_prompt + n_generated - 1))
