"""Turn what a user types (a GGUF path, ``smollm2``, a preset name) into a model source."""
from __future__ import annotations

import os

from hcemu.model.source import ModelSource


def open_source(model: str, seed: int = 0) -> ModelSource:
    """``*.gguf`` -> :class:`GGUFSource`; ``smollm2`` -> the fetched SmolLM2 GGUF; a preset name ->
    :class:`SyntheticSource` with seeded synthetic weights."""
    from hcemu.model.fetch import KNOWN_MODELS, fetch
    from hcemu.model.spec import MODEL_PRESETS, get_preset

    if model.lower().endswith(".gguf") or os.path.isfile(model):
        from hcemu.model.gguf_source import GGUFSource

        if not os.path.exists(model):
            raise FileNotFoundError(f"model file not found: {model}")
        return GGUFSource(model)
    if model in KNOWN_MODELS:
        from hcemu.model.gguf_source import GGUFSource

        return GGUFSource(fetch(model))
    if model.lower() in MODEL_PRESETS:
        from hcemu.model.synthetic import SyntheticSource

        return SyntheticSource(get_preset(model), seed=seed)
    raise ValueError(f"unknown model {model!r}: give a .gguf file, one of {sorted(KNOWN_MODELS)} "
                     f"or a preset ({', '.join(sorted(MODEL_PRESETS))})")


def source_path(model: str) -> str:
    """The file a GGUF-backed model argument refers to (fetching ``smollm2`` if needed)."""
    from hcemu.model.fetch import KNOWN_MODELS, fetch

    if model in KNOWN_MODELS:
        return fetch(model)
    return model
