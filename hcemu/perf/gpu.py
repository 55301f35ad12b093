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
        (balanced routing: ``E (1 - (1 - k/E)^B)`` per layer; :meth:`StepCoefficients.weights_s`)."""
        c = StepCoefficients(self.weight_bytes, 0, 0, 0, 0, 0, self.expert_bytes, self.n_experts,
                             self.n_experts_used)
        return c.weights_s(batch)

    @property
    def resident_bytes(self) -> float:
        """Weight bytes held in GPU memory (every expert)."""
        return self.weight_bytes + (self.n_experts - self.n_experts_used) * self.expert_bytes


_SCALARS = (int, float, np.integer, np.floating)


@dataclass(frozen=True)
class StepCoefficients:
    """Seconds per unit of one step's roofline terms (see :meth:`GpuModel.step_coefficients`)."""

    mem_s: float                 # the weights, read once per step
    mem_s_per_token: float       # embedding row per token in the step
    mem_s_per_kv_key: float      # one key's K/V read by one sequence (KV efficiency applied)
    comp_s_per_token: float      # weight products of one token
    comp_s_per_attn_key: float   # q.k and p.v of one token against one key
    launch_s: float              # kernel launches of one step
    expert_mem_s: float = 0.0    # one more distinct expert in every layer (mixture of experts)
    n_experts: int = 0
    n_experts_used: int = 0

    def weights_s(self, tokens):
        """Seconds to read the weights a step of ``tokens`` tokens needs: ``mem_s`` (its layers' own
        matrices and ``k`` experts each) plus the further experts the tokens fire under balanced routing,
        ``E (1 - (1 - k/E)^tokens) - k`` per layer (0 for a dense model)."""
        scalar = isinstance(tokens, _SCALARS)   # a plain float for one step: the serving simulator calls this per step
        if not self.n_experts:
            return self.mem_s if scalar else np.full(np.shape(tokens), self.mem_s)
        t = max(float(tokens), 1.0) if scalar else np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
        fired = self.n_experts * (1.0 - (1.0 - self.n_experts_used / self.n_experts) ** t)
        return self.mem_s + (fired - self.n_experts_used) * self.expert_mem_s


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
    """The roofline of one GPU. engine: an :class:`~hcemu.perf.deploy.EngineSpec` (or its name) whose
    ``kv_read_efficiency`` derates the KV-cache stream of every step and whose limits
    :meth:`saturated_throughput` uses; without one the KV stream runs at ``bandwidth_efficiency`` like
    the weights (the batch-1 figures of ``hcemu compare``)."""

    def __init__(self, gpu: GpuSpec | str = "b200", engine=None):
        from hcemu.perf.deploy import get_engine

        self.gpu = get_gpu(gpu)
        self.engine = None if engine is None else get_engine(engine)
        self.kv_efficiency = 1.0 if self.engine is None else self.engine.kv_read_efficiency

    def weight_bytes(self, spec: ModelSpec) -> float:
        """Bytes of weights the GPU holds (every layer matrix, every expert, the LM head); a batch-1
        decode step reads :attr:`GpuWork.weight_bytes` of them."""
        return GpuWork.of(spec, self.gpu).resident_bytes

    def step_seconds(self, spec: ModelSpec, batch, keys) -> np.ndarray:
        """Seconds of one decode step for ``batch`` users each attending ``keys`` keys (broadcast arrays)."""
        batch = np.asarray(batch, dtype=np.float64)
        if np.any(batch < 1):
            raise ValueError(f"batch must be >= 1, got {batch.min()}")
        return self.mixed_step_seconds(spec, batch, batch * np.asarray(keys, dtype=np.float64))

    def mixed_step_seconds(self, spec: ModelSpec, decode_tokens, decode_keys, prefill_tokens=0.0,
                           prefill_attn_keys=0.0, prefill_kv_keys=0.0) -> np.ndarray:
        """Seconds of one continuous-batching step (broadcast arrays):

        decode_tokens: sequences decoding one token each; decode_keys: keys they attend in total (read
        from the KV cache and multiplied); prefill_tokens: prompt tokens of the chunks in the step;
        prefill_attn_keys: keys those tokens attend in total (causal: token ``i`` of a prompt attends
        ``i + 1``); prefill_kv_keys: keys the chunks read from the KV cache (each chunk reads its prefix
        once). The roofline of the module docstring with ``B * FLOP`` and ``B * bytes`` replaced by
        these totals; a decode-only step is :meth:`step_seconds`.
        """
        c = self.step_coefficients(spec)
        tokens = np.asarray(decode_tokens, dtype=np.float64) + np.asarray(prefill_tokens, dtype=np.float64)
        kv_read = np.asarray(decode_keys, dtype=np.float64) + np.asarray(prefill_kv_keys, dtype=np.float64)
        attn = np.asarray(decode_keys, dtype=np.float64) + np.asarray(prefill_attn_keys, dtype=np.float64)
        mem = c.weights_s(tokens) + tokens * c.mem_s_per_token + kv_read * c.mem_s_per_kv_key
        comp = tokens * c.comp_s_per_token + attn * c.comp_s_per_attn_key
        return np.maximum(mem, comp) + c.launch_s

    def step_coefficients(self, spec: ModelSpec) -> "StepCoefficients":
        """The step roofline as plain numbers (seconds per unit), for callers that price millions of steps
        one at a time (the serving simulator): :meth:`mixed_step_seconds` is
        ``max(mem_s + tokens * mem_s_per_token + kv_keys * mem_s_per_kv_key,
        tokens * comp_s_per_token + attn_keys * comp_s_per_attn_key) + launch_s``."""
        g, w = self.gpu, GpuWork.of(spec, self.gpu)
        bw = g.mem_bandwidth_tb_s * 1e12 * g.bandwidth_efficiency
        peak = g.peak_tflops(g.weight_dtype) * 1e12 * g.compute_efficiency
        return StepCoefficients(mem_s=w.weight_bytes / bw, mem_s_per_token=w.per_user_bytes / bw,
                                mem_s_per_kv_key=w.kv_bytes_per_key / (bw * self.kv_efficiency),
                                comp_s_per_token=w.flops / peak, comp_s_per_attn_key=w.flops_per_key / peak,
                                launch_s=self.launch_seconds(spec), expert_mem_s=w.expert_bytes / bw,
                                n_experts=w.n_experts, n_experts_used=w.n_experts_used)

    def launch_seconds(self, spec: ModelSpec) -> float:
        """Fixed kernel-launch time of one step (``kernels_per_layer * n_layers + kernels_head`` launches)."""
        g = self.gpu
        return (g.kernels_per_layer * spec.n_layers + g.kernels_head) * g.kernel_launch_us * 1e-6

    def kv_capacity_tokens(self, spec: ModelSpec, memory_fraction: float | None = None) -> int:
        """Tokens of KV cache that fit in HBM beside the weights (``memory_fraction`` of HBM for weights
        and KV; default the preset's ``usable_memory_fraction``). 0 when the weights do not fit."""
        g, w = self.gpu, GpuWork.of(spec, self.gpu)
        frac = g.usable_memory_fraction if memory_fraction is None else float(memory_fraction)
        free = g.memory_gb * 1e9 * frac - w.resident_bytes
        return max(0, int(free // w.kv_bytes_per_key))

    def saturated_throughput(self, spec: ModelSpec, n_prompt: int, n_generated: int) -> dict:
        """Steady-state output tok/s of continuous batching with chunked prefill under unbounded load
        (every request ``n_prompt`` in, ``n_generated`` out), the setting of offline max-throughput
        benchmarks. Closed form (docs/serving.md):

        * resident sequences ``B = min(max_num_seqs, KV tokens // (n_prompt + n_generated - 1))`` (each
          request's whole context reserved at admission, as the serving simulator does);
        * flow balance: a request finishes every ``n_generated - 1`` decode steps of its sequence and
          needs ``n_prompt`` prefill tokens, so a step carries ``d`` decode tokens and ``c = d * n_prompt /
          (n_generated - 1)`` prefill tokens, with ``d + c <= max_num_batched_tokens`` and ``d <= B``;
        * decode tokens attend ``n_prompt + n_generated / 2`` keys on average, prefill tokens
          ``(n_prompt + 1) / 2``, and each prompt's KV is read once;
        * output tok/s ``= d * n_generated / ((n_generated - 1) * t_step)``.

        The engine is the model's (``vllm`` when it has none). Returns ``{"output_tok_s", "step_s",
        "decode_tokens", "prefill_tokens", "resident", "bound"}`` (bound: "max_num_seqs", "kv_memory" or
        "token_budget": what limits ``d``).
        """
        from hcemu.perf.deploy import get_engine

        if self.engine is None:
            return GpuModel(self.gpu, "vllm").saturated_throughput(spec, n_prompt, n_generated)
        eng = self.engine
        if n_prompt < 1 or n_generated < 2:
            raise ValueError(f"need n_prompt >= 1 and n_generated >= 2, got {n_prompt}, {n_generated}")
        kv_seqs = self.kv_capacity_tokens(spec, eng.kv_memory_fraction) // (n_prompt + n_generated - 1)
        if kv_seqs < 1:
            raise ValueError(f"{spec.name} with one {n_prompt + n_generated - 1}-token sequence does not fit in "
                             f"{self.gpu.name}'s {self.gpu.memory_gb:g} GB")
        resident = min(eng.max_num_seqs, kv_seqs)
        ratio = n_prompt / (n_generated - 1)
        budget_d = eng.max_num_batched_tokens / (1.0 + ratio)
        d = min(float(resident), budget_d)
        bound = "token_budget" if budget_d < resident else ("max_num_seqs" if resident == eng.max_num_seqs
                                                             else "kv_memory")
        c = d * ratio
        t = float(self.mixed_step_seconds(spec, d, d * (n_prompt + n_generated / 2.0), c,
                                          c * (n_prompt + 1) / 2.0, c))
        return {"output_tok_s": d * n_generated / ((n_generated - 1) * t), "step_s": t, "decode_tokens": d,
                "prefill_tokens": c, "resident": resident, "bound": bound}

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
