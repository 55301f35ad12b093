"""Model descriptions (ModelSpec, presets) and model sources (GGUF files, synthetic weights)."""
from __future__ import annotations

import os

from hcemu.model.fetch import KNOWN_MODELS, fetch
from hcemu.model.gguf_source import GGUFSource
from hcemu.model.reference import FloatLlama
from hcemu.model.source import ModelSource, RawTensor
from hcemu.model.spec import MODEL_PRESETS, ModelSpec, RopeScaling, get_preset
from hcemu.model.synthetic import SyntheticSource
from hcemu.model.tokenizer import Tokenizer


def source_path(model: str) -> str:
    """The file a model argument names: a fetchable name (``smollm2``, downloaded on first use) or the
    argument itself."""
    return fetch(model) if model in KNOWN_MODELS else model


def load_source(spec_or_path, seed: int = 0) -> ModelSource:
    """A :class:`ModelSource` from a ``.gguf`` path, a fetchable name (``smollm2``), a preset name
    (synthetic weights), or a :class:`ModelSpec` (synthetic weights, ``seed``)."""
    if isinstance(spec_or_path, ModelSource):
        return spec_or_path
    if isinstance(spec_or_path, ModelSpec):
        return SyntheticSource(spec_or_path, seed)
    if isinstance(spec_or_path, (str, os.PathLike)):
        s = os.fspath(spec_or_path)
        if s in KNOWN_MODELS or s.lower().endswith(".gguf"):
            return GGUFSource(source_path(s))
        if s.lower() in MODEL_PRESETS:
            return SyntheticSource(get_preset(s), seed)
        raise ValueError(f"{s!r} is neither a .gguf file, a fetchable model ({', '.join(KNOWN_MODELS)}) "
                         f"nor a model preset ({', '.join(sorted(MODEL_PRESETS))})")
    raise TypeError(f"load_source takes a .gguf path, a preset name or a ModelSpec, got {type(spec_or_path).__name__}")


__all__ = ["ModelSpec", "RopeScaling", "MODEL_PRESETS", "get_preset", "ModelSource", "RawTensor", "GGUFSource",
           "SyntheticSource", "Tokenizer", "FloatLlama", "load_source", "source_path"]
