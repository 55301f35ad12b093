"""Model descriptions (ModelSpec, presets) and model sources (GGUF files, synthetic weights)."""
from hcemu.model.spec import MODEL_PRESETS, ModelSpec, get_preset

__all__ = ["ModelSpec", "MODEL_PRESETS", "get_preset"]
