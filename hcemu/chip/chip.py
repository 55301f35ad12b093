"""The functional chip: runs a compiled ROM image token by token, as the silicon would.

Every weight product goes through the compute-in-memory kernels (:mod:`hcemu.kernels.cim`) reading the
image's ROM tiles; nothing multiplies float weights. The KV cache lives in an SRAM model
(:class:`hcemu.kernels.attention.KVCache`), the vector unit (:mod:`hcemu.kernels.vector`) does norms, RoPE,
SiLU/GELU, biases, soft-caps and residual adds in float32. The layers are built from the block kinds of
the model's spec (:meth:`hcemu.model.spec.ModelSpec.block`; docs/chip.md "Block kinds"). Each step
returns the logits and the :class:`~hcemu.events.Events` it spent,
counted by the rules of ``docs/events.md``.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from hcemu import _core
from hcemu.chip.lora import DEFAULT_ADAPTER_SRAM_BYTES, SramAdapter, selection_slots
from hcemu.events import (Events, LinkEvents, embed_counts, expert_vector_counts, head_vector_counts,
                          layer_vector_counts)
from hcemu.kernels import cim, vector
from hcemu.kernels.attention import KVCache, attention
from hcemu.kernels.lora import adapter_apply
from hcemu.layout import dequantize_rows, stack_rows
from hcemu.model.ops import rope_tables

MAX_CHUNK = 64
"""Tokens per prefill pass through the CIM kernels (their small-batch limit M <= 64)."""


class ChipBusyError(RuntimeError):
    """A :class:`Chip` (or a :class:`~hcemu.chip.system.System`) was asked to run while another thread
    was running it: it holds one sequence's KV cache, so its steps refuse concurrent use (one per
    thread; chips may share a RomImage)."""


def exclusive(method):
    """Make ``method`` refuse (:class:`ChipBusyError`) while another thread is inside an exclusive
    method of the same object (``self._busy``, a ``threading.RLock``; the same thread may nest)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._busy.acquire(blocking=False):
            kind = type(self).__name__
            raise ChipBusyError(f"{kind}.{method.__name__}: another thread is running this {kind.lower()} (it "
                                f"holds one sequence's KV cache; use one {kind} per thread)")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy.release()
    return run


class _EventRows:
    """The rows of an :class:`Events` from one layer on, for the compiled pass (which counts layer
    ``j`` of its chip into row ``j`` of what it is given)."""

    __slots__ = ("counts",)

    def __init__(self, counts: np.ndarray):
        self.counts = counts


@dataclass
class StepResult:
    """What one prefill or decode step produced.

    logits: float32 (t, vocab) — all positions of the step if asked, else only the last (1, vocab).
    events: the events of this step alone. bank_rows: ROM rows read per bank in this step (int64,
    indexed by the image's chip-wide bank id). routes: for a mixture-of-experts model, the experts
    each token of the step was routed to, int32 (t, n_layers, n_experts_used) in routing order
    (None for a dense model).
    """

    logits: np.ndarray
    events: Events
    bank_rows: np.ndarray
    routes: np.ndarray | None = field(default=None, kw_only=True)
    adapters: tuple = field(default=(), kw_only=True)  # names of the LoRA adapters the step applied


class SramBudgetError(ValueError):
    """An adapter (or the KV cache) does not fit the chip's SRAM."""


@dataclass(frozen=True)
class _Kernels:
    quantize: object
    matmul: object
    linear: object
    rmsnorm: object
    rope: object
    silu_mul: object
    add: object
    attention: object
    kv_append: object
    gelu_mul: object
    add_rows: object
    scale: object
    softcap: object
    moe_route: object
    axpy_rows: object
    sigmoid: object


@dataclass(frozen=True)
class _Layer:
    attn_norm: np.ndarray
    ffn_norm: np.ndarray
    wq: object
    wk: object
    wv: object
    wo: object
    wg: object
    wu: object
    wd: object
    wqkv: object      # q, k, v stacked (None: run them apart)
    wgate_up: object  # gate, up stacked (None: run them apart)
    extras: dict      # block kinds: float32 vectors bq, bk, bv, q_norm, k_norm, attn_post_norm, ffn_post_norm
    window: int       # sliding window in keys (0: full causal)
    local_rope: bool  # the layer rotates with the local (sliding-window) RoPE table
    moe: object = None  # _MoE of a mixture-of-experts layer (wg, wu, wd, wgate_up are then None)


@dataclass(frozen=True)
class _MoE:
    router: object       # (n_experts, d_model)
    experts: list        # per expert: (gate|up stacked or None, gate, up, down)
    shared: tuple        # the shared expert's (gate|up or None, gate, up, down), or None
    shared_gate: object  # (1, d_model): the shared expert's sigmoid gate, or None


class Chip:
    """A hard-coded chip executing one :class:`~hcemu.rom.image.RomImage`.

    kv_capacity_tokens: SRAM KV-cache capacity in tokens (default: the model's max context, capped
    at 8192). kv_sram_bytes: the capacity as bytes instead (the number of tokens that fit is derived).
    kv_format: ``"int8"`` or ``"fp16"`` KV cache (default: the plan's); the SRAM is not part of the
    ROM image, so this is chosen per chip (``self.plan`` then carries it).
    n_threads: host threads for the CIM kernels. fuse_products: run q/k/v (and gate/up), which read
    the same activations, as one product over their stacked tiles — a host-speed measure (fewer
    calls, longer streams) that costs a host-memory copy of those matrices; values and events are
    identical either way. compiled: run the transformer layers as one C call per step
    (:class:`hcemu._core.Decoder`, csrc/hc_chip.c) instead of the interpreted loop of
    :meth:`_layers_interpreted`, which calls the same kernels in the same order from Python (the
    readable form of the dataflow; values and events are identical, tests hold them so).
    A die of a multi-chip system (an image whose :attr:`~hcemu.rom.image.RomImage.die` is not the
    whole model) holds only its layers, and the embedding or the head where the partition put them:
    such a chip runs inside a :class:`hcemu.chip.system.System` (:meth:`embed`, :meth:`run_layers`,
    :meth:`head`); its KV cache holds its own layers; it counts its events into the whole model's regions.
    Thread safety: a chip holds one sequence; :meth:`prefill`, :meth:`decode`, :meth:`generate`,
    :meth:`reset` and the stages :meth:`embed`, :meth:`run_layers`, :meth:`head` raise
    :class:`ChipBusyError` while another thread is inside one of them (use one chip per thread; chips
    on one RomImage run in parallel, the kernels release the GIL).
    sram_bytes: the chip's SRAM, shared by the KV cache (allocated first) and the resident LoRA
    adapters (default: the KV cache plus ``DEFAULT_ADAPTER_SRAM_BYTES``); see :meth:`load_adapter`.
    profile: time the compiled code
    (``kernel_seconds`` accumulates the time inside compiled calls, two clock reads per call;
    ``layers_call_seconds`` the part of it spent in the compiled layers' calls, their Python wrapper
    included; ``op_seconds()`` splits the compiled layers' C time by operation).
    """

    def __init__(self, image, *, kv_capacity_tokens: int | None = None, kv_sram_bytes: int | None = None,
                 kv_format: str | None = None, n_threads: int = 1, profile: bool = False,
                 fuse_products: bool = True, compiled: bool = True, sram_bytes: int | None = None):
        self._busy = threading.RLock()
        self.image = image
        self.spec = spec = image.spec
        self.die = die = image.die
        self._first = die.first_layer
        plan = image.plan
        if kv_format is not None and kv_format != plan.kv:
            plan = replace(plan, kv=kv_format)  # validates the format
        self.plan = plan
        self.n_threads = int(n_threads)
        if not 1 <= self.n_threads <= _core.MAX_THREADS:
            raise ValueError(f"n_threads must be in 1..{_core.MAX_THREADS}, got {n_threads}")
        if kv_capacity_tokens is None and kv_sram_bytes is None:
            kv_capacity_tokens = min(spec.max_context, 8192)
        self.kv = KVCache(die.n_die_layers, spec.n_kv_heads, spec.head_dim, kv_capacity_tokens,
                          capacity_bytes=kv_sram_bytes, fmt=plan.kv)
        act = plan.activations
        self._g_d = act.group_for(spec.d_model)
        self._g_q = act.group_for(spec.q_dim)
        self._g_f = act.group_for(spec.d_ff)
        self._g_fe = act.group_for(spec.expert_ff) if spec.is_moe else 0
        self._g_fs = act.group_for(spec.d_ff_shared) if spec.d_ff_shared else 0
        self.sram_bytes = int(self.kv.nbytes + DEFAULT_ADAPTER_SRAM_BYTES if sram_bytes is None else sram_bytes)
        if self.sram_bytes < self.kv.nbytes:
            raise SramBudgetError(f"the KV cache ({self.kv.capacity_tokens} tokens, {self.kv.nbytes} bytes) does not fit "
                                  f"the {self.sram_bytes} bytes of SRAM")
        self._resident: dict[str, SramAdapter] = {}
        self._selection: tuple = ()
        self._sel_slots = None  # per layer of this chip, 7 lists of CimAdapters; None: no adapter
        self._sel_counts = None  # int64 (this chip's layers, fields): the selection's events per token pass
        self._layers = [self._load_layer(i, fuse_products) for i in die.layers]
        self._out_norm = (np.ascontiguousarray(image.vector("output_norm.weight"), dtype=np.float32)
                          if die.head else None)
        self._embedding = image.matrix("token_embd.weight") if die.embedding else None
        self._output = (image.matrix("token_embd.weight" if spec.tied_embeddings else "output.weight")
                        if die.head else None)
        self._cos, self._sin = (np.ascontiguousarray(a, dtype=np.float32)
                                for a in rope_tables(spec, np.arange(self.kv.capacity_tokens)))
        self._cos_local = self._sin_local = None
        if any(L.local_rope for L in self._layers):
            self._cos_local, self._sin_local = (np.ascontiguousarray(a, dtype=np.float32) for a in rope_tables(
                spec, np.arange(self.kv.capacity_tokens), local=True))
        self._layer_const, self._head_const, self._embed_const = self._per_pass_counts()
        self.kernel_seconds = 0.0
        self.layers_call_seconds = 0.0  # the compiled layers' calls, wrapper included (profile only)
        self._k = self._kernels(profile)
        self._decoder = None
        if compiled:
            self._decoder = _core.Decoder(
                self.kv._store,
                [(L.attn_norm, L.ffn_norm) + ((L.wqkv, None, None) if L.wqkv is not None else (L.wq, L.wk, L.wv))
                 + (L.wo,) + self._compiled_ffn(L) for L in self._layers],
                d_model=spec.d_model, n_heads=spec.n_heads, d_ff=spec.d_ff, norm_eps=spec.norm_eps,
                act_group_d=self._g_d, act_group_q=self._g_q, act_group_f=self._g_f,
                cos=self._cos, sin=self._sin,
                extras=[{**L.extras, "window": L.window,
                         **({"rope_cos": self._cos_local, "rope_sin": self._sin_local} if L.local_rope else {}),
                         **(self._compiled_moe(L.moe) if L.moe is not None else {})}
                        for L in self._layers],
                rope_neox=spec.rope_style == "neox", ffn_gelu=spec.ffn_act == "gelu",
                qk_norm_full=spec.qk_norm == "full", attn_scale=spec.attn_scale, attn_softcap=spec.attn_softcap,
                n_experts=spec.n_experts, n_experts_used=spec.n_experts_used, d_ff_expert=spec.expert_ff,
                d_ff_shared=spec.d_ff_shared, act_group_fe=self._g_fe, act_group_fs=self._g_fs,
                expert_norm=spec.expert_weights_norm, expert_scale=spec.expert_weights_scale)
            self._decoder.profile = profile
            self._run_layers = self._timed(self._decoder.forward, layers=True) if profile else self._decoder.forward
        self._layer_bank_rows = self._bank_rows(
            [name for i in die.layers for name, _kind, _shape in spec.layer_matrices(i)])
        # per expert region of this chip's layers (j = layer - first): (bank ids, rows) one token pass reads
        self._expert_bank_rows = [
            [tuple(np.concatenate(a) for a in zip(*[image.tensor_banks(name)
                                                  for name, _k, _s in spec.expert_matrices(i, e)]))
             if die.holds_expert(i, e, spec.n_experts) else None
             for e in range(spec.n_experts)] for i in die.layers]
        # experts of this chip's layers it holds, bool (its layers, n_experts); the others run on expert dies
        self._held_experts = np.array([[die.holds_expert(i, e, spec.n_experts) for e in range(spec.n_experts)]
                                       for i in die.layers], bool).reshape(len(self._layers), spec.n_experts)
        self.remote_expert = None
        if self._decoder is not None and not self._held_experts.all():
            self._decoder.remote = lambda j, e, h: self._run_remote(self._first + j, e, h)
        self._embed_bank_rows = {}  # token id -> (bank ids, rows) of its embedding row, filled on use
        self._head_bank_rows = self._bank_rows(
            ["token_embd.weight" if spec.tied_embeddings else "output.weight"] if die.head else [])

    # ------------------------------------------------------------------ setup
    _EXTRA_VECTORS = {"attn_q_bias": "bq", "attn_k_bias": "bk", "attn_v_bias": "bv", "attn_q_norm": "q_norm",
                      "attn_k_norm": "k_norm", "attn_post_norm": "attn_post_norm", "ffn_post_norm": "ffn_post_norm"}

    def _load_layer(self, i: int, fuse: bool) -> _Layer:
        img, spec = self.image, self.spec
        m = {kind: img.matrix(name) for name, kind, _shape in spec.layer_matrices(i)}
        vec = {kind: np.ascontiguousarray(img.vector(name), dtype=np.float32)
               for name, kind, _n in spec.layer_vectors(i)}
        qkv = stack_rows([m["attn_q"], m["attn_k"], m["attn_v"]]) if fuse else None
        extras = {key: vec[kind] for kind, key in self._EXTRA_VECTORS.items() if kind in vec}
        blk = spec.block(i)
        moe = None
        if blk.moe:
            def ffn(gate, up, down):
                return (stack_rows([gate, up]) if fuse else None, gate, up, down)
            experts = []   # None: an expert another die holds (expert parallelism)
            for e in range(spec.n_experts):
                if not self.die.holds_expert(i, e, spec.n_experts):
                    experts.append(None)
                    continue
                x = {kind: img.matrix(name) for name, kind, _shape in spec.expert_matrices(i, e)}
                experts.append(ffn(x["ffn_gate_exps"], x["ffn_up_exps"], x["ffn_down_exps"]))
            shared = (ffn(m["ffn_gate_shexp"], m["ffn_up_shexp"], m["ffn_down_shexp"]) if spec.d_ff_shared
                      else None)
            moe = _MoE(m["ffn_gate_inp"], experts, shared, m.get("ffn_gate_inp_shexp"))
            return _Layer(vec["attn_norm"], vec["ffn_norm"], m["attn_q"], m["attn_k"], m["attn_v"],
                          m["attn_output"], None, None, None, qkv, None, extras, blk.window,
                          blk.rope == "local", moe)
        gate_up = stack_rows([m["ffn_gate"], m["ffn_up"]]) if fuse else None
        return _Layer(vec["attn_norm"], vec["ffn_norm"], m["attn_q"], m["attn_k"], m["attn_v"],
                      m["attn_output"], m["ffn_gate"], m["ffn_up"], m["ffn_down"], qkv, gate_up, extras,
                      blk.window, blk.rope == "local")

    @staticmethod
    def _gate_up_down(ffn) -> tuple:
        """(gate, up, down) of an FFN as the compiled pass takes it: up None when gate holds gate|up."""
        gate_up, gate, up, down = ffn
        return (gate_up, None, down) if gate_up is not None else (gate, up, down)

    def _compiled_ffn(self, L: _Layer) -> tuple:
        """The (wg, wu, wd) of a layer for the compiled pass: its FFN's, its shared expert's, or Nones."""
        if L.moe is None:
            return self._gate_up_down((L.wgate_up, L.wg, L.wu, L.wd))
        return self._gate_up_down(L.moe.shared) if L.moe.shared is not None else (None, None, None)

    def _compiled_moe(self, M: _MoE) -> dict:
        return {"router": M.router, "experts": [None if e is None else self._gate_up_down(e) for e in M.experts],
                "shared_gate": M.shared_gate}

    def _kernels(self, profile: bool) -> _Kernels:
        """The compiled entry points _forward calls; wrapped in timers when profiling."""
        fns = {"quantize": cim.quantize_activations, "matmul": cim.cim_matmul, "linear": cim.cim_linear,
               "rmsnorm": vector.rmsnorm, "rope": vector.rope, "silu_mul": vector.silu_mul,
               "add": vector.add_, "attention": attention, "kv_append": self.kv.append,
               "gelu_mul": vector.gelu_mul, "add_rows": vector.add_rows_, "scale": vector.scale_,
               "softcap": vector.softcap_, "moe_route": vector.moe_route, "axpy_rows": vector.axpy_rows_,
               "sigmoid": vector.sigmoid_}
        if profile:
            fns = {name: self._timed(fn) for name, fn in fns.items()}
        return _Kernels(**fns)

    def _timed(self, fn, layers: bool = False):
        clock = time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                self.kernel_seconds += dt
                if layers:
                    self.layers_call_seconds += dt
        return timed

    def _per_pass_counts(self):
        """The per-pass counts the chip adds itself, besides what its kernels count as they run
        (products, KV traffic, attention): :mod:`hcemu.events`' rules for a layer's and the head's
        vector work and for one embedding lookup (docs/events.md)."""
        s = self.spec
        self._expert_const = expert_vector_counts(s) if s.is_moe else None
        embed = (embed_counts(s, self._embedding.fmt) if self._embedding is not None
                 else np.zeros_like(head_vector_counts(s)))   # a die without the embedding looks nothing up
        return layer_vector_counts(s), head_vector_counts(s), embed

    def _bank_rows(self, names) -> np.ndarray:
        """ROM rows read per bank by one token pass through the named matrices."""
        img = self.image
        rows = np.zeros(img.address_map.n_banks, np.int64)
        for name in names:
            bank_ids, per_pass = img.tensor_banks(name)
            np.add.at(rows, bank_ids, per_pass)
        return rows

    # ------------------------------------------------------------------ state
    @property
    def position(self) -> int:
        """Tokens held in the KV cache (the next token's position)."""
        return self.kv.length

    @property
    def capacity_tokens(self) -> int:
        """Tokens the KV cache holds."""
        return self.kv.capacity_tokens

    @exclusive
    def reset(self) -> None:
        """Forget the sequence (empty the KV cache)."""
        self.kv.reset()

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> dict:
        """Resident adapters, ``{name: SramAdapter}`` (a copy)."""
        return dict(self._resident)

    @property
    def adapter_sram_bytes(self) -> int:
        """SRAM bytes held by the resident adapters."""
        return sum(a.nbytes for a in self._resident.values())

    @property
    def sram_free_bytes(self) -> int:
        """SRAM left for more adapters: ``sram_bytes`` less the KV cache and the resident adapters."""
        return self.sram_bytes - self.kv.nbytes - self.adapter_sram_bytes

    @exclusive
    def load_adapter(self, adapter, *, name: str | None = None, fmt: str = "int8", scale: float = 1.0) -> SramAdapter:
        """Make a LoRA adapter resident in SRAM (the ROM image is untouched); returns its SramAdapter.

        adapter: a :class:`hcemu.model.lora.LoraAdapter`, or the path of an adapter GGUF (read with the
        user ``scale``). fmt: ``"int8"`` (default) or ``"fp16"``. name: the key requests select it by
        (default the adapter's name). Raises :class:`SramBudgetError` when it does not fit the free
        SRAM, ValueError for a name already resident, LoraError for an adapter that does not fit the model.
        """
        from hcemu.model.lora import LoraAdapter, LoraError, load_lora

        if not isinstance(adapter, LoraAdapter):
            adapter = load_lora(adapter, self.spec, scale=scale)
        if self.spec.is_moe and any(kind.startswith("ffn_") for _, kind in adapter.pairs):
            raise LoraError(f"adapter {adapter.name!r} adapts FFN matrices of a mixture-of-experts model; "
                            f"adapters apply to its attention matrices only")
        sa = SramAdapter(adapter, self.spec, fmt, name)
        if sa.name in self._resident:
            raise ValueError(f"an adapter named {sa.name!r} is already resident; unload it or pick another name")
        if sa.nbytes > self.sram_free_bytes:
            raise SramBudgetError(
                f"adapter {sa.name!r} needs {sa.nbytes} bytes of SRAM ({fmt}); the chip's {self.sram_bytes} bytes hold "
                f"the KV cache ({self.kv.nbytes}) and {len(self._resident)} adapter(s) ({self.adapter_sram_bytes}): "
                f"{self.sram_free_bytes} bytes free")
        self._resident[sa.name] = sa
        return sa

    @exclusive
    def unload_adapter(self, name: str) -> None:
        """Free a resident adapter's SRAM (KeyError if none has that name)."""
        if name not in self._resident:
            raise KeyError(f"no resident adapter named {name!r}; resident: {sorted(self._resident)}")
        del self._resident[name]
        if name in self._selection:
            self.select_adapters(None)

    def _names(self, adapter) -> tuple:
        """The resident names a request's ``adapter`` argument selects (loading a LoraAdapter not yet resident)."""
        from hcemu.model.lora import LoraAdapter

        if adapter is None:
            return ()
        items = adapter if isinstance(adapter, (list, tuple)) else (adapter,)
        names = []
        for a in items:
            if isinstance(a, str):
                if a not in self._resident:
                    raise KeyError(f"no resident adapter named {a!r}; resident: {sorted(self._resident)}")
                names.append(a)
            elif isinstance(a, SramAdapter):
                if self._resident.get(a.name) is not a:
                    raise ValueError(f"adapter {a.name!r} is not resident on this chip")
                names.append(a.name)
            elif isinstance(a, LoraAdapter):
                hit = [sa.name for sa in self._resident.values() if sa.source is a]
                names.append(hit[0] if hit else self.load_adapter(a).name)
            else:
                raise TypeError(f"adapter must be a name, an SramAdapter or a LoraAdapter, got {type(a).__name__}")
        return tuple(names)

    @exclusive
    def select_adapters(self, adapter) -> tuple:
        """Point the side paths at ``adapter`` (as :meth:`prefill` takes it) and return the selected
        names. Every step selects its own adapters; this is that switch alone: it repoints 7 slots per
        layer at resident SRAM adapters (no ROM reload, no copy), and is a no-op when nothing changes."""
        names = self._names(adapter)
        self._select(names)
        return names

    def _select(self, names: tuple) -> None:
        if names == self._selection:
            return
        if not names:
            self._sel_slots = self._sel_counts = None
            if self._decoder is not None:
                self._decoder.set_adapters(None)
        else:
            ads = [self._resident[n] for n in names]
            lo, hi = self._first, self._first + len(self._layers)  # this chip's layers of the model
            slots = selection_slots(ads, self.spec.n_layers)[lo:hi]
            if self._decoder is not None:
                self._decoder.set_adapters(slots)
            self._sel_slots = slots
            self._sel_counts = sum(a.layer_counts for a in ads)[lo:hi]
        self._selection = names

    def op_seconds(self) -> dict:
        """With ``profile`` and ``compiled``: ``{op: (seconds, calls)}`` of the kernel calls inside the
        compiled layers, and ``"layers"``: (seconds of the whole compiled calls, steps)."""
        if self._decoder is None:
            return {}
        out = self._decoder.op_times()
        out["layers"] = (self._decoder.seconds, self._decoder.calls)
        return out

    def reset_profile(self) -> None:
        """Zero ``kernel_seconds``, ``layers_call_seconds`` and the per-op times."""
        self.kernel_seconds = 0.0
        self.layers_call_seconds = 0.0
        if self._decoder is not None:
            self._decoder.reset_op_times()

    # ------------------------------------------------------------------ execution
    @exclusive
    def prefill(self, tokens, *, all_logits: bool = False, adapter=None) -> StepResult:
        """Run prompt tokens through the chip in chunks of up to 64, appending their K/V to SRAM.

        The output head runs only where logits leave the chip: on the last prompt token, or on every
        token when ``all_logits`` (evaluation). adapter: the LoRA adapter(s) this step applies — None
        (the ROM model alone), a resident adapter's name, an SramAdapter, a LoraAdapter (made resident
        if it is not), or a sequence of those (their updates add up, in that order).
        """
        self._check_whole()
        tokens = self._check_tokens(tokens)
        self.select_adapters(adapter)
        ev = Events.for_spec(self.spec)
        outs, routes = [], []
        for chunk, head_rows in prefill_chunks(tokens, all_logits):
            logits = self._forward(chunk, ev, head_rows, routes)
            if logits is not None:
                outs.append(logits)
        logits = np.concatenate(outs)
        return StepResult(logits, ev, self._step_bank_rows(tokens, len(logits), ev=ev),
                          routes=np.concatenate(routes) if routes else None, adapters=self._selection)

    @exclusive
    def decode(self, token: int, *, adapter=None) -> StepResult:
        """One decode step: the token at the current position; logits of the next (adapter: as
        :meth:`prefill`)."""
        self._check_whole()
        tokens = self._check_tokens([token])
        self.select_adapters(adapter)
        ev = Events.for_spec(self.spec)
        routes = []
        logits = self._forward(tokens, ev, slice(None), routes)
        return StepResult(logits, ev, self._step_bank_rows(tokens, 1, ev=ev), routes=routes[0] if routes else None,
                          adapters=self._selection)

    def _run_remote(self, layer: int, expert: int, h: np.ndarray) -> np.ndarray:
        """Expert ``expert`` of ``layer`` held by another die, on ``h`` float32 (n, d_model), the rows of the
        layer's normalized FFN input routed to it: :attr:`remote_expert` (set by the system) runs it;
        returns its output float32 (n, d_model)."""
        if self.remote_expert is None:
            raise ValueError(f"{self.die.describe()}: expert {expert} of layer {layer} is held by an expert die; "
                             f"run this die in a hcemu.chip.system.System")
        return self.remote_expert(layer, expert, h)

    def _check_whole(self) -> None:
        if not (self.die.embedding and self.die.head) or self.die.expert_parallel > 1:
            raise ValueError(f"{self.image.path} holds {self.die.describe()}: run it with the other dies in a "
                             f"hcemu.chip.system.System")

    def _check_tokens(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"expected a non-empty 1-D sequence of token ids, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got {arr.dtype}")
        vocab = self.spec.vocab_size
        bad = (arr < 0) | (arr >= vocab)
        if bad.any():
            raise ValueError(f"token id {int(arr[bad][0])} is outside the vocabulary 0..{vocab - 1}")
        free = self.kv.capacity_tokens - self.kv.length
        if arr.size > free:
            raise ValueError(
                f"{arr.size} tokens do not fit the KV cache: {self.kv.length} of {self.kv.capacity_tokens} "
                f"token slots ({self.kv.nbytes} bytes of SRAM) are used, {free} remain")
        return arr.astype(np.int64)

    def _step_bank_rows(self, tokens: np.ndarray | None, head_passes: int, passes: int | None = None,
                        ev: Events | None = None) -> np.ndarray:
        """ROM rows per bank of ``passes`` layer passes (default: one per token), ``head_passes`` head
        passes and the embedding rows of ``tokens`` (None: no lookup on this die); with a
        mixture-of-experts model's events ``ev``, every expert pass they count."""
        passes = len(tokens) if passes is None else passes
        rows = self._layer_bank_rows * passes + self._head_bank_rows * head_passes
        if ev is not None and ev.n_experts:  # every pass routed to an expert reads its matrices' rows
            # the expert regions' tokens of this chip's layers (a system's events hold every die's)
            fired = ev.experts()[self._first:self._first + len(self._layers), :, 0] * self._held_experts
            for j, e in zip(*np.nonzero(fired)):
                ids, per_pass = self._expert_bank_rows[j][e]
                np.add.at(rows, ids, per_pass * int(fired[j, e]))
        if tokens is None:
            return rows
        cache = self._embed_bank_rows
        for tok in tokens.tolist():
            hit = cache.get(tok)
            if hit is None:
                hit = cache[tok] = self.image.row_banks("token_embd.weight", tok)
            np.add.at(rows, *hit)
        return rows

    def _forward(self, tokens: np.ndarray, ev: Events, head_rows: slice, routes: list | None = None) -> np.ndarray | None:
        """All layers for ``tokens`` at the next positions; the head on ``x[head_rows]`` (None if empty).
        A mixture-of-experts model appends the chunk's routes (t, n_layers, k) to ``routes``."""
        x = self.embed(tokens, ev)
        self.run_layers(x, ev, routes)
        self.kv.commit(len(tokens))
        x = x[head_rows]
        if not len(x):
            return None
        return self.head(x, ev)

    # ------------------------------------------------------------------ the three stages of a pass
    @exclusive
    def embed(self, tokens, events: Events) -> np.ndarray:
        """The embedding lookup: float32 (t, d_model) rows for ``tokens`` (checked: ids in the
        vocabulary, room in the KV cache), counted into ``events``' embed region."""
        if self._embedding is None:
            raise ValueError(f"{self.die.describe()} has no embedding")
        tokens = self._check_tokens(tokens)
        x = dequantize_rows(self._embedding, tokens)   # one ROM row per token, scaled in the vector unit
        if self.spec.embed_scale != 1.0:
            self._k.scale(x, self.spec.embed_scale)
        events.counts[events.embed] += len(tokens) * self._embed_const
        return x

    @exclusive
    def run_layers(self, x: np.ndarray, events: Events, routes: list | None = None) -> None:
        """This chip's layers on the residual stream ``x`` float32 (t, d_model), in place, for tokens
        at positions ``[position, position + t)``; their K/V are appended but not committed
        (``kv.commit(t)`` after every die of the pass succeeded, ``kv.rollback()`` otherwise). On an
        error the appended K/V are rolled back and the exception propagates. Events go to the
        layers' own regions of ``events`` (an :class:`Events` of the whole model) and their experts'
        regions; a mixture-of-experts model's routes through this chip's layers, int32 (t, this chip's
        layers, k), are appended to ``routes`` (the whole model's on a whole chip)."""
        if (not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2
                or x.shape[1] != self.spec.d_model or not x.flags.c_contiguous or not x.flags.writeable):
            raise ValueError(f"run_layers: x must be a writeable C-contiguous float32 (t, {self.spec.d_model}) array, "
                             f"got {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}")
        t, start = len(x), self.kv.length
        if t > self.kv.capacity_tokens - start:
            raise ValueError(f"{t} tokens do not fit the KV cache: {start} of {self.kv.capacity_tokens} token "
                             f"slots are used")
        first, n, E, L = self._first, len(self._layers), self.spec.n_experts, self.spec.n_layers
        end = first + n
        sel = np.empty((t, L, self.spec.n_experts_used), np.int32) if self.spec.is_moe else None
        try:
            if self._decoder is not None:
                # the compiled pass counts layer j of this chip into row j of what it is given, and its
                # experts after its own n + 2 rows: a die of a mixture-of-experts model counts into events of
                # its own layout, moved into the model's regions below; a dense die gets the rows from its
                # first layer on
                target = events
                if sel is not None and n != L:
                    target = Events(n, n_experts=E)
                elif first:
                    target = _EventRows(events.counts[first:])
                self._run_layers(x, start, self.n_threads, target)
                if sel is not None:
                    sel[:, first:end] = self._decoder.last_routes
                if target is not events and sel is not None:
                    events.counts[first:end] += target.counts[:n]
                    if n:
                        events.counts[events.expert_index(first, 0):events.expert_index(end - 1, E - 1) + 1] += \
                            target.counts[n + 2:]
            else:
                self._layers_interpreted(x, start, events, sel)
        except BaseException:
            self.kv.rollback()  # no layer keeps K/V of a pass that did not finish
            raise
        events.counts[first:first + len(self._layers)] += t * self._layer_const
        if self._sel_counts is not None:
            events.counts[first:first + len(self._layers)] += t * self._sel_counts
        if sel is not None and n:  # the fired experts' own vector work (docs/events.md), in their regions
            fired = np.stack([np.bincount(sel[:, i].ravel(), minlength=E) for i in range(first, end)])
            fired *= self._held_experts   # an expert die counts its own passes
            events.counts[events.expert_index(first, 0):events.expert_index(end - 1, E - 1) + 1] += \
                fired.reshape(-1, 1) * self._expert_const
        if sel is not None and routes is not None:
            routes.append(np.ascontiguousarray(sel[:, first:end]))

    @exclusive
    def head(self, x: np.ndarray, events: Events) -> np.ndarray:
        """The output head on ``x`` float32 (t, d_model): final norm and output product, float32
        logits (t, vocab), counted into ``events``' head region."""
        if self._output is None:
            raise ValueError(f"{self.die.describe()} has no output head")
        events.counts[events.head] += len(x) * self._head_const
        h = self._k.rmsnorm(np.ascontiguousarray(x), self._out_norm, self.spec.norm_eps)
        logits = self._k.linear(h, self._g_d, self._output, n_threads=self.n_threads, events=events, region="head")
        if self.spec.final_softcap:
            self._k.softcap(logits, self.spec.final_softcap)
        return logits

    def _layers_interpreted(self, x: np.ndarray, start: int, ev: Events, sel: np.ndarray | None = None) -> None:
        """Every layer on the residual stream x float32 (t, d_model), in place, one kernel call at a time;
        a mixture-of-experts layer writes its routes into ``sel`` (t, n_layers, k)."""
        s = self.spec
        t = len(x)
        nt = self.n_threads
        tables = {False: (self._cos[start:start + t], self._sin[start:start + t])}
        if self._cos_local is not None:
            tables[True] = (self._cos_local[start:start + t], self._sin_local[start:start + t])
        g_d, g_q, g_f = self._g_d, self._g_q, self._g_f
        H, Hkv, hd = s.n_heads, s.n_kv_heads, s.head_dim
        qd, kvd, f = s.q_dim, s.kv_dim, s.d_ff
        k_ = self._k
        quantize, matmul, linear, rmsnorm = k_.quantize, k_.matmul, k_.linear, k_.rmsnorm
        rope, add, attend, kv_append = k_.rope, k_.add, k_.attention, k_.kv_append
        kv, eps, style, first = self.kv, s.norm_eps, s.rope_style, self._first
        qk_rows = (t, t) if s.qk_norm == "full" else (t * H, t * Hkv)
        sel_ad = self._sel_slots
        none = [()] * 7

        def side(slot, q8, sc, xin, y, col=0):  # the adapters of one matrix, in order (docs/lora.md)
            for ca in slot:
                adapter_apply(ca, q8, sc, xin, y, col)

        def linear_side(xin, group, w, slot, region):  # quantize once for the ROM product and its side path
            if not slot:
                return linear(xin, group, w, n_threads=nt, events=ev, region=region)
            qx, sx = quantize(xin, group)
            y = matmul(qx, sx, w, n_threads=nt, events=ev, region=region)
            side(slot, qx, sx, xin, y)
            return y

        for j, L in enumerate(self._layers):
            i = first + j  # the model's layer (event region); j indexes this chip's KV cache
            ex = L.extras
            aq, ak, av, ao, ag, au, ad = none if sel_ad is None else sel_ad[j]
            h = rmsnorm(x, L.attn_norm, eps)
            q8, sc = quantize(h, g_d)
            if L.wqkv is not None:
                qkv = matmul(q8, sc, L.wqkv, n_threads=nt, events=ev, region=i)
                side(aq, q8, sc, h, qkv, 0)
                side(ak, q8, sc, h, qkv, qd)
                side(av, q8, sc, h, qkv, qd + kvd)
                q = np.ascontiguousarray(qkv[:, :qd]).reshape(t, H, hd)
                k = np.ascontiguousarray(qkv[:, qd:qd + kvd]).reshape(t, Hkv, hd)
                v = np.ascontiguousarray(qkv[:, qd + kvd:]).reshape(t, Hkv, hd)
            else:
                q = matmul(q8, sc, L.wq, n_threads=nt, events=ev, region=i).reshape(t, H, hd)
                k = matmul(q8, sc, L.wk, n_threads=nt, events=ev, region=i).reshape(t, Hkv, hd)
                v = matmul(q8, sc, L.wv, n_threads=nt, events=ev, region=i).reshape(t, Hkv, hd)
                side(aq, q8, sc, h, q.reshape(t, qd))
                side(ak, q8, sc, h, k.reshape(t, kvd))
                side(av, q8, sc, h, v.reshape(t, kvd))
            if "bq" in ex:
                k_.add_rows(q.reshape(t, qd), ex["bq"])
                k_.add_rows(k.reshape(t, kvd), ex["bk"])
                k_.add_rows(v.reshape(t, kvd), ex["bv"])
            if "q_norm" in ex:
                qn, kn = q.reshape(qk_rows[0], -1), k.reshape(qk_rows[1], -1)
                rmsnorm(qn, ex["q_norm"], eps, out=qn)
                rmsnorm(kn, ex["k_norm"], eps, out=kn)
            cos, sin = tables[L.local_rope]
            rope(q, cos, sin, out=q, style=style)
            rope(k, cos, sin, out=k, style=style)
            kv_append(j, k, v, events=ev, region=i)
            a = attend(q, kv, j, start, events=ev, region=i, scale=s.attn_scale, softcap=s.attn_softcap,
                       window=L.window)
            o = linear_side(a, g_q, L.wo, ao, i)
            if "attn_post_norm" in ex:
                rmsnorm(o, ex["attn_post_norm"], eps, out=o)
            add(x, o)
            h = rmsnorm(x, L.ffn_norm, eps)
            q8, sc = quantize(h, g_d)
            if L.moe is not None:
                o = self._moe_interpreted(i, L.moe, h, q8, sc, ev, sel)
            else:
                o = self._ffn(L.wgate_up, L.wg, L.wu, L.wd, q8, sc, f, g_f, ev, i, (ag, au, ad), h)
            if "ffn_post_norm" in ex:
                rmsnorm(o, ex["ffn_post_norm"], eps, out=o)
            add(x, o)

    def _ffn(self, w_gate_up, w_gate, w_up, w_down, q8, sc, f: int, group: int, ev: Events, region,
             adapters=((), (), ()), x=None):
        """Gated FFN of the quantized input (q8, sc): :func:`gated_ffn` with this chip's kernels."""
        return gated_ffn(self._k, self.n_threads, self.spec.ffn_act, w_gate_up, w_gate, w_up, w_down, q8, sc, f,
                         group, ev, region, adapters, x)

    def _moe_interpreted(self, i: int, M: _MoE, h, q8, sc, ev: Events, sel: np.ndarray) -> np.ndarray:
        """Mixture-of-experts FFN of layer i on its input ``h`` float32 (t, d) quantized as (q8, sc): the
        router's product, routing (``moe_route``), each fired expert on the rows routed to it (in its own
        region, experts in ascending order; an expert another die holds gets its rows of ``h`` through
        :meth:`_run_remote`), their outputs weighted and summed in routing order, the shared expert added
        (gated); float32 (t, d). Routes go to ``sel[:, i]``."""
        s, k_, nt = self.spec, self._k, self.n_threads
        t, k, d = len(q8), s.n_experts_used, s.d_model
        logits = k_.matmul(q8, sc, M.router, n_threads=nt, events=ev, region=i)
        experts, weights = k_.moe_route(logits, k, s.expert_weights_norm, s.expert_weights_scale)
        sel[:, i] = experts
        ys = np.empty((k, t, d), np.float32)
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)
            if M.experts[e] is None:
                ys[slot, rows] = self._run_remote(i, int(e), np.ascontiguousarray(h[rows]))
                continue
            gate_up, gate, up, down = M.experts[e]
            ys[slot, rows] = self._ffn(gate_up, gate, up, down, np.ascontiguousarray(q8[rows]),
                                       np.ascontiguousarray(sc[rows]), s.expert_ff, self._g_fe, ev,
                                       ("expert", i, int(e)))
        out = np.zeros((t, d), np.float32)
        for j in range(k):
            k_.axpy_rows(out, ys[j], np.ascontiguousarray(weights[:, j]))
        if M.shared is not None:
            o = self._ffn(*M.shared, q8, sc, s.d_ff_shared, self._g_fs, ev, i)
            if M.shared_gate is not None:
                gate = k_.matmul(q8, sc, M.shared_gate, n_threads=nt, events=ev, region=i)
                k_.axpy_rows(out, o, k_.sigmoid(np.ascontiguousarray(gate[:, 0])))
            else:
                k_.add(out, o)
        return out

    # ------------------------------------------------------------------ generation
    @exclusive
    def generate(self, prompt_ids, max_new_tokens: int, sampler=None, stop_ids=(), on_token=None, adapter=None):
        """Prefill ``prompt_ids`` then decode up to ``max_new_tokens``; returns a :class:`Generation`.

        adapter: the LoRA adapter(s) of this request (see :meth:`prefill`); switching between requests
        repoints the side paths at other resident adapters, the ROM is not reloaded."""
        self._check_whole()
        names = self._names(adapter)
        gen = run_generation(self, prompt_ids, max_new_tokens, sampler, stop_ids, on_token, adapter=names)
        gen.adapters, gen.adapter_sram_bytes = names, self.adapter_sram_bytes
        return gen


def gated_ffn(k_, nt: int, act: str, w_gate_up, w_gate, w_up, w_down, q8, sc, f: int, group: int, ev: Events,
              region, adapters=((), (), ()), x=None):
    """Gated FFN of the quantized input (q8, sc): ``W_d (act(W_g x) * (W_u x))``, float32 (t, d), with the
    kernels ``k_`` (``matmul``, ``linear``, ``quantize``, ``silu_mul``, ``gelu_mul``) on ``nt`` threads;
    ``act``: ``"silu"`` or ``"gelu"``; ``adapters``: the LoRA slots of gate, up and down, ``x`` the float
    input they need (fp16 form). The one sequence of kernels a chip and an expert die run."""
    ag, au, ad = adapters
    if w_gate_up is not None:
        gu = k_.matmul(q8, sc, w_gate_up, n_threads=nt, events=ev, region=region)
        for ca in ag:
            adapter_apply(ca, q8, sc, x, gu, 0)
        for ca in au:
            adapter_apply(ca, q8, sc, x, gu, f)
        g = np.ascontiguousarray(gu[:, :f])
        u = np.ascontiguousarray(gu[:, f:])
    else:
        g = k_.matmul(q8, sc, w_gate, n_threads=nt, events=ev, region=region)
        u = k_.matmul(q8, sc, w_up, n_threads=nt, events=ev, region=region)
        for ca in ag:
            adapter_apply(ca, q8, sc, x, g, 0)
        for ca in au:
            adapter_apply(ca, q8, sc, x, u, 0)
    (k_.gelu_mul if act == "gelu" else k_.silu_mul)(g, u, out=g)
    if not ad:
        return k_.linear(g, group, w_down, n_threads=nt, events=ev, region=region)
    qg, sg = k_.quantize(g, group)  # quantized once for the ROM product and its side path
    y = k_.matmul(qg, sg, w_down, n_threads=nt, events=ev, region=region)
    for ca in ad:
        adapter_apply(ca, qg, sg, g, y, 0)
    return y


def prefill_chunks(tokens: np.ndarray, all_logits: bool):
    """The passes of a prefill (:meth:`Chip.prefill`, :meth:`hcemu.chip.system.System.prefill`):
    ``(chunk, head_rows)`` for chunks of up to :data:`MAX_CHUNK` tokens; the head runs on every row
    with ``all_logits``, else only on the last token of the last chunk."""
    for c in range(0, len(tokens), MAX_CHUNK):
        last = c + MAX_CHUNK >= len(tokens)
        yield tokens[c:c + MAX_CHUNK], slice(None) if all_logits else (slice(-1, None) if last else slice(0, 0))


def run_generation(runner, prompt_ids, max_new_tokens: int, sampler=None, stop_ids=(), on_token=None,
                   adapter=None):
    """The generation loop of :meth:`Chip.generate` and :meth:`hcemu.chip.system.System.generate`.

    runner: has ``_check_tokens(ids)``, ``capacity_tokens``, ``position``, ``prefill(ids)`` and
    ``decode(id)`` returning results with ``logits``, ``events``, ``bank_rows`` (and, for a system,
    ``link_events``), and ``spec``. adapter: passed to every ``prefill``/``decode`` when not None
    (a chip's LoRA selection).
    """
    from hcemu.sampling import Sampler

    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    sampler = sampler or Sampler()
    rng = sampler.make_rng()
    prompt = runner._check_tokens(prompt_ids)
    free = runner.capacity_tokens - runner.position
    if len(prompt) + max_new_tokens > free:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceed the KV cache: "
            f"{free} token slots fit")
    t0 = time.perf_counter()
    step_kw = {} if adapter is None else {"adapter": adapter}
    res = runner.prefill(prompt, **step_kw)
    t_prefill = time.perf_counter() - t0
    prefill_events, decode_events = res.events, Events.for_spec(runner.spec)
    prefill_links = getattr(res, "link_events", None)
    decode_links = None if prefill_links is None else LinkEvents(prefill_links.n_hops)
    prefill_elinks = getattr(res, "expert_link_events", None)
    decode_elinks = None if prefill_elinks is None else LinkEvents(prefill_elinks.n_hops)
    bank_rows = res.bank_rows
    out: list[int] = []
    t_decode = 0.0
    logits = res.logits[-1]
    for _ in range(max_new_tokens):
        tok = sampler.pick(logits, rng)
        out.append(tok)
        if on_token:
            on_token(tok)
        if tok in stop_ids or len(out) == max_new_tokens:
            break
        t0 = time.perf_counter()
        step = runner.decode(tok, **step_kw)
        t_decode += time.perf_counter() - t0
        decode_events += step.events
        if decode_links is not None:
            decode_links += step.link_events
        if decode_elinks is not None:
            decode_elinks += step.expert_link_events
        bank_rows = bank_rows + step.bank_rows
        logits = step.logits[-1]
    n_decode_steps = max(len(out) - 1, 0)
    return Generation(
        prompt_ids=[int(i) for i in prompt], ids=out,
        prefill_seconds=t_prefill, decode_seconds=t_decode, decode_steps=n_decode_steps,
        prefill_events=prefill_events, decode_events=decode_events, bank_rows=bank_rows,
        prefill_link_events=prefill_links, decode_link_events=decode_links,
        prefill_expert_link_events=prefill_elinks, decode_expert_link_events=decode_elinks)


@dataclass
class Generation:
    """A generation's tokens, measured host times and counted events (prefill and decode apart).

    bank_rows: ROM rows read per bank (a System's: its dies' banks one after another)."""

    prompt_ids: list
    ids: list
    prefill_seconds: float
    decode_seconds: float
    decode_steps: int
    prefill_events: Events
    decode_events: Events
    bank_rows: np.ndarray
    prefill_link_events: LinkEvents | None = None   # a System's chip-to-chip traffic (None on one chip)
    decode_link_events: LinkEvents | None = None
    prefill_expert_link_events: LinkEvents | None = None   # a System's dispatch/combine traffic (expert dies)
    decode_expert_link_events: LinkEvents | None = None
    adapters: tuple = ()            # names of the LoRA adapters the request applied
    adapter_sram_bytes: int = 0     # SRAM held by all resident adapters during the request

    @property
    def host_prefill_tok_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def host_decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")
