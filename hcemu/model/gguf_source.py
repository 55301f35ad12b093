"""GGUFSource: a Llama model read from a GGUF file (memory-mapped through :class:`gguf.GGUFReader`).

Only the ``llama`` architecture is accepted. Tensors of type F32, F16, BF16 and the block types of
:data:`hcemu.model.source.BLOCK_TYPES` (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, MXFP4, NVFP4) can be
read; a tensor of any other type raises :class:`ValueError` naming the tensor and its type when it is
read (the file still opens, so its :class:`ModelSpec` can be inspected).

GGUF lists a tensor's dimensions innermost first (``ne[0]`` is the input dimension of a matrix); this
class reports shapes the other way round, ``(n_out, n_in)``, as :class:`RawTensor` requires.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hcemu.model.source import BLOCK_TYPES, FLOAT_TYPES, ModelSource, RawTensor
from hcemu.model.spec import ModelSpec, RopeScaling

SUPPORTED_TYPES = FLOAT_TYPES + BLOCK_TYPES


def _import_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ImportError("reading GGUF files needs the 'gguf' package (pip install gguf)") from e
    return gguf


class GGUFSource(ModelSource):
    """A Llama-architecture GGUF file.

    ``path``: the ``.gguf`` file. Raises ``FileNotFoundError`` if it does not exist and ``ValueError``
    if it is not a readable GGUF file (bad magic, truncated, corrupt header) or not a Llama model.
    """

    def __init__(self, path):
        gguf = _import_gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        size = os.path.getsize(self.path)
        try:
            self._reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as e:  # the reader raises ValueError, KeyError, IndexError, ... on bad bytes
            raise ValueError(f"{self.path} ({size} bytes) is not a readable GGUF file "
                             f"(truncated or corrupt?): {type(e).__name__}: {e}") from e
        self._tensors = {}
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise ValueError(f"{self.path} is truncated: tensor {t.name!r} ends at byte {end} "
                                 f"but the file has {size} bytes")
            self._tensors[t.name] = t
        self._gguf = gguf
        self.metadata = self._read_metadata()
        arch = self.metadata.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{self.path}: architecture {arch!r} is not supported (only 'llama')")
        self.spec = self._build_spec()

    # ---- metadata
    def _read_metadata(self) -> dict:
        meta = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                meta[key] = field.contents()
            except Exception as e:
                raise ValueError(f"{self.path}: metadata field {key!r} cannot be decoded: {e}") from e
        return meta

    def _get(self, key, default=None, required=False):
        if key in self.metadata:
            return self.metadata[key]
        if required:
            raise ValueError(f"{self.path}: required metadata key {key!r} is missing")
        return default

    def _build_spec(self) -> ModelSpec:
        a = "llama."
        n_layers = int(self._get(a + "block_count", required=True))
        d_model = int(self._get(a + "embedding_length", required=True))
        d_ff = int(self._get(a + "feed_forward_length", required=True))
        n_heads = int(self._get(a + "attention.head_count", required=True))
        n_kv = int(self._get(a + "attention.head_count_kv", n_heads))
        head_dim = int(self._get(a + "rope.dimension_count", 0) or self._get(a + "attention.key_length", 0)
                       or d_model // n_heads)
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if "token_embd.weight" in self._tensors:
            vocab = int(self._tensors["token_embd.weight"].shape[1])
        elif tokens is not None:
            vocab = len(tokens)
        else:
            vocab = int(self._get(a + "vocab_size", required=True))
        eps = float(self._get(a + "attention.layer_norm_rms_epsilon", 1e-5))
        # The GGUF float32 epsilon (9.99999975e-06) is reported as the decimal it was written from.
        eps = float(np.format_float_positional(np.float32(eps), unique=True))
        theta = float(self._get(a + "rope.freq_base", 10000.0))
        ctx = int(self._get(a + "context_length", 2048))
        name = str(self._get("general.name", "") or self.path.stem)
        return ModelSpec(name=name, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                         head_dim=head_dim, d_ff=d_ff, vocab_size=vocab, rope_theta=theta,
                         rope_scaling=self._rope_scaling(head_dim, theta), norm_eps=eps,
                         tied_embeddings="output.weight" not in self._tensors, max_context=ctx,
                         source=str(self.path))

    def _rope_scaling(self, head_dim: int, theta: float) -> RopeScaling | None:
        """Llama 3 frequency scaling, from ``rope.scaling.*`` keys or the ``rope_freqs.weight`` tensor.

        llama.cpp's converter stores Llama 3 scaling as ``rope_freqs.weight``: one divisor per frequency
        (1 for short wavelengths, ``factor`` for long ones, a smooth blend between). The
        :class:`RopeScaling` parameters are recovered from it and checked to reproduce it.
        """
        a = "llama.rope.scaling."
        stype = self._get(a + "type")
        orig = int(self._get(a + "original_context_length", 8192) or 8192)
        if stype is not None and stype not in ("llama3", "none"):
            raise ValueError(f"{self.path}: rope scaling type {stype!r} is not supported (only llama3)")
        if "rope_freqs.weight" not in self._tensors:
            if stype == "llama3":
                return RopeScaling(float(self._get(a + "factor", 8.0)), 1.0, 4.0, orig)
            return None
        f = self.float32("rope_freqs.weight").astype(np.float64)
        if f.shape != (head_dim // 2,):
            raise ValueError(f"{self.path}: rope_freqs.weight has shape {f.shape}, expected ({head_dim // 2},)")
        factor = float(f.max())
        if factor <= 1.0 + 1e-6:
            return None
        inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        ratio = orig * inv_freq / (2 * np.pi)  # original_context / wavelength
        mid = (f > 1.0 + 1e-4) & (f < factor - 1e-4)
        if mid.sum() >= 2:
            # in the blend: 1/f = (1 - s)/factor + s with s = (ratio - low) / (high - low)
            s = (1.0 / f[mid] - 1.0 / factor) / (1.0 - 1.0 / factor)
            slope, icpt = np.polyfit(ratio[mid], s, 1)
            high = (1.0 - icpt) / slope
            low = -icpt / slope
            low, high = round(low, 3), round(high, 3)
        else:
            low, high = 1.0, 4.0
        scaling = RopeScaling(factor, low, high, orig)
        from hcemu.model.ops import llama3_frequency_divisors

        got = llama3_frequency_divisors(inv_freq, scaling)
        if not np.allclose(got, f, rtol=1e-3):
            raise ValueError(f"{self.path}: rope_freqs.weight does not follow Llama 3 scaling "
                             f"(best fit {scaling})")
        return scaling

    # ---- tensors
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def _tensor(self, name: str):
        if self._reader is None:
            raise ValueError(f"GGUFSource for {self.path} is closed")
        try:
            t = self._tensors[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.path}") from None
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise ValueError(f"tensor {name!r} in {self.path} has type {tname}; supported types: "
                             f"{', '.join(SUPPORTED_TYPES)}")
        if len(t.shape) > 2:
            raise ValueError(f"tensor {name!r} has {len(t.shape)} dimensions; only vectors and matrices "
                             "are supported")
        return t, tname

    @staticmethod
    def _shape(t) -> tuple:
        return tuple(int(d) for d in reversed(t.shape.tolist()))

    def raw(self, name: str) -> RawTensor:
        """The tensor as stored. BF16 data is returned as its uint16 bit patterns (numpy has no bf16)."""
        t, tname = self._tensor(name)
        shape = self._shape(t)
        data = t.data
        if tname == "BF16":
            data = data.view(np.uint16).reshape(shape)
        elif tname in BLOCK_TYPES:
            data = data.reshape(shape[0] if len(shape) == 2 else 1, -1)
        else:
            data = data.reshape(shape)
        return RawTensor(name, tname, shape, data)

    def float32(self, name: str) -> np.ndarray:
        t, tname = self._tensor(name)
        shape = self._shape(t)
        if tname == "F32":
            out = np.array(t.data, dtype=np.float32)
        elif tname == "F16":
            out = t.data.astype(np.float32)
        elif tname == "BF16":
            out = (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            out = self._gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)

    @property
    def description(self) -> str:
        return f"{self.spec.name} ({self.path.name})"

    def close(self) -> None:
        # np.memmap is released when the reader is dropped
        self._tensors = {}
        self._reader = None
