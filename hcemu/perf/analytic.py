"""Event counts from shapes alone: the analytical twin of the functional chip's counters.

Composes the counting rules of :mod:`hcemu.events` (``docs/events.md``). Every per-pass count is
*affine in the number of keys* a pass attends (``p + 1`` at position ``p``, ``min(p + 1, window)`` in a
sliding-window layer): ``counts(p) = const + keys(p) * per_key``. :func:`pass_coefficients` returns
those two vectors per region kind, so totals over any set of positions need only the number of passes
and the sum of the keys — which is what makes the vectorized sweeps cheap.

Pass accounting matches :meth:`hcemu.chip.Chip.generate`: a prompt of ``n_prompt`` tokens is
``n_prompt`` layer passes (positions ``0 .. n_prompt-1``) with the output head on the last one only;
``n_generated`` tokens out need ``n_generated - 1`` decode steps (the first token comes from the
prefill's logits, the last one is never fed back), at positions ``n_prompt .. n_prompt+n_generated-2``,
each with the head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hcemu.events import (Events, adapter_counts, attended_keys, attention_counts, embed_counts,
                          expert_vector_counts, head_vector_counts, layer_vector_counts, product_counts)
from hcemu.formats import ADAPTER_FORMATS, Plan, WeightFormat, adapter_sram_bytes, kv_bytes_per_token_layer
from hcemu.model.spec import LAYER_MATRICES, ModelSpec


def kv_bytes_per_key_head(spec: ModelSpec, plan: Plan) -> int:
    """SRAM bytes of one token's K and V for one KV head in one layer (values plus scales)."""
    return kv_bytes_per_token_layer(1, spec.head_dim, plan.kv)


def kv_bytes_per_token(spec: ModelSpec, plan: Plan) -> int:
    """SRAM bytes one token adds to the KV cache over all layers."""
    return spec.n_layers * kv_bytes_per_token_layer(spec.n_kv_heads, spec.head_dim, plan.kv)


def head_format(spec: ModelSpec, plan: Plan) -> WeightFormat:
    """Format of the output product: the embedding's when the embeddings are tied."""
    if spec.tied_embeddings:
        return plan.format_for("embedding", "token_embd.weight", spec.matrix_shape("embedding")[1])
    return plan.format_for("output", "output.weight", spec.matrix_shape("output")[1])


@dataclass(frozen=True)
class LoraShape:
    """The shape of a LoRA adapter for analytical counts and sizing: ``rank`` on the matrices ``kinds``
    of every layer, held in SRAM as ``fmt`` (``"int8"`` or ``"fp16"``)."""

    rank: int
    kinds: tuple = LAYER_MATRICES
    fmt: str = "int8"

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        bad = [k for k in self.kinds if k not in LAYER_MATRICES]
        if bad or not self.kinds:
            raise ValueError(f"LoRA matrices must be among {LAYER_MATRICES}, got {self.kinds!r}")
        if self.fmt not in ADAPTER_FORMATS:
            raise ValueError(f"adapter format must be one of {ADAPTER_FORMATS}, got {self.fmt!r}")

    def layer_counts(self, spec: ModelSpec) -> np.ndarray:
        """int64 per-pass counts of one layer's side paths (:func:`hcemu.events.adapter_counts`)."""
        return sum(adapter_counts(self.fmt, *spec.matrix_shape(kind), self.rank) for kind in self.kinds)

    def sram_bytes(self, spec: ModelSpec) -> int:
        """SRAM bytes the adapter occupies over all layers."""
        return spec.n_layers * sum(adapter_sram_bytes(self.fmt, *spec.matrix_shape(k), self.rank)
                                   for k in self.kinds)


def _lora_shapes(adapters) -> tuple:
    if adapters is None:
        return ()
    if isinstance(adapters, LoraShape):
        return (adapters,)
    out = tuple(adapters)
    for a in out:
        if not isinstance(a, LoraShape):
            raise TypeError(f"adapters must be LoraShape objects, got {type(a).__name__}")
    return out


@dataclass(frozen=True)
class PassCoefficients:
    """Per-pass counts as ``const + keys * per_key`` for each region kind; int64 vectors over FIELDS.

    windows: each layer's sliding window (0: full causal), which decides the keys its passes attend.
    expert_const: one token pass through one routed expert (its region), None for a dense model."""

    layer_const: np.ndarray
    layer_per_key: np.ndarray
    head_const: np.ndarray
    embed_const: np.ndarray
    by_layer: np.ndarray | None = None
    """(n_layers, fields) per-layer constants when layers differ in formats (a plan with per-tensor
    overrides, e.g. ``gguf`` resolved against a file); ``layer_const`` is then their integer mean."""
    windows: tuple = ()
    expert_const: np.ndarray | None = None


def pass_coefficients(spec: ModelSpec, plan: Plan, adapters=()) -> PassCoefficients:
    """Per-pass counts of each region kind, composed from the counting rules of :mod:`hcemu.events`;
    each matrix in its plan format (``plan.format_for``, block formats' fallbacks included);
    adapters: :class:`LoraShape` (or a sequence of them) applied on every layer pass."""
    attn_pass, per_key = attention_counts(spec, plan.kv)
    base = layer_vector_counts(spec) + attn_pass
    for a in _lora_shapes(adapters):
        if spec.is_moe and any(k.startswith("ffn_") for k in a.kinds):
            raise ValueError(f"LoRA on {', '.join(a.kinds)}: a mixture-of-experts model's adapters apply to its "
                             f"attention matrices only")
        base = base + a.layer_counts(spec)
    rows = {}
    for i in range(spec.n_layers):
        mats = list(spec.layer_matrices(i))
        fmts = tuple(plan.format_for(kind, name, shape[1]) for name, kind, shape in mats)
        if fmts not in rows:
            rows[fmts] = base + sum(product_counts(f, *shape) for f, (_n, _k, shape) in zip(fmts, mats))
        rows.setdefault(i, rows[fmts])
    by_layer = None
    if len({k for k in rows if isinstance(k, tuple)}) == 1:
        layer = rows[0].copy()
    else:
        by_layer = np.stack([rows[i] for i in range(spec.n_layers)])
        layer = by_layer.sum(axis=0) // spec.n_layers
    head = head_vector_counts(spec) + product_counts(head_format(spec, plan), *spec.matrix_shape("output"))
    embed = embed_counts(spec, plan.format_for("embedding", "token_embd.weight", spec.matrix_shape("embedding")[1]))
    expert = None
    if spec.is_moe:  # every expert in the format of layer 0's expert 0
        expert = expert_vector_counts(spec)
        for name, kind, shape in spec.expert_matrices(0, 0):
            expert += product_counts(plan.format_for(kind, name, shape[1]), *shape)
    for a in (layer, per_key, head, embed) + tuple(x for x in (by_layer, expert) if x is not None):
        a.flags.writeable = False
    return PassCoefficients(layer, per_key, head, embed, by_layer,
                            tuple(spec.block(i).window for i in range(spec.n_layers)), expert)


def balanced_expert_passes(spec: ModelSpec, passes: int) -> np.ndarray:
    """How the analytical generator routes ``passes`` token passes through one mixture-of-experts layer:
    ``passes * n_experts_used`` expert passes spread evenly, the remainder one each to the lowest experts
    (int64 (n_experts,)). A *balanced-routing assumption*: the functional chip counts the real routes."""
    total = passes * spec.n_experts_used
    return total // spec.n_experts + (np.arange(spec.n_experts) < total % spec.n_experts).astype(np.int64)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def events_for_passes(spec: ModelSpec, plan: Plan, positions, head_passes: int | None = None,
                      adapters=()) -> Events:
    """Events of layer passes at the given ``positions`` (each attends ``p + 1`` keys).

    head_passes: how many of them also run the output head (default: all of them). adapters:
    :class:`LoraShape` (or several) applied on every layer pass.
    """
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.size and pos.min() < 0:
        raise ValueError(f"positions must be >= 0, got min {pos.min()}")
    n = int(pos.size)
    heads = n if head_passes is None else _check_count("head_passes", head_passes)
    if heads > n:
        raise ValueError(f"head_passes {heads} exceeds the number of passes {n}")
    co = pass_coefficients(spec, plan, adapters)
    ev = Events.for_spec(spec)
    keys = {w: attended_keys(pos, w) for w in set(co.windows)}
    const = co.layer_const if co.by_layer is None else co.by_layer
    ev.counts[: spec.n_layers] = const * n + co.layer_per_key * np.array(
        [keys[w] for w in co.windows], np.int64)[:, None]
    if spec.is_moe:
        ev.counts[spec.n_layers + 2:] = np.tile(balanced_expert_passes(spec, n), spec.n_layers)[:, None] * co.expert_const
    ev.counts[ev.head] = co.head_const * heads
    ev.counts[ev.embed] = co.embed_const * n
    return ev


def decode_keys(n_prompt, steps, window: int = 0):
    """Keys attended by ``steps`` decode passes at positions ``n_prompt .. n_prompt + steps - 1`` (the
    sum of ``min(p + 1, window)``, window 0: ``p + 1``), for float arrays of prompts and steps (the
    vectorized sweeps; :func:`hcemu.events.attended_keys` for one set of positions)."""
    n_prompt = np.asarray(n_prompt, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    full = steps * n_prompt + steps * (steps + 1) / 2    # sum of p + 1 = n_prompt + 1 .. n_prompt + steps
    if not window:
        return full
    lo, hi = n_prompt + 1, n_prompt + steps              # the values of p + 1
    below = np.clip(window - lo + 1, 0, steps)            # passes that see fewer than `window` keys
    return np.where(hi <= window, full, below * lo + below * (below - 1) / 2 + (steps - below) * window)


def decode_positions(n_prompt: int, n_generated: int) -> np.ndarray:
    """Positions of the decode steps that produce ``n_generated`` tokens after an ``n_prompt`` prompt."""
    return np.arange(n_prompt, n_prompt + max(n_generated - 1, 0), dtype=np.int64)


def events_from_shapes(spec: ModelSpec, plan: Plan, n_prompt: int = 0, n_generated: int = 0, *,
                       positions=None, all_logits: bool = False, adapters=()) -> Events:
    """Events the functional chip counts for a prompt of ``n_prompt`` tokens and ``n_generated`` tokens out.

    With ``positions`` (a sequence of positions), count one decode pass (layers and head) at each
    instead, and ``n_prompt``/``n_generated`` must be 0. ``all_logits`` runs the head on every prompt
    token (evaluation), as ``Chip.prefill(all_logits=True)``. ``adapters``: :class:`LoraShape` (or
    several) on every layer pass, as a chip request with such adapters selected counts.
    """
    n_prompt = _check_count("n_prompt", n_prompt)
    n_generated = _check_count("n_generated", n_generated)
    if positions is not None:
        if n_prompt or n_generated:
            raise ValueError("give either positions or n_prompt/n_generated, not both")
        return events_for_passes(spec, plan, positions, adapters=adapters)
    if n_generated and not n_prompt:
        raise ValueError("generating tokens needs a prompt of at least one token (n_prompt >= 1)")
    if n_prompt + n_generated > spec.max_context + 1:
        raise ValueError(f"n_prompt + n_generated = {n_prompt + n_generated} exceeds the model's "
                         f"context of {spec.max_context} tokens")
    ev = events_for_passes(spec, plan, np.arange(n_prompt), head_passes=n_prompt if all_logits else min(n_prompt, 1),
                           adapters=adapters)
    if n_generated > 1:
        ev += events_for_passes(spec, plan, decode_positions(n_prompt, n_generated), adapters=adapters)
    return ev
