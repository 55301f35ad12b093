"""How a GPU baseline is deployed: the precision of its weights and KV cache, and its serving engine.

A :class:`Precision` says how many bytes a weight (or a KV value) takes on the GPU and what fraction of
that precision's dense tensor peak its GEMMs reach; :func:`gpu_at_precision` turns a
:class:`~hcemu.perf.specs.GpuSpec` preset into the same card serving at that precision (BF16 on every
GPU, FP8 on H100/H200/B200, NVFP4 on B200). An :class:`EngineSpec` holds the continuous-batching
engine's limits (concurrent sequences, the token budget of one step that chunked prefill fills, the
share of HBM given to weights and KV). Every preset value has a :class:`hcemu.perf.specs.Source` in
:data:`DEPLOY_SOURCES` (derived, assumed, or calibrated to a figure of :data:`hcemu.perf.figures.FIGURES`;
the text states the value), and ``docs/serving.md`` tabulates them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from hcemu.perf.specs import (DTYPE_BYTES, GpuSpec, Source, _assumed, _calibrated, _check_positive, _derived, _lookup,
                              _register, get_gpu)


def _check(obj, names, fractions=()):
    _check_positive(obj, names)
    for f in fractions:
        if getattr(obj, f) > 1:
            raise ValueError(f"{type(obj).__name__}.{f} is a fraction in (0, 1], got {getattr(obj, f)}")


@dataclass(frozen=True)
class Precision:
    """A deployment precision. ``weight_dtype``/``kv_dtype`` are keys of ``DTYPE_BYTES`` (bytes per value,
    block scales included); ``compute_efficiency`` is the fraction of the dense tensor peak of
    ``weight_dtype`` that batched GEMMs reach at this precision."""

    name: str
    weight_dtype: str
    kv_dtype: str
    compute_efficiency: float

    def __post_init__(self):
        for f in ("weight_dtype", "kv_dtype"):
            if getattr(self, f) not in DTYPE_BYTES:
                raise ValueError(f"Precision.{f} must be one of {sorted(DTYPE_BYTES)}, got {getattr(self, f)!r}")
        _check(self, ["compute_efficiency"], fractions=("compute_efficiency",))


@dataclass(frozen=True)
class EngineSpec:
    """A continuous-batching serving engine's limits.

    max_num_seqs: sequences resident at once; max_num_batched_tokens: tokens one step may carry (decode
    tokens first, then prefill chunks fill the rest: chunked prefill); kv_memory_fraction: share of HBM
    for weights + KV cache (vLLM's ``gpu_memory_utilization``, TensorRT-LLM's
    ``kv_cache_free_gpu_mem_fraction`` applied after the weights, here folded into one fraction);
    kv_read_efficiency: the paged-attention KV stream's share of the bandwidth the weight GEMMs reach
    (KV bytes are divided by it)."""

    name: str
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_memory_fraction: float
    kv_read_efficiency: float

    def __post_init__(self):
        _check(self, ["max_num_seqs", "max_num_batched_tokens", "kv_memory_fraction", "kv_read_efficiency"],
               fractions=("kv_memory_fraction", "kv_read_efficiency"))

    def replace(self, **changes) -> "EngineSpec":
        return replace(self, **changes)


PRECISIONS: dict[str, Precision] = {}
ENGINES: dict[str, EngineSpec] = {}
DEPLOY_SOURCES: dict[str, MappingProxyType] = {}


def _deploy(registry, obj, sources: dict[str, Source]):
    return _register(registry, obj, sources, DEPLOY_SOURCES)


_deploy(PRECISIONS, Precision("bf16", "bf16", "bf16", 0.60), {
    "weight_dtype": _derived("BF16 weights, 2 bytes (the model's released precision)"),
    "kv_dtype": _assumed("BF16 KV cache (serving engines' default)"),
    "compute_efficiency": _assumed("0.60 of the dense BF16 peak (the GpuSpec presets' compute_efficiency)"),
})
_deploy(PRECISIONS, Precision("fp8", "fp8", "fp8", 0.47), {
    "weight_dtype": _derived("FP8 (E4M3) weights, 1 byte, per-tensor scales (NVIDIA ModelOpt checkpoints, e.g. "
                             "nvidia/Llama-3.1-8B-Instruct-FP8, as benchmarked in TensorRT-LLM's perf overview)"),
    "kv_dtype": _derived("FP8 KV cache, 1 byte per value (TensorRT-LLM's FP8 checkpoints quantize the KV cache "
                         "too)"),
    "compute_efficiency": _calibrated("trtllm-llama-3.1-8b-h200-fp8-2048-128", (
        "0.47 of the dense FP8 peak, tuned to TensorRT-LLM's measured Llama 3.1 8B FP8 on H200 at ISL/OSL "
        "2048/128 (3,538 tok/s, prefill-bound); hcemu validate lists the held-out points")),
})
_deploy(PRECISIONS, Precision("nvfp4", "nvfp4", "fp8", 0.47), {
    "weight_dtype": _derived("NVFP4 weights: 4-bit E2M1 values with an FP8 (E4M3) scale per block of 16 = 4.5 "
                             "bits/weight (NVIDIA's NVFP4 format; Blackwell only)"),
    "kv_dtype": _derived("FP8 KV cache with NVFP4 weights (TensorRT-LLM's FP4 checkpoints keep an FP8 KV cache; "
                         "--gpu-kv-precision nvfp4 selects a 4.5-bit KV cache instead)"),
    "compute_efficiency": _assumed("0.47 of the dense FP4 peak: FP8's calibrated value carried over (no Llama "
                                   "3.1 8B FP4 measurement was found to tune it; the B200 70B FP4 figures in "
                                   "hcemu validate are held out)"),
})
PRECISION_ALIASES = {"fp4": "nvfp4", "fp16": "bf16"}

_KV_EFF = 0.55
_deploy(ENGINES, EngineSpec("vllm", 256, 8192, 0.90, _KV_EFF), {
    "max_num_seqs": _derived("256: vLLM's default max_num_seqs"),
    "max_num_batched_tokens": _assumed("8,192 tokens per step: vLLM V1's chunked-prefill budget on data-center "
                                       "GPUs (older releases used 512-2,048)"),
    "kv_memory_fraction": _derived("0.9: vLLM's default gpu_memory_utilization (vLLM optimization docs)"),
    "kv_read_efficiency": _assumed("0.55: TensorRT-LLM's calibrated value carried over (no vLLM figure was "
                                   "tuned to)"),
})
_deploy(ENGINES, EngineSpec("trtllm", 2048, 8192, 0.95, _KV_EFF), {
    "max_num_seqs": _assumed("2,048: TensorRT-LLM's default max_batch_size (its benchmark's CUDA graphs are "
                             "captured up to 8,192)"),
    "max_num_batched_tokens": _assumed("8,192: TensorRT-LLM's default max_num_tokens"),
    "kv_memory_fraction": _derived("0.95: TensorRT-LLM's perf overview runs kv_cache_free_gpu_mem_fraction 0.95 "
                                   "where it fits (default 0.90)"),
    "kv_read_efficiency": _calibrated("trtllm-llama-3.1-8b-h200-fp8-128-2048", (
        "0.55 of the weight GEMMs' bandwidth, tuned to TensorRT-LLM's measured Llama 3.1 8B FP8 on H200 at "
        "ISL/OSL 128/2048 (26,221 tok/s, KV-stream bound); the other points are held out")),
})


def get_precision(name) -> Precision:
    if isinstance(name, Precision):
        return name
    key = PRECISION_ALIASES.get(str(name).lower(), str(name).lower())
    try:
        return PRECISIONS[key]
    except KeyError:
        raise ValueError(f"unknown GPU precision {name!r}; known: "
                         f"{', '.join(sorted(set(PRECISIONS) | set(PRECISION_ALIASES)))}") from None


def get_engine(name="vllm") -> EngineSpec:
    return name if isinstance(name, EngineSpec) else _lookup(ENGINES, "serving engine", name)


def supports(gpu: GpuSpec | str, precision) -> bool:
    """Whether the GPU has tensor cores for the precision's weights and KV dtype."""
    g, p = get_gpu(gpu), get_precision(precision)
    return g.peak_tflops(p.weight_dtype) > 0 and g.peak_tflops(p.kv_dtype) > 0


def gpu_at_precision(gpu: GpuSpec | str, precision="bf16", kv_precision=None) -> GpuSpec:
    """The GPU serving at ``precision`` (weights, KV and GEMM efficiency), its KV cache at
    ``kv_precision`` when given. BF16 returns the preset itself (every BF16 figure is unchanged).

    Raises ValueError when the GPU has no tensor cores for the precision (FP4 on Hopper)."""
    g, p = get_gpu(gpu), get_precision(precision)
    kv = p.kv_dtype if kv_precision is None else get_precision(kv_precision).weight_dtype
    for dtype in (p.weight_dtype, kv):
        if g.peak_tflops(dtype) == 0:
            raise ValueError(f"{g.name} has no {dtype} tensor cores (FP4/NVFP4 is Blackwell only)")
    if p.name == "bf16" and kv == "bf16":
        return g
    name = f"{g.name}-{p.name}" + (f"-kv{kv}" if kv != p.kv_dtype else "")
    return g.replace(name=name, weight_dtype=p.weight_dtype, kv_dtype=kv, compute_efficiency=p.compute_efficiency)


def deploy_sources(name: str) -> dict[str, Source]:
    """The :class:`~hcemu.perf.specs.Source` of every field of the named precision or engine preset."""
    if name not in DEPLOY_SOURCES:
        raise ValueError(f"unknown deployment preset {name!r}; known: {', '.join(sorted(DEPLOY_SOURCES))}")
    return dict(DEPLOY_SOURCES[name])
