"""The request-level simulator: a fleet of identical cards serving a :class:`~hcemu.serving.workload.Workload`.

One event loop in plain Python (a heap of the cards' next events, the arrivals in order): the
measurement in ``benchmarks/test_bench_serving.py`` and docs/serving.md shows why it is not a
discrete-event library. Arrivals go to the card with the fewest outstanding requests (join the shortest
queue, ties to the lowest index); each card queues what it cannot admit yet, first come first served.

**Hard-coded card** (:class:`ChipCard`). One user's token visits every layer region in turn; the
pipeline takes a new token pass every slowest-region pass. A decoding user holds ``decode_slowest_s /
decode_s_per_token`` of those injection slots and always gets them (decode first), so its TPOT is the
modeled per-user latency; the prompt of the oldest admitted request streams into the slots left over
(one prompt at a time), and its first token leaves ``fill_s`` after its last prompt token entered. A
request is admitted while its context's KV fits in the KV SRAM, its decode power fits under the power
limit and the pipeline's slots suffice for every admitted user (the limits of
:class:`~hcemu.perf.silicon.SiliconModel`, applied request by request).

**GPU** (:class:`GpuCard`). Continuous batching with chunked prefill, step by step: each step carries one
token of every decoding sequence and fills the rest of ``max_num_batched_tokens`` with prompt chunks
(oldest first); its time is :meth:`hcemu.perf.gpu.GpuModel.mixed_step_seconds`. A request is admitted
while fewer than ``max_num_seqs`` are resident and its whole context's KV fits in the KV tokens beside
the weights (reserved at admission: no preemption). Runs of decode-only steps between two events are
summed in closed form (each step is the max of two affine functions of the keys, which grow by the
batch size every step), so the loop does O(1) work per request, not per step.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from hcemu.model.spec import ModelSpec
from hcemu.perf.gpu import GpuModel
from hcemu.serving.fleet import ChipLimits, FleetSpec, chip_prices, gpu_model
from hcemu.serving.params import gpu_idle_power_w
from hcemu.serving.workload import Workload

INF = math.inf


@dataclass
class Outcome:
    """Per-request results (arrays over the workload's requests) and per-card totals of one simulation."""

    fleet: FleetSpec
    workload: Workload
    first_token_s: np.ndarray        # absolute time of the first output token (nan if rejected)
    finish_s: np.ndarray             # absolute time of the last output token (nan if rejected)
    rejected: np.ndarray             # bool: can never fit on a card (context or power beyond one card)
    card: np.ndarray                 # int: card index that served it (-1 if rejected)
    busy_s: np.ndarray               # per card: seconds with at least one admitted request
    dynamic_energy_j: float          # energy above static/idle power, all cards
    static_power_w: float            # per card: drawn all the time (chip leakage, GPU idle power)
    busy_power_w: float              # per card, GPU: board power while busy (0 for chips: dynamic is per event)
    events: int                      # events the loop processed (arrivals, card events)
    pipeline_busy_s: np.ndarray = field(default=None)  # per card, chips: injection-slot seconds used
    gpu_steps: int = 0               # GPU batching steps priced (decode runs summed in closed form)


# ----------------------------------------------------------------------------------------------------
# hard-coded card

class ChipCard:
    """One hard-coded card (see the module docstring). Times in seconds; ``t_next`` its next event."""

    __slots__ = ("idx", "lim", "P", "G", "inject", "fill", "lat", "share", "power", "kv", "res_first",
                 "res_finish", "waiting", "prefill", "active_rem", "t_last", "decoders", "share_dec",
                 "share_res", "power_res", "kv_res", "users", "t_next", "outstanding", "busy_s", "busy_since")

    def __init__(self, idx, lim: ChipLimits, req, outstanding, res_first, res_finish):
        self.idx, self.lim = idx, lim
        (self.P, self.G, self.inject, self.fill, self.lat, self.share, self.power, self.kv) = req
        self.res_first, self.res_finish, self.outstanding = res_first, res_finish, outstanding
        self.waiting, self.prefill, self.decoders = deque(), deque(), []
        self.active_rem = 0.0
        self.t_last = 0.0
        self.share_dec = self.share_res = self.power_res = self.kv_res = 0.0
        self.users = 0
        self.t_next = INF
        self.busy_s = 0.0
        self.busy_since = 0.0

    def fits_ever(self, i) -> bool:
        lim = self.lim
        return (self.kv[i] <= lim.kv_bytes and self.power[i] <= lim.dynamic_power_w
                and self.share[i] <= lim.pipeline_share)

    def _advance(self, t):
        if self.prefill:
            self.active_rem -= max(0.0, self.lim.pipeline_share - self.share_dec) * (t - self.t_last)
        self.t_last = t

    def _admit(self, t):
        lim, w = self.lim, self.waiting
        while w:
            i = w[0]
            if (self.kv_res + self.kv[i] > lim.kv_bytes or self.power_res + self.power[i] > lim.dynamic_power_w
                    or self.share_res + self.share[i] > lim.pipeline_share):
                return
            w.popleft()
            self.kv_res += self.kv[i]
            self.power_res += self.power[i]
            self.share_res += self.share[i]
            if self.users == 0:
                self.busy_since = t
            self.users += 1
            if not self.prefill:
                self.active_rem, self.t_last = self.inject[i], t
            self.prefill.append(i)

    def _plan(self):
        t_pre = INF
        if self.prefill:
            rate = self.lim.pipeline_share - self.share_dec
            if rate > 0:
                t_pre = self.t_last + max(self.active_rem, 0.0) / rate
        t_dec = self.decoders[0][0] if self.decoders else INF
        self.t_next = min(t_pre, t_dec)
        return t_pre, t_dec

    def arrive(self, i, t):
        self.outstanding[self.idx] += 1
        self.waiting.append(i)
        if len(self.waiting) == 1:
            self._advance(t)
            self._admit(t)
            self._plan()

    def on_event(self):
        t_pre, t_dec = self._plan()
        if t_pre <= t_dec:
            t = t_pre
            self._advance(t)
            i = self.prefill.popleft()
            first = t + self.fill[i]
            self.res_first[i] = first
            # decoding (or, with one output token, the last prompt token's trip to the head) until release
            heapq.heappush(self.decoders, (first + (self.G[i] - 1) * self.lat[i], i))
            self.share_dec += self.share[i]
            if self.prefill:
                self.active_rem, self.t_last = self.inject[self.prefill[0]], t
        else:
            t = t_dec
            self._advance(t)
            _, i = heapq.heappop(self.decoders)
            self.share_dec -= self.share[i]
            self._release(i, t)
        self._admit(t)
        self._plan()

    def _release(self, i, t):
        self.res_finish[i] = t
        self.kv_res -= self.kv[i]
        self.power_res -= self.power[i]
        self.share_res -= self.share[i]
        self.users -= 1
        if self.users == 0:
            self.busy_s += t - self.busy_since
            self.share_res = self.power_res = self.kv_res = self.share_dec = 0.0  # no drift from float sums
        self.outstanding[self.idx] -= 1


# ----------------------------------------------------------------------------------------------------
# GPU

class GpuCard:
    """One GPU running continuous batching (see the module docstring)."""

    __slots__ = ("idx", "P", "G", "co", "max_seqs", "budget", "kv_cap", "res_first", "res_finish",
                 "outstanding", "waiting", "prefill", "decoders", "n_d", "sum_keys", "steps", "kv_used",
                 "resident", "t_start", "t_next", "seg", "seg_steps", "chunks", "busy_s")

    def __init__(self, idx, model: GpuModel, spec, engine, kv_cap, P, G, outstanding, res_first, res_finish):
        self.idx, self.P, self.G = idx, P, G
        self.co = model.step_coefficients(spec)
        self.max_seqs, self.budget, self.kv_cap = engine.max_num_seqs, engine.max_num_batched_tokens, kv_cap
        self.res_first, self.res_finish, self.outstanding = res_first, res_finish, outstanding
        self.waiting, self.prefill, self.decoders = deque(), deque(), []
        self.n_d = 0
        self.sum_keys = 0
        self.steps = 0
        self.kv_used = 0
        self.resident = 0
        self.t_start = 0.0
        self.t_next = INF
        self.seg = None  # None idle, "step" one step with self.chunks, "bulk" self.seg_steps decode steps
        self.seg_steps = 0
        self.chunks = []
        self.busy_s = 0.0

    def fits_ever(self, i) -> bool:
        return self.P[i] + self.G[i] - 1 <= self.kv_cap

    def _admittable(self) -> bool:
        w = self.waiting
        return bool(w) and self.resident < self.max_seqs and self.kv_used + self.P[w[0]] + self.G[w[0]] - 1 <= self.kv_cap

    def _admit(self):
        while self._admittable():
            i = self.waiting.popleft()
            self.kv_used += self.P[i] + self.G[i] - 1
            self.resident += 1
            self.prefill.append([i, 0])

    def _decode_step(self, j):
        """Seconds of decode-only step ``j`` from now (keys grow by n_d per step)."""
        co, n, k = self.co, self.n_d, self.sum_keys + j * self.n_d
        return max(float(co.weights_s(n)) + n * co.mem_s_per_token + k * co.mem_s_per_kv_key,
                   n * co.comp_s_per_token + k * co.comp_s_per_attn_key) + co.launch_s

    def _bulk_seconds(self, n):
        """Seconds of the next ``n`` decode-only steps (closed form)."""
        if n <= 0:
            return 0.0
        co, d, K = self.co, self.n_d, self.sum_keys
        a1 = float(co.weights_s(d)) + d * co.mem_s_per_token + K * co.mem_s_per_kv_key
        b1 = d * co.mem_s_per_kv_key
        a2 = d * co.comp_s_per_token + K * co.comp_s_per_attn_key
        b2 = d * co.comp_s_per_attn_key
        total = n * (a2 + co.launch_s) + b2 * n * (n - 1) / 2.0
        alpha, beta = a1 - a2, b1 - b2
        if beta == 0.0:
            return total + n * max(alpha, 0.0)
        root = -alpha / beta
        if beta > 0:   # g_j > 0 for j > root
            j0 = 0 if alpha > 0 else min(n, int(math.floor(root)) + 1)
            cnt = n - j0
            return total + cnt * alpha + beta * (j0 + n - 1) * cnt / 2.0
        cnt = 0 if alpha <= 0 else min(n, int(math.ceil(root)))  # beta < 0: g_j > 0 for j < root
        return total + cnt * alpha + beta * cnt * (cnt - 1) / 2.0

    def _start(self, t):
        """Plan the next segment from time ``t``."""
        self._admit()
        self.t_start = t
        if self.prefill:
            budget = self.budget - self.n_d
            pt, pa, pk, chunks = 0, 0.0, 0.0, []
            for entry in self.prefill:
                if budget <= 0:
                    break
                i, done = entry
                c = min(budget, self.P[i] - done)
                pt += c
                pa += c * done + c * (c + 1) / 2.0
                pk += done + c
                budget -= c
                chunks.append((entry, c))
            if pt:
                co, n = self.co, self.n_d + pt
                tau = max(float(co.weights_s(n)) + n * co.mem_s_per_token + (self.sum_keys + pk) * co.mem_s_per_kv_key,
                          n * co.comp_s_per_token + (self.sum_keys + pa) * co.comp_s_per_attn_key) + co.launch_s
                self.seg, self.chunks, self.t_next = "step", chunks, t + tau
                return
        if self.n_d:
            m = self.decoders[0][0] - self.steps
            self.seg, self.seg_steps, self.t_next = "bulk", m, t + self._bulk_seconds(m)
            return
        self.seg, self.t_next = None, INF

    def arrive(self, i, t):
        self.outstanding[self.idx] += 1
        self.waiting.append(i)
        if self.seg is None:
            self._start(t)
        elif self.seg == "bulk" and len(self.waiting) == 1 and self._admittable():
            # cut the decode run at the first step boundary at or after t: the request joins the next step
            dt = t - self.t_start
            lo = max(1, int(dt / self._decode_step(self.seg_steps - 1)))
            hi = min(self.seg_steps, max(lo, int(math.ceil(dt / self._decode_step(0))) + 1))
            while lo < hi:  # smallest k in [lo, hi] with T(k) >= dt
                mid = (lo + hi) // 2
                if self._bulk_seconds(mid) >= dt:
                    hi = mid
                else:
                    lo = mid + 1
            self.seg_steps = lo
            self.t_next = self.t_start + self._bulk_seconds(lo)

    def on_event(self):
        t = self.t_next
        self.busy_s += t - self.t_start
        if self.seg == "step":
            self.steps += 1
            self.sum_keys += self.n_d
            for entry, c in self.chunks:
                entry[1] += c
                i = entry[0]
                if entry[1] == self.P[i]:
                    self.prefill.popleft()
                    self.res_first[i] = t
                    if self.G[i] > 1:
                        heapq.heappush(self.decoders, (self.steps + self.G[i] - 1, i))
                        self.n_d += 1
                        self.sum_keys += self.P[i] + 1
                    else:
                        self._release(i, t)
        else:
            self.steps += self.seg_steps
            self.sum_keys += self.seg_steps * self.n_d
        dec = self.decoders
        while dec and dec[0][0] == self.steps:
            _, i = heapq.heappop(dec)
            self.n_d -= 1
            self.sum_keys -= self.P[i] + self.G[i]
            self._release(i, t)
        self._start(t)

    def _release(self, i, t):
        self.res_finish[i] = t
        self.kv_used -= self.P[i] + self.G[i] - 1
        self.resident -= 1
        self.outstanding[self.idx] -= 1


# ----------------------------------------------------------------------------------------------------
# the loop

def simulate(fleet: FleetSpec, workload: Workload, spec: ModelSpec, *, plan=None, progress=None) -> Outcome:
    """Run ``workload`` through ``fleet`` to the last request's last token.

    progress: an object with ``update(n)`` (a tqdm bar) told of every 1/100 of the arrivals, or None."""
    n = len(workload)
    P = workload.prompt_tokens.tolist()
    G = workload.output_tokens.tolist()
    arr = workload.arrival_s.tolist()
    first = [math.nan] * n
    finish = [math.nan] * n
    card = [-1] * n
    outstanding = [0] * fleet.count
    if fleet.kind == "chip":
        prices, lim, chip = chip_prices(fleet, spec, workload.prompt_tokens, workload.output_tokens, plan)
        req = tuple(prices[k].tolist() for k in ("inject_s", "fill_s", "decode_s_per_token", "decode_share",
                                                 "decode_power_w", "kv_bytes"))
        req = (P, G) + req
        cards = [ChipCard(k, lim, req, outstanding, first, finish) for k in range(fleet.count)]
        static_w, busy_w = lim.static_power_w, 0.0
        dyn = prices["prefill_energy_j"] + prices["decode_energy_j_per_token"] * (workload.output_tokens - 1)
    else:
        model = gpu_model(fleet)
        eng = model.engine
        cap = model.kv_capacity_tokens(spec, eng.kv_memory_fraction)
        if cap < 1:
            raise ValueError(f"{spec.name} does not fit in {model.gpu.name}'s {model.gpu.memory_gb:g} GB "
                             f"at {fleet.precision}: needs several GPUs (not modeled)")
        cards = [GpuCard(k, model, spec, eng, cap, P, G, outstanding, first, finish) for k in range(fleet.count)]
        static_w, busy_w = gpu_idle_power_w(model.gpu), model.gpu.power_w
        dyn = None
    heap, version = [], [0] * fleet.count
    events = 0
    tick = max(1, n // 100)
    i = 0
    while True:
        t_a = arr[i] if i < n else INF
        while heap and heap[0][1] != version[heap[0][2]]:
            heapq.heappop(heap)
        if heap and heap[0][0] <= t_a:
            _, _, k = heapq.heappop(heap)
            c = cards[k]
            c.on_event()
            changed = True
        elif i < n:
            k = outstanding.index(min(outstanding))
            c = cards[k]
            changed = False
            if c.fits_ever(i):
                card[i] = k
                before = c.t_next
                c.arrive(i, t_a)
                changed = c.t_next != before
            i += 1
            if progress is not None and i % tick == 0:
                progress.update(tick)
        else:
            break
        events += 1
        if changed:
            version[k] += 1
            if c.t_next < INF:
                heapq.heappush(heap, (c.t_next, version[k], k))
    if progress is not None and n % tick:
        progress.update(n % tick)
    card_a = np.asarray(card)
    rejected = card_a < 0
    if fleet.kind == "chip":
        dynamic = float(dyn[~rejected].sum())
        pipe = np.zeros(fleet.count)
        used = prices["inject_s"] + prices["decode_share"] * prices["decode_s_per_token"] * (workload.output_tokens - 1)
        np.add.at(pipe, card_a[~rejected], used[~rejected])
    else:
        dynamic, pipe = 0.0, None
    return Outcome(fleet, workload, np.asarray(first), np.asarray(finish), rejected, card_a,
                   np.asarray([c.busy_s for c in cards]), dynamic, static_w, busy_w, events, pipe,
                   sum(c.steps for c in cards) if fleet.kind == "gpu" else 0)
