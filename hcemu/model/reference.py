"""FloatLlama: the float32 numpy forward pass of every supported architecture, the accuracy baseline
and test oracle.

It runs on the source's weights dequantized to float32 (``ModelSource.float32``), with the vector-unit
math of :mod:`hcemu.model.ops` (RMSNorm, RoPE, SiLU/GELU, soft-capping, softmax), grouped-query
attention, and the block kinds of the spec (:meth:`hcemu.model.spec.ModelSpec.block`): Q/K/V biases,
Q/K RMSNorms, post-norms, sliding-window layers, soft-capped scores and logits, embedding scaling,
tied embeddings, and mixture-of-experts FFNs (router, top-k, optional shared expert). Matrix products
are numpy float32 ``matmul`` (BLAS), so results are close to, not bit-identical with, other float32
implementations (llama.cpp among them: ``tests/test_peer_llamacpp.py``).

Mixture of experts, per token (docs/architectures.md): router logits ``r = W_r h``; probabilities
``softmax(r)``; the ``n_experts_used`` largest, in descending order (ties: the lower expert first);
their probabilities as weights, divided by their sum when ``expert_weights_norm``, times
``expert_weights_scale``; the FFN output is ``w_0 y_0 + w_1 y_1 + ...`` summed in that order, plus the
shared expert's output (times ``sigmoid(w_s . h)`` with a shared gate).

LoRA adapters (:class:`hcemu.model.lora.LoraAdapter`) run on a side path, as llama.cpp applies them:
``y = h @ W.T + s * ((h @ A.T) @ B.T)`` per adapter, in float32, in the order given (never merged into W).

State: a float32 KV cache of ``(n_layers, capacity, n_kv_heads, head_dim)`` for K and for V, grown
as needed. :meth:`prefill` resets it; :meth:`decode` appends one token. After every forward pass
``routes`` holds the experts each token was routed to, int64 ``(t, n_layers, n_experts_used)``, and
``router_logits`` the router's float32 ``(t, n_layers, n_experts)`` (MoE models; else None).
"""
from __future__ import annotations

import numpy as np

from hcemu.model import ops
from hcemu.model.source import ModelSource
from hcemu.sampling import Sampler

F32 = np.float32


def route(logits: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` experts with the largest router logits per row, descending, ties to the lower index:
    int64 ``(rows, k)``. logits: ``(rows, n_experts)``."""
    logits = np.asarray(logits)
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k].astype(np.int64)


class FloatLlama:
    """The forward pass over ``source`` in float32 (every architecture of :mod:`hcemu.model.spec`).

    All weights are dequantized on construction (float32: 4 bytes per parameter, so 0.55 GB for
    SmolLM2-135M); ``layers`` limits how many transformer blocks run (for quick tests, default all).
    adapters: LoRA adapters applied on every forward (see :meth:`set_adapters`).
    """

    def __init__(self, source: ModelSource, dtype=np.float32, layers: int | None = None, adapters=()):
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"FloatLlama computes in float32 only, got dtype {np.dtype(dtype)}")
        spec = source.spec
        self.source = source
        self.spec = spec
        self.n_layers = spec.n_layers if layers is None else int(layers)
        if not 0 <= self.n_layers <= spec.n_layers:
            raise ValueError(f"layers must be in [0, {spec.n_layers}], got {layers}")

        def load(name, shape):
            w = np.ascontiguousarray(source.float32(name), dtype=F32)
            if w.shape != tuple(shape):
                raise ValueError(f"tensor {name} has shape {w.shape}, expected {tuple(shape)} for {spec.name}")
            return w

        self.embedding = load("token_embd.weight", spec.matrix_shape("embedding"))
        self.output = (self.embedding if spec.tied_embeddings
                       else load("output.weight", spec.matrix_shape("output")))
        self.output_norm = load("output_norm.weight", (spec.d_model,))
        self.layers = []
        for i in range(self.n_layers):
            # transposed copies: activations (t, n_in) @ (n_in, n_out)
            L = {kind: np.ascontiguousarray(load(name, shape).T) for name, kind, shape in spec.layer_matrices(i)}
            for name, kind, n in spec.layer_vectors(i):
                L[kind] = load(name, (n,))
            if spec.is_moe:
                L["experts"] = [{kind: np.ascontiguousarray(load(name, shape).T)
                                 for name, kind, shape in spec.expert_matrices(i, e)}
                                for e in range(spec.n_experts)]
            self.layers.append(L)
        self._out_t = np.ascontiguousarray(self.output.T)
        self.routes = None
        self.router_logits = None
        self.set_adapters(adapters)
        self.reset()

    def set_adapters(self, adapters=()) -> None:
        """Apply these LoRA adapters (a LoraAdapter or a sequence of them; empty: none) from now on.
        Each adapted product becomes ``h @ W.T + sum over adapters of s * ((h @ A.T) @ B.T)``."""
        from hcemu.model.lora import LoraAdapter

        if isinstance(adapters, LoraAdapter):
            adapters = (adapters,)
        self.adapters = tuple(adapters)
        side = {}
        for ad in self.adapters:
            if not isinstance(ad, LoraAdapter):
                raise TypeError(f"adapters must be LoraAdapter objects, got {type(ad).__name__}")
            for (li, kind), p in ad.pairs.items():
                if self.spec.is_moe and kind.startswith("ffn_"):
                    raise ValueError(f"adapter {ad.name!r} adapts {kind} of a mixture-of-experts model; "
                                     f"adapters apply to its attention matrices only")
                n, k = self.spec.matrix_shape(kind)
                if p.a.shape[1] != k or p.b.shape[0] != n:
                    raise ValueError(f"adapter {ad.name!r} does not fit {self.spec.name}'s {kind} ({n}x{k})")
                if li < self.n_layers:
                    side.setdefault((li, kind), []).append(
                        (np.ascontiguousarray(p.a.T), np.ascontiguousarray(p.b.T), F32(p.scale)))
        self._side = side

    def input_rms(self, tokens, chunk: int = 256) -> dict:
        """Root mean square of every layer matrix's input channels over ``tokens`` (run from an empty
        cache): ``{(layer, kind): float32 (n_in,)}`` — the activation statistics of calibration."""
        self._sumsq = {}
        try:
            self.logits(tokens, chunk)
            n = len(np.asarray(tokens))
            return {key: np.sqrt(v / n).astype(F32) for key, v in self._sumsq.items()}
        finally:
            self._sumsq = None

    _sumsq = None

    def _mm(self, li: int, kind: str, h: np.ndarray) -> np.ndarray:
        """``h @ W.T`` of layer ``li``'s matrix plus its adapters' side paths."""
        if self._sumsq is not None:
            acc = self._sumsq.get((li, kind))
            sq = (h.astype(np.float64) ** 2).sum(axis=0)
            self._sumsq[(li, kind)] = sq if acc is None else acc + sq
        y = h @ self.layers[li][kind]
        for at, bt, s in self._side.get((li, kind), ()):
            y = y + s * ((h @ at) @ bt)
        return y

    # ---- cache
    def reset(self) -> None:
        """Empty the KV cache."""
        self.pos = 0
        self._alloc(0)

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` cached tokens (the next token goes to position ``n``)."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"truncate({n}): must be within 0..{self.pos} cached tokens")
        self.pos = int(n)

    def _alloc(self, capacity: int) -> None:
        s = self.spec
        shape = (self.n_layers, capacity, s.n_kv_heads, s.head_dim)
        self._k = np.zeros(shape, F32)
        self._v = np.zeros(shape, F32)

    def _ensure(self, n: int) -> None:
        if n > self.spec.max_context:
            raise ValueError(f"sequence of {n} tokens exceeds the model's context of {self.spec.max_context}")
        cap = self._k.shape[1]
        if n <= cap:
            return
        new_cap = min(max(n, 2 * cap, 256), self.spec.max_context)
        k, v = self._k, self._v
        self._alloc(new_cap)
        self._k[:, :cap] = k
        self._v[:, :cap] = v

    # ---- forward
    def _check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens must be a 1-D integer sequence, got shape {t.shape} dtype {t.dtype}")
        if t.size and (t.min() < 0 or t.max() >= self.spec.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.spec.vocab_size}), got min {t.min()} max {t.max()}")
        return t.astype(np.int64)

    def forward(self, tokens, all_logits: bool = True) -> np.ndarray:
        """Run ``tokens`` at positions ``pos .. pos+t-1``, appending them to the cache.

        Returns float32 logits ``(t, vocab)`` (``all_logits``) or those of the last token ``(1, vocab)``.
        """
        s = self.spec
        toks = self._check_tokens(tokens)
        t = toks.size
        if t == 0:
            raise ValueError("forward needs at least one token")
        p0 = self.pos
        self._ensure(p0 + t)
        positions = np.arange(p0, p0 + t)
        tables = {"global": ops.rope_tables(s, positions)}
        if any(s.block(i).rope == "local" for i in range(self.n_layers)):
            tables["local"] = ops.rope_tables(s, positions, local=True)
        nh, nkv, hd, g = s.n_heads, s.n_kv_heads, s.head_dim, s.gqa_group
        T = p0 + t
        # causal mask: query i (position p0+i) sees keys 0 .. p0+i (the last `window` of them in a
        # sliding-window layer)
        dist = (p0 + np.arange(t))[:, None] - np.arange(T)[None, :]
        masks = {}
        scale = F32(s.score_scale)
        eps = s.norm_eps
        x = self.embedding[toks]
        if s.embed_scale != 1.0:
            x = x * F32(s.embed_scale)
        routes, router_logits = [], []
        for li, L in enumerate(self.layers):
            blk = s.block(li)
            if blk.window not in masks:
                ok = (dist >= 0) & ((dist < blk.window) if blk.window else True)
                masks[blk.window] = np.where(ok, F32(0), F32(-np.inf))
            h = ops.rmsnorm(x, L["attn_norm"], eps)
            q, k, v = self._mm(li, "attn_q", h), self._mm(li, "attn_k", h), self._mm(li, "attn_v", h)
            if s.qkv_bias:
                q, k, v = q + L["attn_q_bias"], k + L["attn_k_bias"], v + L["attn_v_bias"]
            if s.qk_norm == "full":
                q, k = ops.rmsnorm(q, L["attn_q_norm"], eps), ops.rmsnorm(k, L["attn_k_norm"], eps)
            q, k, v = q.reshape(t, nh, hd), k.reshape(t, nkv, hd), v.reshape(t, nkv, hd)
            if s.qk_norm == "head":
                q, k = ops.rmsnorm(q, L["attn_q_norm"], eps), ops.rmsnorm(k, L["attn_k_norm"], eps)
            cos, sin = tables[blk.rope]
            q = ops.apply_rope(q, cos, sin, s.rope_style)
            k = ops.apply_rope(k, cos, sin, s.rope_style)
            self._k[li, p0:T] = k
            self._v[li, p0:T] = v
            K = self._k[li, :T].transpose(1, 2, 0)          # (nkv, hd, T)
            V = self._v[li, :T].transpose(1, 0, 2)          # (nkv, T, hd)
            # queries grouped by kv head: (nkv, g, t, hd); head j uses kv head j // g
            qg = q.reshape(t, nkv, g, hd).transpose(1, 2, 0, 3)
            scores = (qg @ K[:, None]) * scale                # (nkv, g, t, T)
            if s.attn_softcap:
                scores = ops.softcap(scores, s.attn_softcap)
            scores += masks[blk.window]
            probs = ops.softmax(scores, axis=-1)
            att = probs @ V[:, None]                           # (nkv, g, t, hd)
            att = att.transpose(2, 0, 1, 3).reshape(t, nh * hd)
            o = self._mm(li, "attn_output", att)
            if s.post_norms:
                o = ops.rmsnorm(o, L["attn_post_norm"], eps)
            x = x + o
            h = ops.rmsnorm(x, L["ffn_norm"], eps)
            if blk.moe:
                ff, sel, logits = self._moe(L, h)
                routes.append(sel)
                router_logits.append(logits)
            else:
                ff = self._ffn(h, L["ffn_gate"], L["ffn_up"], L["ffn_down"], li)
            if s.post_norms:
                ff = ops.rmsnorm(ff, L["ffn_post_norm"], eps)
            x = x + ff
        self.pos = T
        if routes:
            self.routes = np.stack(routes, axis=1)
            self.router_logits = np.stack(router_logits, axis=1)
        if not all_logits:
            x = x[-1:]
        logits = ops.rmsnorm(x, self.output_norm, eps) @ self._out_t
        if s.final_softcap:
            logits = ops.softcap(logits, s.final_softcap)
        return logits

    def _ffn(self, h, w_gate, w_up, w_down, li: int | None = None) -> np.ndarray:
        """Gated FFN ``act(h W_g) * (h W_u) W_d`` with the spec's activation (SiLU or GELU); ``li``: the
        dense layer whose products go through :meth:`_mm` (adapters, input statistics), None for experts."""
        g = h @ w_gate if li is None else self._mm(li, "ffn_gate", h)
        u = h @ w_up if li is None else self._mm(li, "ffn_up", h)
        a = (ops.silu(g) if self.spec.ffn_act == "silu" else ops.gelu(g)) * u
        return a @ w_down if li is None else self._mm(li, "ffn_down", a)

    def _moe(self, L, h):
        """Mixture-of-experts FFN of h (t, d): ``(output (t, d), routes (t, k), router logits (t, E))``."""
        s = self.spec
        logits = h @ L["ffn_gate_inp"]                               # (t, E)
        probs = ops.softmax(logits, axis=-1)
        sel = route(logits, s.n_experts_used)                        # (t, k)
        w = np.take_along_axis(probs, sel, axis=-1)
        if s.expert_weights_norm:
            w = w / w.sum(axis=-1, keepdims=True, dtype=np.float64).astype(F32)
        if s.expert_weights_scale != 1.0:
            w = w * F32(s.expert_weights_scale)
        t = h.shape[0]
        ys = np.zeros((s.n_experts_used, t, s.d_model), F32)
        for e in np.unique(sel):
            rows, slot = np.nonzero(sel == e)
            E = L["experts"][e]
            ys[slot, rows] = self._ffn(h[rows], E["ffn_gate_exps"], E["ffn_up_exps"], E["ffn_down_exps"])
        out = ys[0] * w[:, 0:1]
        for i in range(1, s.n_experts_used):
            out = out + ys[i] * w[:, i:i + 1]
        if s.d_ff_shared:
            sh = self._ffn(h, L["ffn_gate_shexp"], L["ffn_up_shexp"], L["ffn_down_shexp"])
            if s.shared_expert_gate:
                sh = sh * ops.sigmoid(h @ L["ffn_gate_inp_shexp"])
            out = out + sh
        return out, sel, logits

    def prefill(self, tokens) -> np.ndarray:
        """Reset the cache, run the prompt; return the last token's logits ``(vocab,)`` float32."""
        self.reset()
        return self.forward(tokens, all_logits=False)[0]

    def decode(self, token: int) -> np.ndarray:
        """Append one token; return its logits ``(vocab,)`` float32."""
        return self.forward([int(token)], all_logits=False)[0]

    def logits(self, tokens, chunk: int = 256) -> np.ndarray:
        """Causal logits ``(t, vocab)`` float32 for a whole sequence, run in chunks of ``chunk`` tokens
        from an empty cache (the cache holds the sequence afterwards)."""
        toks = self._check_tokens(tokens)
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.reset()
        self._ensure(toks.size)
        out = np.empty((toks.size, self.spec.vocab_size), F32)
        for a in range(0, toks.size, chunk):
            out[a:a + chunk] = self.forward(toks[a:a + chunk])
        return out

    def perplexity(self, tokens, chunk: int = 256) -> float:
        """``exp`` of the mean negative log-likelihood of ``tokens[1:]`` (each given all before it)."""
        toks = self._check_tokens(tokens)
        if toks.size < 2:
            raise ValueError("perplexity needs at least two tokens")
        return perplexity_from_logits(self.logits(toks, chunk), toks)

    def generate(self, prompt_ids, max_new_tokens: int, greedy: bool = True, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0, stop_ids=()) -> list[int]:
        """Continue ``prompt_ids`` by up to ``max_new_tokens`` tokens; stop after emitting one of
        ``stop_ids``. Greedy (argmax) unless ``greedy=False``: then sample from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` best (0 = all), with
        ``numpy.random.default_rng(seed)``. Returns the new ids only."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        rng = np.random.default_rng(seed)
        stop = {int(i) for i in stop_ids}
        out: list[int] = []
        if max_new_tokens == 0:
            return out
        logits = self.prefill(prompt_ids)
        while True:
            nxt = sample(logits, greedy, temperature, top_k, rng)
            out.append(nxt)
            if nxt in stop or len(out) >= max_new_tokens:
                return out
            logits = self.decode(nxt)


def sample(logits, greedy: bool = True, temperature: float = 1.0, top_k: int = 0, rng=None) -> int:
    """One token from ``(vocab,)`` logits: argmax, or a temperature / top-k sample
    (:class:`hcemu.sampling.Sampler`, float64 maths)."""
    sampler = Sampler(0.0 if greedy else temperature, top_k)
    return sampler.pick(np.asarray(logits), rng if rng is not None else np.random.default_rng())


def log_softmax(logits) -> np.ndarray:
    """``log(softmax(logits))`` along the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity_from_logits(logits, tokens) -> float:
    """Perplexity of ``tokens[1:]`` under ``logits[:-1]`` (row i predicts token i+1), float64 maths."""
    lg = np.asarray(logits, dtype=np.float64)
    toks = np.asarray(tokens)
    if lg.ndim != 2 or lg.shape[0] != toks.size:
        raise ValueError(f"logits {lg.shape} do not match {toks.size} tokens")
    lp = log_softmax(lg[:-1])
    nll = -lp[np.arange(lp.shape[0]), toks[1:]]
    return float(np.exp(nll.mean()))
