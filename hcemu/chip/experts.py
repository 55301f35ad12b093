"""An expert die of a system with expert parallelism: one block of its stage's layers' experts, nothing else.

A system that spreads every mixture-of-experts layer's experts over ``ep`` dies per pipeline stage
(:mod:`hcemu.rom.die`, ``docs/system.md`` "Expert parallelism") has, beside each stage's home die (a
:class:`~hcemu.chip.Chip`: attention, router, shared expert, KV SRAM and expert block 0), ``ep - 1``
expert dies. An :class:`ExpertDie` holds block ``b`` of its layers' experts in ROM; the home die sends
it the rows of a layer's normalized FFN input routed to one of them (a dispatch message per token),
it quantizes them with the activation quantizer, runs the expert's gated FFN with the same kernels in
the same order as the one chip (:func:`hcemu.chip.chip.gated_ffn`), and returns the expert's output
(a combine message per token), which the home die weights and sums in routing order.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from hcemu.chip.chip import gated_ffn
from hcemu.events import Events, expert_vector_counts
from hcemu.kernels import cim, vector
from hcemu.layout import stack_rows


class ExpertDie:
    """The expert die an image with :attr:`~hcemu.rom.die.DieAssignment.is_expert_die` describes.

    n_threads: host threads for the CIM kernels; fuse_products: run gate and up as one product over
    their stacked tiles (values and events identical either way, as on :class:`~hcemu.chip.Chip`).
    """

    def __init__(self, image, *, n_threads: int = 1, fuse_products: bool = True):
        die = image.die
        if not die.is_expert_die:
            raise ValueError(f"{image.path} holds {die.describe()}: not an expert die (run it as a Chip)")
        spec = image.spec
        self.image, self.spec, self.die, self.plan = image, spec, die, image.plan
        self.n_threads = int(n_threads)
        act = self.plan.activations
        self._g_d = act.group_for(spec.d_model)
        self._g_fe = act.group_for(spec.expert_ff)
        self._k = SimpleNamespace(matmul=cim.cim_matmul, linear=cim.cim_linear, quantize=cim.quantize_activations,
                                  silu_mul=vector.silu_mul, gelu_mul=vector.gelu_mul)
        self._const = expert_vector_counts(spec)
        self._experts = {}     # (layer, expert) -> (gate|up or None, gate, up, down)
        self._bank_rows = {}   # (layer, expert) -> (bank ids, rows) one token pass reads
        for i in die.layers:
            for e in range(spec.n_experts):
                if not die.holds_expert(i, e, spec.n_experts):
                    continue
                names = list(spec.expert_matrices(i, e))
                x = {kind: image.matrix(name) for name, kind, _shape in names}
                gate, up = x["ffn_gate_exps"], x["ffn_up_exps"]
                self._experts[i, e] = (stack_rows([gate, up]) if fuse_products else None, gate, up, x["ffn_down_exps"])
                self._bank_rows[i, e] = tuple(np.concatenate(a) for a in zip(*[image.tensor_banks(name)
                                                                               for name, _k, _s in names]))
        self.n_banks = int(image.address_map.n_banks)

    def holds(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self._experts

    def run_expert(self, layer: int, expert: int, h: np.ndarray, events: Events) -> np.ndarray:
        """Expert ``expert`` of ``layer`` on ``h`` float32 (n, d_model), the rows of the layer's normalized
        FFN input routed to it: float32 (n, d_model), its output before the routing weight. Its products
        and its per-pass vector work (:func:`hcemu.events.expert_vector_counts`) are counted into its
        region of ``events`` (an :class:`Events` of the whole model)."""
        w = self._experts.get((layer, expert))
        if w is None:
            raise ValueError(f"{self.die.describe()} does not hold expert {expert} of layer {layer}")
        d = self.spec.d_model
        if (not isinstance(h, np.ndarray) or h.dtype != np.float32 or h.ndim != 2 or h.shape[1] != d
                or not len(h)):
            raise ValueError(f"run_expert: h must be a float32 (n >= 1, {d}) array, got "
                             f"{getattr(h, 'dtype', type(h))} {getattr(h, 'shape', '')}")
        q8, sc = self._k.quantize(np.ascontiguousarray(h), self._g_d)
        y = gated_ffn(self._k, self.n_threads, self.spec.ffn_act, *w, q8, sc, self.spec.expert_ff, self._g_fe,
                      events, ("expert", layer, expert))
        events.counts[events.expert_index(layer, expert)] += len(h) * self._const
        return y

    def step_bank_rows(self, events: Events) -> np.ndarray:
        """ROM rows read per bank of this die's image for the expert passes ``events`` counts in its experts'
        regions, int64 (n_banks,)."""
        rows = np.zeros(self.n_banks, np.int64)
        fired = events.experts()[:, :, 0]
        for (i, e), (ids, per_pass) in self._bank_rows.items():
            if fired[i, e]:
                np.add.at(rows, ids, per_pass * int(fired[i, e]))
        return rows

    def __repr__(self) -> str:
        return f"ExpertDie({self.spec.name}, {self.die.describe()}, {len(self._experts)} experts)"
