"""GGUFSource: a model read from a GGUF file (memory-mapped through :class:`gguf.GGUFReader`).

The architectures of :mod:`hcemu.model.architectures` are accepted (llama with or without experts,
qwen2, qwen3, phi3, gemma2, gemma3, qwen2moe, qwen3moe, olmoe); any other ``general.architecture``, a
tensor the architecture does not expect, or a missing one raises :class:`ValueError` naming it.
Tensors of type F32, F16, BF16 and the block types of :data:`hcemu.model.source.BLOCK_TYPES` (Q8_0,
Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, MXFP4, NVFP4) can be read; a tensor of any other type raises
:class:`ValueError` naming the tensor and its type when it is read (the file still opens, so its
:class:`ModelSpec` can be inspected).

The source serves the tensors under the names of :meth:`ModelSpec.matrices` and
:meth:`ModelSpec.vectors`, which are views of the file's tensors where the file stores them fused:
expert ``e`` of ``blk.{i}.ffn_gate_exps.weight`` (3-D) is ``blk.{i}.ffn_gate_exps.{e}.weight`` (files
with one tensor per expert, ``blk.{i}.ffn_gate.{e}.weight``, are read too); a fused
``blk.{i}.attn_qkv.weight`` is split into q, k and v rows; phi3's ``ffn_up`` of ``2 * d_ff`` rows into
gate (first half) and up. Row slices keep whole blocks, so block formats stay lossless.

GGUF lists a tensor's dimensions innermost first (``ne[0]`` is the input dimension of a matrix); this
class reports shapes the other way round, ``(n_out, n_in)``, as :class:`RawTensor` requires.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from hcemu.model.architectures import ARCHITECTURES, get_architecture
from hcemu.model.gguf_check import check_gguf
from hcemu.model.source import BLOCK_TYPES, FLOAT_TYPES, ModelSource, RawTensor
from hcemu.model.spec import MAX_MATRICES, ModelSpec, RopeScaling

SUPPORTED_TYPES = FLOAT_TYPES + BLOCK_TYPES


def _f32_decimal(x: float) -> float:
    """The shortest decimal that rounds to the same float32 (GGUF stores float32 metadata)."""
    return float(np.format_float_positional(np.float32(x), unique=True))


def _reader_class(gguf):
    """:class:`gguf.GGUFReader` over a plain ndarray view of its memory map: the reader slices the map
    once per metadata item (~250k slices for a 50k-token vocabulary), and numpy's ``memmap`` subclass
    makes each slice ~4x slower. The view maps the same pages; nothing is copied."""

    class PlainReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainReader


def _import_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise ImportError("reading GGUF files needs the 'gguf' package (pip install gguf)") from e
    return gguf


class GGUFSource(ModelSource):
    """A GGUF file of one of the supported architectures.

    ``path``: the ``.gguf`` file. Raises ``FileNotFoundError`` if it does not exist and ``ValueError``
    if it is not a readable GGUF file (bad magic, truncated, corrupt header, counts or sizes the file
    cannot hold: :func:`~hcemu.model.gguf_check.check_gguf` runs before the ``gguf`` reader), of an
    unsupported architecture, has metadata that make no valid :class:`ModelSpec`, or holds a tensor
    its architecture does not expect (or lacks one it needs).
    """

    def __init__(self, path):
        gguf = _import_gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        size = os.path.getsize(self.path)
        check_gguf(self.path)
        try:
            self._reader = _reader_class(gguf)(str(self.path), "r")
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
        if arch not in ARCHITECTURES:
            raise ValueError(f"{self.path}: architecture {arch!r} is not supported; supported: "
                             f"{', '.join(sorted(ARCHITECTURES))}")
        self.arch = get_architecture(arch)
        self._views: dict = {}
        self.spec = self._build_spec()
        self._views = self._map_tensors()
        self._check_matrix_shapes()

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

    def _number(self, key, kind, default=None, required=False):
        """Metadata ``key`` as an int (``kind`` int) or a float, or ``default``; ValueError names a value
        of another type (a string, a list, a bool)."""
        v = self._get(key, default, required)
        if v is None:
            return None
        ok = isinstance(v, int) and not isinstance(v, bool) if kind is int else (
            isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise ValueError(f"{self.path}: metadata {key!r} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {type(v).__name__} {v!r}"[:300])
        return kind(v)

    def _build_spec(self) -> ModelSpec:
        try:
            spec = self._spec_without_scaling()
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(str(self.path)) else
                             f"{self.path}: the metadata make no valid model: {msg}") from None
        if spec.n_matrices > MAX_MATRICES:
            raise ValueError(f"{self.path}: the metadata describe {spec.n_matrices} matrices over {spec.n_layers} "
                             f"layers (limit {MAX_MATRICES})")
        return replace(spec, rope_scaling=self._rope_scaling(spec.head_dim, spec.rope_theta))

    def _spec_without_scaling(self) -> ModelSpec:
        A = self.arch
        a = A.name + "."
        num = self._number
        n_layers = num(a + "block_count", int, required=True)
        if n_layers > len(self._tensors):   # before anything loops over the layers
            raise ValueError(f"{self.path}: {a}block_count {n_layers} exceeds the {len(self._tensors)} tensors "
                             f"the file holds")
        d_model = num(a + "embedding_length", int, required=True)
        d_ff = num(a + "feed_forward_length", int, required=True)
        n_heads = num(a + "attention.head_count", int, required=True)
        n_kv = num(a + "attention.head_count_kv", int, n_heads)
        if n_heads < 1:
            raise ValueError(f"{self.path}: {a}attention.head_count must be positive, got {n_heads}")
        head_dim = (num(a + "attention.key_length", int, 0) or num(a + "rope.dimension_count", int, 0)
                    or d_model // n_heads)
        v_len = num(a + "attention.value_length", int, head_dim)
        rot = num(a + "rope.dimension_count", int, 0) or head_dim
        if v_len != head_dim or rot != head_dim:
            raise ValueError(f"{self.path}: head dimensions key {head_dim} / value {v_len} / rotary {rot} differ; "
                             "only models rotating whole heads of equal K and V width are supported")
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if "token_embd.weight" in self._tensors:
            vocab = int(self._tensors["token_embd.weight"].shape[-1])
        elif isinstance(tokens, list):
            vocab = len(tokens)
        else:
            vocab = num(a + "vocab_size", int, required=True)
        eps = num(a + "attention.layer_norm_rms_epsilon", float, 1e-5)
        # The GGUF float32 epsilon (9.99999975e-06) is reported as the decimal it was written from.
        eps = _f32_decimal(eps)
        theta = num(a + "rope.freq_base", float, 10000.0)
        ctx = num(a + "context_length", int, 2048)
        name = self._get("general.name", "")
        name = name if isinstance(name, str) and name else self.path.stem
        kw = {}
        # sliding-window layers
        window = num(a + "attention.sliding_window", int, 0) or 0
        if A.swa_period and window:
            pattern = self._get(a + "attention.sliding_window_pattern", A.swa_period)
            if isinstance(pattern, (list, tuple)):
                if len(pattern) != n_layers:
                    raise ValueError(f"{self.path}: sliding_window_pattern has {len(pattern)} entries for "
                                     f"{n_layers} layers")
                swa = tuple(i for i, on in enumerate(pattern) if on)
            else:
                period = int(pattern)
                swa = tuple(i for i in range(n_layers) if period == 0 or i % period < period - 1)
            kw.update(sliding_window=window, swa_layers=swa)
            kw["rope_theta_swa"] = _f32_decimal(num(a + "rope.freq_base_swa", float, A.swa_rope_theta) or 0)
        if A.scale_embeddings:
            kw["embed_scale"] = float(np.sqrt(np.float32(d_model)))
        if A.attn_softcap:
            kw["attn_softcap"] = num(a + "attn_logit_softcapping", float, A.attn_softcap) or 0.0
        if A.final_softcap:
            kw["final_softcap"] = num(a + "final_logit_softcapping", float, A.final_softcap) or 0.0
        if A.name in ("gemma2", "gemma3") and n_layers == {"gemma2": 46, "gemma3": 62}[A.name]:
            kw["attn_scale"] = float(np.float32(1.0) / np.sqrt(np.float32(d_model // n_heads)))  # the 27B
        # mixture of experts
        n_exp = num(a + "expert_count", int, 0) or 0
        if A.moe == "required" and not n_exp:
            raise ValueError(f"{self.path}: architecture {A.name} needs {a}expert_count")
        if n_exp and A.moe == "none":
            raise ValueError(f"{self.path}: architecture {A.name} has no mixture-of-experts form, but the file "
                             f"sets {a}expert_count = {n_exp}")
        if n_exp:
            used = num(a + "expert_used_count", int, required=True)
            gating = self._get(a + "expert_gating_func", 0)
            if gating not in (0, 1):  # 0: unset (softmax), 1: softmax; 2 is sigmoid
                raise ValueError(f"{self.path}: {a}expert_gating_func = {gating} (sigmoid routing) is not supported")
            for key in ("expert_shared_count", "leading_dense_block_count", "expert_group_count"):
                if num(a + key, int, 0):
                    raise ValueError(f"{self.path}: {a}{key} is not supported")
            d_exp = num(a + "expert_feed_forward_length", int, 0) or 0
            if A.name in ("qwen2moe", "qwen3moe") and not d_exp:
                d_exp = d_ff // used
            kw.update(n_experts=n_exp, n_experts_used=used, d_ff_expert=d_exp if d_exp != d_ff else 0,
                      expert_weights_norm=A.expert_weights_norm)
            if A.shared_expert:
                kw.update(d_ff_shared=num(a + "expert_shared_feed_forward_length", int, 0) or d_ff,
                          shared_expert_gate=True)
        return ModelSpec(name=name, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                         head_dim=head_dim, d_ff=d_ff, vocab_size=vocab, rope_theta=theta, norm_eps=eps,
                         tied_embeddings="output.weight" not in self._tensors, max_context=ctx,
                         source=str(self.path), arch=A.name, rope_style=A.rope_style, qkv_bias=A.qkv_bias,
                         qk_norm=A.qk_norm, post_norms=A.post_norms, ffn_act=A.ffn_act, **kw)

    def _map_tensors(self) -> dict:
        """The view of every tensor the spec names: ``name -> (file tensor, expert, row0, row1)``
        (expert None for 2-D tensors; rows None for the whole tensor). Checks that the file holds exactly
        the tensors the architecture expects."""
        s, A = self.spec, self.arch
        have = set(self._tensors)
        views, used = {}, set()

        def take(name, src=None, expert=None, rows=None):
            src = src or name
            if src not in have:
                raise ValueError(f"{self.path}: tensor {src!r} (architecture {A.name}) is missing")
            views[name] = (src, expert, *(rows or (None, None)))
            used.add(src)

        for name, kind, layer, _shape in s.matrices():
            i = layer
            if kind in ("attn_q", "attn_k", "attn_v") and f"blk.{i}.attn_qkv.weight" in have:
                r0 = {"attn_q": 0, "attn_k": s.q_dim, "attn_v": s.q_dim + s.kv_dim}[kind]
                n = s.q_dim if kind == "attn_q" else s.kv_dim
                take(name, f"blk.{i}.attn_qkv.weight", rows=(r0, r0 + n))
            elif kind in ("ffn_gate", "ffn_up") and A.fused_ffn_up:
                r0 = 0 if kind == "ffn_gate" else s.d_ff
                take(name, f"blk.{i}.ffn_up.weight", rows=(r0, r0 + s.d_ff))
            elif kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                e = int(name.split(".")[3])
                merged = f"blk.{i}.{kind}.weight"
                if merged in have:
                    take(name, merged, expert=e)
                else:  # one tensor per expert (early Mixtral files)
                    take(name, f"blk.{i}.{kind[:-5]}.{e}.weight")
            else:
                take(name)
        for name, kind, layer, _n in s.vectors():
            i = layer
            if kind in ("attn_q_bias", "attn_k_bias", "attn_v_bias") and f"blk.{i}.attn_qkv.bias" in have:
                r0 = {"attn_q_bias": 0, "attn_k_bias": s.q_dim, "attn_v_bias": s.q_dim + s.kv_dim}[kind]
                take(name, f"blk.{i}.attn_qkv.bias", rows=(r0, r0 + _n))
            else:
                take(name)
        extra = sorted(have - used - {"rope_freqs.weight"})
        if extra:
            raise ValueError(f"{self.path}: tensor {extra[0]!r} is not expected by architecture {A.name}"
                             + (f" (nor {len(extra) - 1} more)" if len(extra) > 1 else ""))
        return views

    def _rope_scaling(self, head_dim: int, theta: float) -> RopeScaling | None:
        """Llama 3 frequency scaling, from ``rope.scaling.*`` keys or the ``rope_freqs.weight`` tensor.

        llama.cpp's converter stores Llama 3 scaling as ``rope_freqs.weight``: one divisor per frequency
        (1 for short wavelengths, ``factor`` for long ones, a smooth blend between). The
        :class:`RopeScaling` parameters are recovered from it and checked to reproduce it.
        """
        a = self.arch.name + ".rope.scaling."
        stype = self._get(a + "type")
        orig = self._number(a + "original_context_length", int, 8192) or 8192
        if stype is not None and stype not in ("llama3", "linear", "none"):
            raise ValueError(f"{self.path}: rope scaling type {stype!r} is not supported "
                             "(supported: linear, llama3)")
        for t in ("rope_factors_long.weight", "rope_factors_short.weight"):
            if t in self._tensors:
                raise ValueError(f"{self.path}: tensor {t!r} (long-context RoPE factors) is not supported")
        try:
            if stype == "linear":
                factor = self._number(a + "factor", float, 1.0) or 1.0
                return None if factor == 1.0 else RopeScaling(factor, type="linear")
            if "rope_freqs.weight" not in self._tensors:
                if stype == "llama3":
                    return RopeScaling(self._number(a + "factor", float, 8.0), 1.0, 4.0, orig)
                return None
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(str(self.path)) else f"{self.path}: {a}*: {msg}") from None
        f = self.float32("rope_freqs.weight").astype(np.float64)
        if f.shape != (head_dim // 2,):
            raise ValueError(f"{self.path}: rope_freqs.weight has shape {f.shape}, expected ({head_dim // 2},)")
        if not (np.isfinite(f).all() and (f > 0).all()):
            raise ValueError(f"{self.path}: rope_freqs.weight holds divisors that are not positive and finite")
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
        try:
            scaling = RopeScaling(factor, low, high, orig)
        except ValueError as exc:
            raise ValueError(f"{self.path}: rope_freqs.weight does not follow Llama 3 scaling ({exc})") from None
        from hcemu.model.ops import llama3_frequency_divisors

        got = llama3_frequency_divisors(inv_freq, scaling)
        if not np.allclose(got, f, rtol=1e-3):
            raise ValueError(f"{self.path}: rope_freqs.weight does not follow Llama 3 scaling "
                             f"(best fit {scaling})")
        return scaling

    # ---- tensors
    def tensor_names(self) -> list[str]:
        """The names the spec uses (views of fused or 3-D file tensors included), then any other file
        tensor the source serves (``rope_freqs.weight``)."""
        return list(self._views) + [n for n in self._tensors if n == "rope_freqs.weight"]

    def _tensor(self, name: str):
        """``(file tensor, ggml type, expert, row0, row1)`` of a served name."""
        if self._reader is None:
            raise ValueError(f"GGUFSource for {self.path} is closed")
        src, expert, r0, r1 = self._views.get(name, (name, None, None, None))
        try:
            t = self._tensors[src]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in {self.path}") from None
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TYPES:
            raise ValueError(f"tensor {name!r} in {self.path} has type {tname}; supported types: "
                             f"{', '.join(SUPPORTED_TYPES)}")
        dims = len(t.shape)
        if dims > 3 or (dims == 3) != (expert is not None):
            raise ValueError(f"tensor {src!r} in {self.path} has {dims} dimensions; expected "
                             f"{'3 (experts)' if expert is not None else 'a vector or a matrix'}")
        return t, tname, expert, r0, r1

    def _shape(self, name: str, t, expert, r0, r1) -> tuple:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if expert is not None:
            if not 0 <= expert < shape[0]:
                raise ValueError(f"{self.path}: {name} asks expert {expert} of a tensor of {shape[0]} experts")
            shape = shape[1:]
        if r0 is not None:
            if r1 > shape[0]:
                raise ValueError(f"{self.path}: {name} is rows {r0}..{r1} of a tensor of {shape[0]} rows")
            shape = (r1 - r0,) + shape[1:]
        want = self._spec_shapes().get(name)
        if want is not None and len(shape) == 1 and len(want) == 2 and want[0] == 1:
            shape = want  # a (d,) vector serving as a one-row matrix (the shared expert's gate)
        return shape

    def _check_matrix_shapes(self) -> None:
        """Every matrix the spec names has the spec's shape in the file (a matrix whose dimensions do not
        suit a view is left to :meth:`raw`'s error): metadata claiming sizes the tensors do not have
        (``embedding_length = 2**63``) are an error at open, before a compile sizes anything by them."""
        for name, _kind, _layer, want in self.spec.matrices():
            src, expert, r0, r1 = self._views[name]
            t = self._tensors[src]
            if len(t.shape) > 3 or (len(t.shape) == 3) != (expert is not None):
                continue
            shape = self._shape(name, t, expert, r0, r1)
            if shape != tuple(want):
                raise ValueError(f"{self.path}: tensor {name!r} has shape {shape} in the file, the metadata "
                                 f"give {tuple(want)}")

    def _spec_shapes(self) -> dict:
        cache = getattr(self, "_shapes_cache", None)
        if cache is None and getattr(self, "spec", None) is not None:
            cache = {n: tuple(sh) for n, _k, _l, sh in self.spec.matrices()}
            self._shapes_cache = cache
        return cache or {}

    @staticmethod
    def _select(data, t, expert, r0, r1):
        if expert is not None:
            data = data[expert]
        if r0 is not None:
            data = data[r0:r1]
        return data

    def raw(self, name: str) -> RawTensor:
        """The tensor as stored. BF16 data is returned as its uint16 bit patterns (numpy has no bf16)."""
        t, tname, expert, r0, r1 = self._tensor(name)
        shape = self._shape(name, t, expert, r0, r1)
        data = t.data
        if tname == "BF16":
            data = self._select(data.view(np.uint16).reshape(tuple(reversed(t.shape.tolist()))), t, expert, r0, r1)
            data = data.reshape(shape)
        elif tname in BLOCK_TYPES:
            full = tuple(int(d) for d in reversed(t.shape.tolist()))
            data = data.reshape(full[:-1] + (-1,)) if len(full) > 1 else data.reshape(1, -1)
            data = self._select(data, t, expert, r0, r1)
            data = data.reshape(shape[0] if len(shape) == 2 else 1, -1)
        else:
            full = tuple(int(d) for d in reversed(t.shape.tolist()))
            data = self._select(data.reshape(full), t, expert, r0, r1).reshape(shape)
        return RawTensor(name, tname, shape, data)

    def float32(self, name: str) -> np.ndarray:
        t, tname, expert, r0, r1 = self._tensor(name)
        shape = self._shape(name, t, expert, r0, r1)
        full = tuple(int(d) for d in reversed(t.shape.tolist()))
        if tname == "F32":
            out = np.array(self._select(np.asarray(t.data).reshape(full), t, expert, r0, r1), dtype=np.float32)
        elif tname == "F16":
            out = self._select(np.asarray(t.data).reshape(full), t, expert, r0, r1).astype(np.float32)
        elif tname == "BF16":
            bits = self._select(np.asarray(t.data).view(np.uint16).reshape(full), t, expert, r0, r1)
            out = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            data = np.asarray(t.data)
            data = data.reshape(full[:-1] + (-1,)) if len(full) > 1 else data.reshape(1, -1)
            out = self._gguf.quants.dequantize(self._select(data, t, expert, r0, r1), t.tensor_type)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)

    @property
    def description(self) -> str:
        return f"{self.spec.name} ({self.path.name})"

    def close(self) -> None:
        # np.memmap is released when the reader is dropped
        self._tensors = {}
        self._reader = None
