"""The seed corpus: a tiny Llama GGUF (with a tokenizer) and ROM images compiled from it."""
from __future__ import annotations

import os
import sys

from hcemu.model.spec import ModelSpec

SEED_SPEC = ModelSpec("fuzz-tiny", n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64,
                      vocab_size=40, rope_theta=10000.0, norm_eps=1e-5, tied_embeddings=False, max_context=32)
"""Small enough that one case (load, compile, one prefill and one decode) takes milliseconds."""

SEED_PLANS = ("int4", "int8")


def _model_helpers():
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import model_helpers

    return model_helpers


def make_seeds(folder: str) -> dict:
    """Write ``seed.gguf`` and one image per plan of :data:`SEED_PLANS` into ``folder``; returns
    ``{"gguf": path, "images": {plan: path}}``. Written once; later calls reuse the files."""
    from hcemu.model.gguf_source import GGUFSource
    from hcemu.rom.image import compile_model

    os.makedirs(folder, exist_ok=True)
    gguf_path = os.path.join(folder, "seed.gguf")
    if not os.path.exists(gguf_path):
        _model_helpers().write_tiny_gguf(gguf_path + ".part", SEED_SPEC, tokenizer=True)
        os.replace(gguf_path + ".part", gguf_path)
    images = {}
    for plan in SEED_PLANS:
        path = os.path.join(folder, f"seed-{plan}.hcrom")
        if not os.path.exists(path):
            with GGUFSource(gguf_path) as src:
                compile_model(src, plan, path, progress=False)
        images[plan] = path
    return {"gguf": gguf_path, "images": images}
