"""Model sources: where a model's shape and tensors come from (a GGUF file, synthetic weights).

The compiler (:mod:`hcemu.rom`) and the float reference read models only through this interface,
tensor by tensor, so an 8B or 70B model is never held in memory whole.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from hcemu.model.spec import ModelSpec

FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "MXFP4", "NVFP4")


@dataclass(frozen=True)
class RawTensor:
    """A tensor as the source stores it.

    ggml_type: ``"F32"``, ``"F16"``, ``"BF16"`` or one of :data:`BLOCK_TYPES`.
    shape: ``(n_out, n_in)`` for matrices (row-major, one row per output channel), ``(n,)`` for vectors.
    data: for float types an array of that dtype with ``shape``; for block types the raw GGUF blocks
    as uint8, shaped ``(n_out, bytes_per_row)``.
    """

    name: str
    ggml_type: str
    shape: tuple
    data: np.ndarray


class ModelSource(ABC):
    """A model: its :class:`ModelSpec`, its tensors (raw and as float32), and text metadata."""

    spec: ModelSpec

    @abstractmethod
    def tensor_names(self) -> list[str]:
        """GGUF-style names of every tensor the source holds."""

    @abstractmethod
    def raw(self, name: str) -> RawTensor:
        """The tensor as stored (lossless block formats stay blocks). KeyError names a missing tensor."""

    @abstractmethod
    def float32(self, name: str) -> np.ndarray:
        """The tensor dequantized to float32, shaped like ``raw(name).shape``."""

    @property
    def description(self) -> str:
        return self.spec.name

    def close(self) -> None:  # pragma: no cover - sources without resources
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
