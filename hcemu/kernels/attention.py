"""The chip's SRAM KV cache and its streaming attention unit (C kernels in csrc/hc_attn.c).

Numerics (docs/numerics.md "KV cache", "Attention"): an int8 cache holds K and V as int8 codes with
one fp16 scale per (token, kv head); an fp16 cache holds them as IEEE half. Attention streams the
cache in blocks of :data:`ATTN_BLOCK` keys with an online softmax; with an int8 cache the query is
quantized to int8 per (token, head) and q.k are exact int32 dot products. Events follow
docs/events.md. The numpy oracle is :mod:`hcemu.kernels.attention_ref`.
"""
from __future__ import annotations

import numpy as np

from hcemu import _core
from hcemu.formats import KV_FORMATS, kv_bytes_per_token_layer  # noqa: F401 (part of this API)

ATTN_BLOCK = _core.ATTN_BLOCK
"""Keys per block streamed from SRAM (one online-softmax step)."""

class ContextOverflowError(ValueError):
    """The context does not fit in the KV cache's SRAM."""


class KVCache:
    """The chip's SRAM KV cache for every layer, one sequence.

    Storage is KV-head major so each head's keys stream contiguously: int8 codes
    ``k_codes``/``v_codes`` (n_layers, n_kv_heads, capacity_tokens, head_dim) and fp16 scales as
    uint16 bits ``k_scales``/``v_scales`` (n_layers, n_kv_heads, capacity_tokens); fp16 values as
    uint16 bits ``k``/``v`` (n_layers, n_kv_heads, capacity_tokens, head_dim).

    Give the size as ``capacity_tokens`` or as ``capacity_bytes`` (SRAM bytes; the cache then holds
    ``capacity_bytes // bytes_per_token`` tokens). ``length`` counts committed tokens: each layer
    appends the same ``t`` tokens, then :meth:`commit` advances ``length`` by ``t``.
    """

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity_tokens=None, *, capacity_bytes=None,
                 fmt="int8"):
        for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"KVCache: {name} must be a positive integer, got {value!r}")
        if fmt not in KV_FORMATS:
            raise ValueError(f"KVCache: fmt must be one of {KV_FORMATS}, got {fmt!r}")
        self.n_layers, self.n_kv_heads, self.head_dim = int(n_layers), int(n_kv_heads), int(head_dim)
        self.fmt = fmt
        self.bytes_per_token_layer = kv_bytes_per_token_layer(self.n_kv_heads, self.head_dim, fmt)
        self.bytes_per_token = self.n_layers * self.bytes_per_token_layer
        if (capacity_tokens is None) == (capacity_bytes is None):
            raise ValueError("KVCache: give exactly one of capacity_tokens and capacity_bytes")
        if capacity_bytes is not None:
            if capacity_bytes < 0:
                raise ValueError(f"KVCache: capacity_bytes must be >= 0, got {capacity_bytes}")
            capacity_tokens = int(capacity_bytes) // self.bytes_per_token
            if capacity_tokens < 1:
                raise ContextOverflowError(
                    f"KVCache: {capacity_bytes} bytes hold no token ({self.bytes_per_token} bytes per "
                    f"token over {self.n_layers} layers, {fmt})")
        if int(capacity_tokens) != capacity_tokens or capacity_tokens < 1:
            raise ValueError(f"KVCache: capacity_tokens must be a positive integer, got {capacity_tokens!r}")
        self.capacity_tokens = int(capacity_tokens)
        shape = (self.n_layers, self.n_kv_heads, self.capacity_tokens, self.head_dim)
        if fmt == "int8":
            self.k_codes = np.zeros(shape, np.int8)
            self.v_codes = np.zeros(shape, np.int8)
            self.k_scales = np.zeros(shape[:3], np.uint16)
            self.v_scales = np.zeros(shape[:3], np.uint16)
            self._store = _core.KVStore(self.k_codes, self.v_codes, self.k_scales, self.v_scales)
        else:
            self.k = np.zeros(shape, np.uint16)
            self.v = np.zeros(shape, np.uint16)
            self._store = _core.KVStore(self.k, self.v)
        self.length = 0

    @property
    def nbytes(self) -> int:
        """SRAM bytes of the whole cache (values and scales, all layers)."""
        return self.capacity_tokens * self.bytes_per_token

    def filled(self, layer: int) -> int:
        """Tokens written in ``layer``: committed plus appended since the last commit."""
        return self._store.filled(layer)

    def _overflow(self, tokens: int) -> ContextOverflowError:
        return ContextOverflowError(
            f"a context of {tokens} tokens does not fit: the KV cache holds {self.capacity_tokens} "
            f"tokens in {self.nbytes} bytes ({self.bytes_per_token} bytes per token over "
            f"{self.n_layers} layers, {self.fmt})")

    def append(self, layer, k, v, *, events=None, region=None) -> None:
        """Write k, v float32 (t, n_kv_heads, head_dim) at the next t positions of ``layer``.

        Counts ``sram_kv_bytes_written`` into ``events`` (region ``region``, default ``layer``).
        Raises :class:`ContextOverflowError` (writing nothing) when the tokens do not fit.
        """
        if self._store.append(layer, k, v, events, region) < 0:
            raise self._overflow(self._store.filled(layer) + k.shape[0])

    def commit(self, t) -> None:
        """Advance ``length`` by t after every layer appended the same t tokens."""
        target = self.length + t
        filled = self._store.filled_all()
        bad = [i for i, f in enumerate(filled) if f != target]
        if t < 0 or bad:
            raise ValueError(f"KVCache.commit({t}): every layer must have appended {t} tokens after "
                             f"{self.length} committed; layers {bad[:8]} hold {[filled[i] for i in bad[:8]]}")
        self.length = target

    def reset(self) -> None:
        """Forget every token (the SRAM contents are simply overwritten later)."""
        self.length = 0
        self._store.reset(0)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` committed tokens (later appends overwrite the rest)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"KVCache.truncate({n}): must be within 0..{self.length} committed tokens")
        self.length = int(n)
        self._store.reset(self.length)

    def rollback(self) -> None:
        """Drop tokens appended since the last commit (every layer back to ``length``)."""
        self._store.reset(self.length)

    def keys_values(self, layer: int, n: int | None = None):
        """Dequantized float32 K and V of ``layer``, (n, n_kv_heads, head_dim), first n tokens."""
        n = self._store.filled(layer) if n is None else n
        if self.fmt == "int8":
            ks = self.k_scales[layer, :, :n].view(np.float16).astype(np.float32)
            vs = self.v_scales[layer, :, :n].view(np.float16).astype(np.float32)
            k = self.k_codes[layer, :, :n].astype(np.float32) * ks[..., None]
            v = self.v_codes[layer, :, :n].astype(np.float32) * vs[..., None]
        else:
            k = self.k[layer, :, :n].view(np.float16).astype(np.float32)
            v = self.v[layer, :, :n].view(np.float16).astype(np.float32)
        return k.transpose(1, 0, 2), v.transpose(1, 0, 2)

    def __repr__(self) -> str:
        return (f"KVCache({self.n_layers} layers x {self.n_kv_heads} kv heads x {self.head_dim}, "
                f"{self.fmt}, {self.length}/{self.capacity_tokens} tokens, {self.nbytes} bytes)")


def attention(q, cache: KVCache, layer, start, *, out=None, events=None, region=None, scale: float = 0.0,
              softcap: float = 0.0, window: int = 0) -> np.ndarray:
    """Causal grouped-query attention of q float32 (t, n_heads, head_dim) (RoPE applied) over
    ``layer`` of ``cache``: query i sits at position ``start + i`` and attends keys
    ``[0, start + i]`` (its own included, appended before the call; with ``window`` > 0 only the last
    ``window`` of them); head h reads kv head ``h // (n_heads // n_kv_heads)``. ``scale``: the score
    scale (0: ``1 / sqrt(head_dim)``); ``softcap`` > 0: scores ``s -> tanh(s / softcap) * softcap``.
    Returns float32 (t, n_heads * head_dim) (into ``out`` if given).

    Counts ``sram_kv_bytes_read``, ``attn_macs``, ``vec_flops`` and ``vec_transcendentals`` of the
    softmax into ``events`` (region ``region``, default ``layer``), per docs/events.md.
    """
    return cache._store.attend(q, layer, start, out, events, region, scale, softcap, window)
