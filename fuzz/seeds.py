"""The seed corpus: a tiny Llama GGUF (with a tokenizer), ROM images compiled from it, and LoRA adapters for it."""
from __future__ import annotations

import os
import sys

from hcemu.model.spec import ModelSpec

SEED_SPEC = ModelSpec("fuzz-tiny", n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64,
                      vocab_size=40, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False, max_context=32)
"""Small enough that one case (load, compile, one prefill and one decode) takes milliseconds."""

SEED_PLANS = ("int4", "int8", "mxfp4")
"""Plans of the images compiled from the seed GGUF (an asymmetric int4 plan, int8, a block format)."""
SEED_ARCHS = (("qwen2moe", "int8"), ("gemma2", "int4"))
"""Images of other block kinds (a mixture of experts with a shared expert and Q/K biases; sliding
windows, soft-capping and post-norms), from synthetic weights of the test suite's small specs with a
40-token vocabulary."""

SEED_ADAPTERS = (("F32", 2, None), ("F16", 4, ("attn_q", "attn_v")), ("Q8_0", 32, ("attn_q", "ffn_down")))
"""LoRA adapter GGUFs for :data:`SEED_SPEC`: (tensor type, rank, matrices or None for all seven)."""


def tests_module(name: str):
    """A helper module of ``tests/`` (the seeds reuse the test suite's model writers)."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return __import__(name)


def make_seeds(folder: str) -> dict:
    """Write ``seed.gguf``, the seed images (:data:`SEED_PLANS` of it, :data:`SEED_ARCHS`) and the seed
    adapters (:data:`SEED_ADAPTERS`) into ``folder``; returns ``{"gguf": path, "images": {name: path},
    "adapters": {name: path}}``. Written once; later calls reuse the files."""
    from dataclasses import replace

    from hcemu.model.gguf_source import GGUFSource
    from hcemu.model.lora import random_lora_pairs, write_lora
    from hcemu.model.synthetic import SyntheticSource
    from hcemu.rom.image import compile_model

    os.makedirs(folder, exist_ok=True)
    gguf_path = os.path.join(folder, "seed.gguf")
    if not os.path.exists(gguf_path):
        tests_module("model_helpers").write_tiny_gguf(gguf_path + ".part", SEED_SPEC, tokenizer=True)
        os.replace(gguf_path + ".part", gguf_path)
    images = {}
    for plan in SEED_PLANS:
        path = os.path.join(folder, f"seed-{plan}.hcrom")
        if not os.path.exists(path):
            with GGUFSource(gguf_path) as src:
                compile_model(src, plan, path, progress=False)
        images[plan] = path
    for arch, plan in SEED_ARCHS:
        path = os.path.join(folder, f"seed-{arch}-{plan}.hcrom")
        if not os.path.exists(path):
            spec = replace(tests_module("arch_models").ARCH_SPECS[arch], vocab_size=40, max_context=32)
            compile_model(SyntheticSource(spec, 1), plan, path, progress=False)
        images[f"{arch}-{plan}"] = path
    adapters = {}
    for dtype, rank, kinds in SEED_ADAPTERS:
        path = os.path.join(folder, f"seed-lora-{dtype}-r{rank}.gguf")
        if not os.path.exists(path):
            pairs = random_lora_pairs(SEED_SPEC, rank, **({} if kinds is None else {"kinds": kinds}), seed=rank)
            write_lora(path, pairs, alpha=2.0 * rank, dtype=dtype, name=f"seed-{dtype}")
        adapters[f"{dtype}-r{rank}"] = path
    return {"gguf": gguf_path, "images": images, "adapters": adapters}
