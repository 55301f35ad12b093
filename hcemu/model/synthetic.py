"""SyntheticSource: random float32 weights of a given :class:`ModelSpec`, generated lazily per tensor.

It stands in for models whose weights are not at hand (Llama 3.1 8B / 70B shapes), so the compiler can
build and price a full ROM image tensor by tensor. The weights carry no knowledge; their scales are
chosen so activations keep a realistic magnitude through the network:

* projection matrices ``(n_out, n_in)``: std ``1 / sqrt(n_in)`` (outputs keep the input's RMS);
* ``token_embd.weight`` (and ``output.weight``): std 0.02 (the usual Llama initialisation; with
  RMS-normed hidden states of RMS ~1 this gives logits of std ``0.02 * sqrt(d_model)``, about 1.3 for
  d = 4096);
* RMSNorm weights: mean 1, std 0.05 (trained norm weights scatter around 1); biases: mean 0, std 0.05.

The values are uniform on ``mean +- sqrt(3) * std`` (which has exactly that std), not normal: uniform
float32 draws are ~6x faster than normal ones, so a 128256 x 4096 embedding takes about a second
instead of six. The distribution's shape is not realistic (trained weights are heavier-tailed than
normal), so synthetic weights serve for sizes, layouts, event counts and costs, never for judging
quantisation accuracy.

Each tensor has its own generator, seeded from ``(seed, CRC32 of its name)``, so any tensor can be made
alone, in any order, and is the same every time.
"""
from __future__ import annotations

import zlib

import numpy as np

from hcemu.model.source import ModelSource, RawTensor
from hcemu.model.spec import ModelSpec

EMBEDDING_STD = 0.02
NORM_STD = 0.05


class SyntheticSource(ModelSource):
    """Random weights for ``spec`` (see the module docstring for the distributions)."""

    def __init__(self, spec: ModelSpec, seed: int = 0):
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.spec = spec
        self.seed = int(seed)
        self._shapes: dict[str, tuple] = {}
        self._biases: set[str] = set()
        for name, _kind, _layer, shape in spec.matrices():
            self._shapes[name] = tuple(shape)
        for name, kind, _layer, n in spec.vectors():
            self._shapes[name] = (n,)
            if kind.endswith("_bias"):
                self._biases.add(name)

    def tensor_names(self) -> list[str]:
        return list(self._shapes)

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])

    def float32(self, name: str) -> np.ndarray:
        try:
            shape = self._shapes[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in synthetic {self.spec.name}") from None
        rng = self._rng(name)
        if len(shape) == 1:
            mean, std = (0.0 if name in self._biases else 1.0), NORM_STD
        elif name in ("token_embd.weight", "output.weight"):
            mean, std = 0.0, EMBEDDING_STD
        else:
            mean, std = 0.0, 1.0 / np.sqrt(shape[1])
        half_width = np.sqrt(3.0) * std
        out = rng.random(shape, dtype=np.float32)  # [0, 1)
        out *= np.float32(2.0 * half_width)
        out += np.float32(mean - half_width)
        return out

    def raw(self, name: str) -> RawTensor:
        return RawTensor(name, "F32", self._shapes.get(name, ()), self.float32(name))

    @property
    def description(self) -> str:
        return f"{self.spec.name} (synthetic weights, seed {self.seed})"
