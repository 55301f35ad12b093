"""llama.cpp (through llama-cpp-python, the optional ``peer`` extra) as a numerics peer on the same GGUF.

:func:`llama_logits` runs llama.cpp on a token sequence and returns its logits at every position;
:func:`compare_with_llama` compiles the same file with plan ``gguf`` (every tensor imported without
loss), runs the chip on the same tokens and reports the chip's next-token distribution against
llama.cpp's (:func:`hcemu.chip.evaluate.compare_logits`: KLD mean / p99, same top-1);
:func:`llama_quantize` writes a k-quant GGUF with llama.cpp's own quantizer (``allow_requantize``),
e.g. Q4_K_M from the SmolLM2 Q4_1 file; :func:`llama_decode_runner` times llama.cpp's decode step at a
fixed context (the peer of :func:`hcemu.bench.chip.decode_runner` on the same file). All raise ImportError naming the extra when llama-cpp-python
is not installed.

:func:`ggml_rounded_input` and :class:`GgmlRoundedLlama` replay llama.cpp's rounding of the products'
inputs on the float reference (an experiment on where the chip/llama.cpp disagreement comes from, not
a chip numerics); :func:`ggml_rounding_split` measures it against llama.cpp and the float reference.
"""
from __future__ import annotations

import os

import numpy as np

from hcemu.model.reference import FloatLlama

FTYPES = {"Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K", "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
          "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
          "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
          "MXFP4": "LLAMA_FTYPE_MOSTLY_MXFP4_MOE"}
"""llama.cpp file types this module can ask ``llama_model_quantize`` for."""


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError("the llama.cpp peer needs llama-cpp-python: pip install 'hcemu[peer]'") from e
    return llama_cpp


def llama_quantize(src, dst, ftype: str) -> None:
    """Write ``dst``: ``src`` re-quantized by llama.cpp to ``ftype`` (a key of :data:`FTYPES`)."""
    import ctypes

    lc = _llama_cpp()
    if ftype not in FTYPES or not hasattr(lc, FTYPES[ftype]):
        raise ValueError(f"unknown or unsupported llama.cpp file type {ftype!r}; known: {', '.join(FTYPES)}")
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, FTYPES[ftype])
    params.allow_requantize = True
    params.nthread = 1
    rc = lc.llama_model_quantize(os.fspath(src).encode(), os.fspath(dst).encode(), ctypes.byref(params))
    if rc != 0 or not os.path.exists(dst):
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) failed with status {rc}")


def llama_logits(gguf_path, tokens, n_threads: int = 1, flash_attn: bool = False) -> np.ndarray:
    """float32 logits (len(tokens), vocab) of llama.cpp at every position of ``tokens`` (one sequence).
    ``flash_attn``: llama.cpp's fused attention kernel instead of its default (separate KQ, softmax and
    KQV products); both read the same fp16 KV cache."""
    lc = _llama_cpp()
    tokens = [int(t) for t in tokens]
    llm = lc.Llama(model_path=os.fspath(gguf_path), n_ctx=max(32, len(tokens)), n_batch=max(32, len(tokens)),
                   logits_all=True, n_threads=n_threads, flash_attn=bool(flash_attn), verbose=False)
    try:
        llm.reset()
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _stats(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> dict:
    """Next-token statistics of logits ``b`` against ``a`` (both (t, vocab) at the positions of ``ids``)."""
    from hcemu.chip.evaluate import compare_logits

    st = compare_logits(a[:-1], b[:-1], ids[1:])
    return {"kld_mean": float(st.kld.mean()), "kld_p99": float(np.percentile(st.kld, 99)),
            "same_top1": float(st.same_top1.mean())}


def compare_with_llama(gguf_path, tokens, image_path, n_threads: int = 1, kv_format: str | None = "fp16",
                       split: bool = False) -> dict:
    """Chip (image compiled from ``gguf_path`` with plan gguf, at ``image_path``) against llama.cpp on
    the same ``tokens``: ``kld_mean``, ``kld_p99``, ``same_top1``, ``tokens`` (positions scored).
    ``kv_format``: the chip's KV cache (default fp16, as llama.cpp's; None: the plan's int8).

    ``split``: also where the disagreement comes from, each entry a dict of the same three statistics:
    ``llama_vs_reference`` and ``chip_vs_reference`` (llama.cpp and the chip against the float32
    reference of the same file, :class:`hcemu.model.reference.FloatLlama`), and ``llama_vs_itself``
    (llama.cpp with its flash-attention kernel against its default attention: how far llama.cpp moves
    under a change of float arithmetic alone)."""
    from hcemu.chip import Chip
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import RomImage, compile_model

    ids = np.asarray(tokens, np.int64)
    if not os.path.exists(image_path):
        with GGUFSource(gguf_path) as src:
            compile_model(src, "gguf", image_path, progress=False)
    peer = llama_logits(gguf_path, ids, n_threads)
    with RomImage.load(image_path, verify=False) as img:
        chip = Chip(img, kv_capacity_tokens=len(ids), n_threads=n_threads, kv_format=kv_format)
        ours = chip.prefill(ids, all_logits=True).logits
    out = {"tokens": int(len(ids) - 1), **_stats(peer, ours, ids)}
    if split:
        with GGUFSource(gguf_path) as src:
            ref = FloatLlama(src).logits(ids)
        out["llama_vs_reference"] = _stats(ref, peer, ids)
        out["chip_vs_reference"] = _stats(ref, ours, ids)
        out["llama_vs_itself"] = _stats(peer, llama_logits(gguf_path, ids, n_threads, flash_attn=True), ids)
    return out


K_QUANT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
"""Weight types whose products llama.cpp feeds Q8_K activations (one scale per 256 inputs)."""


def ggml_rounded_input(x: np.ndarray, ggml_type: str, scale_fp16: bool = True) -> np.ndarray:
    """float32 (m, k): the input ``x`` float32 (m, k) of a product with a ``ggml_type`` weight, rounded as
    llama.cpp's x86 CPU backend rounds it (docs/numerics.md "Activations").

    k-quant weights (:data:`K_QUANT_TYPES`): Q8_K per 256 inputs, ``iscale = -127/max`` of the signed
    largest-magnitude value, codes ``min(127, rne(x * iscale))``, value ``code * (1/iscale)``. Any other
    weight: Q8_0 per 32, the chip's codes (:func:`hcemu.kernels.cim.quantize_activations`) times the
    scale ``amax/127`` rounded to fp16 (``scale_fp16=False``: kept float32, i.e. the chip's rounding).
    The fp16 code sum of Q8_1 (Q4_1/Q5_1 weights' offset term) is not replayed."""
    from hcemu.kernels.cim import quantize_activations

    m, k = x.shape
    if ggml_type in K_QUANT_TYPES:
        if k % 256:
            raise ValueError(f"a {ggml_type} product needs a multiple of 256 inputs, got {k}")
        b = x.reshape(m, k // 256, 256)
        mx = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
        with np.errstate(divide="ignore"):
            iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
            d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
        return (np.minimum(np.rint(b * iscale), 127) * d).reshape(m, k).astype(np.float32)
    q, sc = quantize_activations(np.ascontiguousarray(x, np.float32), 32)
    if scale_fp16:
        sc = sc.astype(np.float16).astype(np.float32)
    return (q.reshape(m, k // 32, 32) * sc[..., None]).reshape(m, k).astype(np.float32)


class GgmlRoundedLlama(FloatLlama):
    """The float reference with every layer product's input rounded by :func:`ggml_rounded_input` for
    its weight's type (``types``: tensor name -> ggml type, every ``blk.*`` matrix); attention, norms
    and the output head stay float32."""

    def __init__(self, source, types: dict, scale_fp16: bool = True):
        super().__init__(source)
        self.types, self.scale_fp16 = dict(types), bool(scale_fp16)

    def _mm(self, li, kind, h):
        ty = self.types[f"blk.{li}.{kind}.weight"]
        return super()._mm(li, kind, ggml_rounded_input(h, ty, self.scale_fp16))


def ggml_rounding_split(gguf_path, tokens, n_threads: int = 1, scale_fp16: bool = True) -> dict:
    """The float reference with llama.cpp's input rounding (:func:`ggml_rounded_input`) on the GGUF at
    ``gguf_path``, against llama.cpp (``vs_llama``) and against the plain float reference
    (``vs_reference``) on ``tokens``: each a dict of ``kld_mean``, ``kld_p99``, ``same_top1``."""
    from hcemu.model.gguf_source import GGUFSource

    ids = np.asarray(tokens, np.int64)
    peer = llama_logits(gguf_path, ids, n_threads)
    with GGUFSource(gguf_path) as src:
        types = {name: src.raw(name).ggml_type for name in src.tensor_names() if name.startswith("blk.")}
        ref = FloatLlama(src).logits(ids)
        rounded = GgmlRoundedLlama(src, types, scale_fp16).logits(ids)
    return {"vs_llama": _stats(peer, rounded, ids), "vs_reference": _stats(ref, rounded, ids)}


def llama_decode_runner(gguf_path, tokens, n_threads: int = 1):
    """llama.cpp decoding one token at a fixed context: ``tokens[:-1]`` are evaluated once, then each call
    evaluates ``tokens[-1]`` at position ``len(tokens) - 1`` and drops it from the KV cache again (as
    :func:`hcemu.bench.chip.decode_runner` does on the chip). Returns a :class:`hcemu.bench.kernels.Runner`
    (peer ``llama.cpp``) that holds the model open."""
    from hcemu.bench.kernels import Runner

    lc = _llama_cpp()
    tokens = [int(t) for t in tokens]
    if len(tokens) < 2:
        raise ValueError("llama_decode_runner needs at least 2 tokens (a context and the token decoded)")
    llm = lc.Llama(model_path=os.fspath(gguf_path), n_ctx=len(tokens) + 8, n_batch=max(32, len(tokens)),
                   n_threads=n_threads, n_threads_batch=n_threads, verbose=False)
    llm.eval(tokens[:-1])
    keep, tok = len(tokens) - 1, tokens[-1]

    def step():
        llm.n_tokens = keep  # eval() first drops the KV cache from position n_tokens on
        llm.eval([tok])
    step.llm = llm  # the model lives as long as the runner
    return Runner("llama.cpp", step, 0, 0, 1, "llama.cpp decode step")


def decode_vs_llama(workdir, ftypes=("Q4_K_M", "Q6_K", "Q3_K_M"), context: int = 256, threads: int = 1,
                    rounds: int = 5, min_time_s: float = 0.2) -> dict:
    """Decode speed of the chip against llama.cpp on the same GGUF, interleaved in one process.

    For each llama.cpp file type in ``ftypes`` the SmolLM2 GGUF is re-quantized by llama.cpp
    (:func:`llama_quantize`) and compiled with plan ``gguf`` (every tensor in its own format), both
    written to the directory ``workdir`` (files already there are reused: give a fresh directory
    after changing hcemu). Returns a JSON-ready dict:
    per file type the chip's and llama.cpp's decode tok/s at ``context`` and their ratio
    ``chip_over_llama`` (> 1: the chip is faster)."""
    from hcemu.bench import kernels as kb
    from hcemu.bench.chip import decode_runner, decode_setup
    from hcemu.model import source_path
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import compile_model

    _llama_cpp()
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    src = source_path("smollm2")
    runners, out = {}, {"model": "smollm2", "context": context, "threads": threads, "files": {}}
    for ft in ftypes:
        gguf_path = os.path.join(workdir, f"smollm2-{ft}.gguf")
        image_path = os.path.join(workdir, f"smollm2-{ft}.hcrom")
        if not os.path.exists(gguf_path):
            llama_quantize(src, gguf_path, ft)
        if not os.path.exists(image_path):
            with GGUFSource(gguf_path) as s:
                compile_model(s, "gguf", image_path, progress=False)
        setup = decode_setup(image_path, context, threads)
        runners[f"chip_{ft}"] = decode_runner(setup)
        runners[f"llama_{ft}"] = llama_decode_runner(gguf_path, setup.tokens, threads)
    secs = kb.interleaved(runners, rounds=rounds, min_time_s=min_time_s)
    for ft in ftypes:
        c, ll = secs[f"chip_{ft}"], secs[f"llama_{ft}"]
        out["files"][ft] = {"chip_tok_s": 1.0 / c, "llama_tok_s": 1.0 / ll, "chip_over_llama": ll / c}
    return out
