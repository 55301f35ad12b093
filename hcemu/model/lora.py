"""LoRA adapters in llama.cpp's adapter GGUF format: read, validate against a model, write.

An adapter file (what llama.cpp's ``convert_lora_to_gguf.py`` writes and ``--lora`` reads) is a GGUF
with ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (float) and, for
each adapted matrix, two tensors:

* ``blk.N.<matrix>.weight.lora_a``: GGUF dims ``[n_in, r]``, i.e. ``A`` of shape ``(r, n_in)``;
* ``blk.N.<matrix>.weight.lora_b``: GGUF dims ``[r, n_out]``, i.e. ``B`` of shape ``(n_out, r)``.

The adapted product is ``y = W x + s * B (A x)`` with llama.cpp's scale rule
``s = user_scale * alpha / r`` (``s = user_scale`` when alpha is 0 or absent), ``r`` the rank of that
matrix's pair. Tensors may be F32, F16 or Q8_0; any rank >= 1. Only the seven per-layer matrices
(:data:`hcemu.model.spec.LAYER_MATRICES`) are accepted; an adapter on the embedding or the output
matrix is refused by name.

Malformed files raise :class:`LoraError` (a ``ValueError``) naming the tensor and what is wrong:
not an adapter, not LoRA, another architecture, an unknown tensor name, an ``a`` without its ``b``,
shapes that do not fit the model, rank 0, a tensor type other than F32/F16/Q8_0, NaN or infinity.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hcemu.model.spec import LAYER_MATRICES, ModelSpec

LORA_TYPES = ("F32", "F16", "Q8_0")
"""GGUF tensor types accepted for lora_a / lora_b."""

_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight\.lora_(a|b)$")


class LoraError(ValueError):
    """A LoRA adapter file that cannot be used (bad format, or does not fit the model)."""


@dataclass(frozen=True)
class LoraPair:
    """One adapted matrix: ``delta W = scale * b @ a``.

    a: float32 (r, n_in); b: float32 (n_out, r); scale: llama.cpp's ``user_scale * alpha / r``.
    """

    a: np.ndarray
    b: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self) -> np.ndarray:
        """float32 (n_out, n_in): ``scale * b @ a`` (for inspection and tests; the chip never merges)."""
        return (np.float32(self.scale) * (self.b @ self.a)).astype(np.float32)


@dataclass
class LoraAdapter:
    """A LoRA adapter for one model: pairs keyed by ``(layer, matrix kind)``.

    name: a label (default the file's stem); alpha: ``adapter.lora.alpha`` (0 = none);
    user_scale: the scale asked for when loading (``--lora FILE:SCALE``); path: the file, if any.
    """

    name: str
    alpha: float
    user_scale: float
    pairs: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def ranks(self) -> set:
        return {p.rank for p in self.pairs.values()}

    @property
    def n_params(self) -> int:
        """Parameters of every A and B."""
        return sum(p.a.size + p.b.size for p in self.pairs.values())

    def pair(self, layer: int, kind: str) -> LoraPair | None:
        return self.pairs.get((int(layer), kind))

    def matrices(self) -> list:
        """Sorted ``(layer, kind)`` of the adapted matrices."""
        order = {k: i for i, k in enumerate(LAYER_MATRICES)}
        return sorted(self.pairs, key=lambda lk: (lk[0], order[lk[1]]))

    def __repr__(self) -> str:
        return (f"LoraAdapter({self.name!r}, {len(self.pairs)} matrices, ranks {sorted(self.ranks)}, "
                f"alpha {self.alpha:g}, scale {self.user_scale:g})")


def lora_scale(alpha: float, rank: int, user_scale: float = 1.0) -> float:
    """llama.cpp's adapter scale: ``user_scale * alpha / rank``, or ``user_scale`` when alpha is 0."""
    if rank < 1:
        raise LoraError(f"LoRA rank must be >= 1, got {rank}")
    return float(user_scale) * float(alpha) / rank if alpha else float(user_scale)


def parse_lora_arg(arg: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` (the CLI's ``--lora``) -> ``(path, scale)``; the scale defaults to 1."""
    path, sep, tail = str(arg).rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            return str(arg), 1.0  # a ':' that is part of the path
        if not np.isfinite(scale):
            raise LoraError(f"--lora {arg}: the scale must be a finite number, got {tail!r}")
        return path, scale
    return str(arg), 1.0


def _float32(t, gguf, where: str) -> np.ndarray:
    tname = t.tensor_type.name
    if tname not in LORA_TYPES:
        raise LoraError(f"{where}: tensor type {tname} is not supported for LoRA (F32, F16, Q8_0)")
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    if len(shape) != 2:
        raise LoraError(f"{where}: expected a matrix, got {len(shape)} dimensions {shape}")
    if tname == "F32":
        out = np.array(t.data, dtype=np.float32)
    elif tname == "F16":
        out = np.asarray(t.data).astype(np.float32)
    else:
        out = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    out = np.ascontiguousarray(out, dtype=np.float32).reshape(shape)
    if not np.isfinite(out).all():
        raise LoraError(f"{where}: holds NaN or infinity")
    return out


def load_lora(path, spec: ModelSpec, scale: float = 1.0, name: str | None = None) -> LoraAdapter:
    """Read a llama.cpp LoRA adapter GGUF and check it against ``spec``.

    scale: the user scale (llama.cpp's ``--lora-scaled FILE SCALE``); each pair's effective scale is
    :func:`lora_scale`. Raises FileNotFoundError for a missing file and :class:`LoraError` for
    everything else (see the module docstring).
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {path}")
    if not np.isfinite(float(scale)):
        raise LoraError(f"{path}: the adapter scale must be finite, got {scale}")
    size = os.path.getsize(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises many kinds of errors on bad bytes
        raise LoraError(f"{path} ({size} bytes) is not a readable GGUF file: {type(e).__name__}: {e}") from e

    def meta(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:
            raise LoraError(f"{path}: metadata {key!r} cannot be decoded: {e}") from e

    gtype = meta("general.type")
    if gtype != "adapter":
        raise LoraError(f"{path}: general.type is {gtype!r}, not 'adapter' (a model file, not a LoRA adapter?)")
    atype = meta("adapter.type")
    if atype != "lora":
        raise LoraError(f"{path}: adapter.type is {atype!r}; only 'lora' adapters are supported")
    arch = meta("general.architecture")
    if arch != "llama":
        raise LoraError(f"{path}: architecture {arch!r} does not match the model's 'llama'")
    alpha = meta("adapter.lora.alpha", 0.0)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise LoraError(f"{path}: adapter.lora.alpha must be a number, got {alpha!r}") from None
    if not np.isfinite(alpha):
        raise LoraError(f"{path}: adapter.lora.alpha is {alpha}")

    halves: dict = {}
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise LoraError(f"{path} is truncated: tensor {t.name!r} ends at byte {end}, the file has {size}")
        m = _NAME.match(t.name)
        if not m:
            raise LoraError(f"{path}: unknown tensor {t.name!r} (expected blk.N.<matrix>.weight.lora_a/lora_b "
                            f"for the matrices {', '.join(LAYER_MATRICES)})")
        layer, kind, ab = int(m.group(1)), m.group(2), m.group(3)
        if kind not in LAYER_MATRICES:
            raise LoraError(f"{path}: tensor {t.name!r} adapts {kind!r}; only the layer matrices "
                            f"{', '.join(LAYER_MATRICES)} can carry adapters")
        if layer >= spec.n_layers:
            raise LoraError(f"{path}: tensor {t.name!r} is for layer {layer}, the model has {spec.n_layers}")
        halves.setdefault((layer, kind), {})[ab] = t

    pairs = {}
    for (layer, kind), ab in halves.items():
        base = f"blk.{layer}.{kind}.weight"
        for h in ("a", "b"):
            if h not in ab:
                raise LoraError(f"{path}: {base}.lora_{'b' if h == 'b' else 'a'} is missing "
                                f"(its lora_{'a' if h == 'b' else 'b'} is present)")
        a = _float32(ab["a"], gguf, f"{path}: {base}.lora_a")
        b = _float32(ab["b"], gguf, f"{path}: {base}.lora_b")
        n, k = spec.matrix_shape(kind)
        r = a.shape[0]
        if r < 1 or b.shape[1] < 1:
            raise LoraError(f"{path}: {base}: rank 0")
        if a.shape[1] != k or b.shape[0] != n:
            raise LoraError(f"{path}: {base}: lora_a {a.shape} / lora_b {b.shape} do not fit the model's "
                            f"{n}x{k} matrix (need lora_a (r, {k}) and lora_b ({n}, r))")
        if b.shape[1] != r:
            raise LoraError(f"{path}: {base}: lora_a has rank {r} but lora_b has rank {b.shape[1]}")
        pairs[(layer, kind)] = LoraPair(a, b, lora_scale(alpha, r, scale))
    if not pairs:
        raise LoraError(f"{path}: the adapter holds no lora_a/lora_b tensors")
    return LoraAdapter(name or path.stem, alpha, float(scale), pairs, str(path))


def write_lora(path, pairs: dict, alpha: float, *, dtype: str = "F32", name: str = "adapter",
               arch: str = "llama") -> None:
    """Write a llama.cpp LoRA adapter GGUF (atomically).

    pairs: ``{(layer, kind): (a, b)}`` with ``a`` float (r, n_in) and ``b`` float (n_out, r).
    dtype: ``"F32"``, ``"F16"`` or ``"Q8_0"`` (Q8_0 needs n_in and r multiples of 32).
    """
    import gguf

    from hcemu._io import atomic_write

    if dtype not in LORA_TYPES:
        raise LoraError(f"write_lora: dtype must be one of {LORA_TYPES}, got {dtype!r}")
    w = gguf.GGUFWriter(path=None, arch=arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    w.add_name(name)
    order = {k: i for i, k in enumerate(LAYER_MATRICES)}
    for (layer, kind) in sorted(pairs, key=lambda lk: (lk[0], order.get(lk[1], 99))):
        a, b = (np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for x in pairs[(layer, kind)])
        for h, arr in (("a", a), ("b", b)):
            tname = f"blk.{layer}.{kind}.weight.lora_{h}"
            if dtype == "F32":
                w.add_tensor(tname, arr)
            elif dtype == "F16":
                w.add_tensor(tname, arr.astype(np.float16))
            else:
                if arr.shape[1] % 32:
                    raise LoraError(f"write_lora: {tname} has {arr.shape[1]} columns; Q8_0 needs a multiple of 32")
                q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    with atomic_write(path) as f:
        w.fout = [f]  # the writer's own file handling is bypassed so the file appears whole or not at all
        w.state = gguf.gguf_writer.WriterState.EMPTY
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()


def random_lora_pairs(spec: ModelSpec, rank: int, *, kinds=LAYER_MATRICES, layers=None, alpha: float | None = None,
                      relative: float = 0.1, seed: int = 0) -> dict:
    """Random ``{(layer, kind): (a, b)}`` of a realistic magnitude, for tests, benchmarks and sizing.

    ``a`` ~ N(0, 1/n_in) as LoRA initializes it; ``b`` ~ N(0, sigma) with sigma chosen so that the
    scaled update ``(alpha / rank) * b @ a`` has an element RMS of ``relative / sqrt(n_in)``, i.e.
    ``relative`` times a weight of RMS ``1/sqrt(n_in)`` (Llama projections sit near that).
    alpha: default ``2 * rank`` (a common choice); layers: default all.
    """
    if rank < 1:
        raise LoraError(f"rank must be >= 1, got {rank}")
    alpha = 2.0 * rank if alpha is None else float(alpha)
    s = lora_scale(alpha, rank)
    rng = np.random.default_rng(seed)
    out = {}
    for layer in (range(spec.n_layers) if layers is None else layers):
        for kind in kinds:
            n, k = spec.matrix_shape(kind)
            a = rng.standard_normal((rank, k)) / np.sqrt(k)
            b = rng.standard_normal((n, rank)) * (relative / (s * np.sqrt(rank)))
            out[(int(layer), kind)] = (a.astype(np.float32), b.astype(np.float32))
    return out
