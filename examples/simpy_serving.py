"""hcemu chips as components of a SimPy discrete-event model: the step API's timeline is the clock.

A stream of requests (arrival time, prompt token ids, tokens to generate) is served by ``n_chips``
hard-coded chips. Each chip is a SimPy process around a :class:`hcemu.step.ChipStepper`: it admits
waiting requests as users while its KV SRAM holds them, and runs one step at a time — one decode token
for every decoding user, plus one prefill chunk (at most ``chunk`` tokens) of the oldest prefilling
user — entering the pipeline at the simulated time, then sleeps until the step's last item leaves the
head. A request's first token and last token are stamped at the cycle its item left the head, mapped to
seconds with the chip's clock. The tokens are the chip's greedy choices from its own logits, so the
model serves real text, not just times.

Run: ``python examples/simpy_serving.py IMAGE.hcrom [--chips 2] [--requests 8] [--rate 50]``
(SimPy: ``pip install simpy``, or the ``bench`` extra).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import simpy

from hcemu.step import ChipStepper


@dataclass
class Request:
    """One request: ``arrival_s`` seconds, ``prompt`` token ids, ``n_generate`` tokens wanted (>= 1).
    Filled by the simulation: ``chip``, ``first_token_s``, ``finish_s`` (seconds) and ``ids``."""

    arrival_s: float
    prompt: list
    n_generate: int
    chip: int = -1
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    ids: list = field(default_factory=list)


def chip_process(env, idx, stepper, queue, chunk, outstanding):
    """One chip: admit from ``queue`` (a simpy.Store), step, sleep until the step is done;
    ``outstanding[idx]`` counts its requests not yet finished."""
    hz = stepper.clock_ghz * 1e9
    users = {}      # user id -> [request, prompt tokens not yet fed]
    while True:
        if not users:                                   # idle: wait for work
            req = yield queue.get()
            users[stepper.open_user()] = [req, list(req.prompt)]
        while queue.items:                              # admit while the KV SRAM holds another user
            try:
                uid = stepper.open_user()
            except ValueError:
                break
            req = yield queue.get()
            users[uid] = [req, list(req.prompt)]
        work, prefilling = [], False
        for uid, (req, rest) in users.items():
            if not rest:
                work.append((uid, [req.ids[-1]]))       # decode: feed back the last token
            elif not prefilling:
                work.append((uid, rest[:chunk]))        # one prompt chunk per step, oldest first
                prefilling = True
        step = stepper.step(work, at_cycle=env.now * hz)
        for item in step.items:
            req, rest = users[item.user]
            del rest[:item.n_tokens]
            if rest:                                    # mid-prompt: no token leaves the chip
                continue
            req.ids.append(int(np.argmax(item.logits[-1])))
            t = item.end_cycle / hz
            if len(req.ids) == 1:
                req.first_token_s, req.chip = t, idx
            if len(req.ids) == req.n_generate:
                req.finish_s = t
                stepper.close_user(item.user)
                del users[item.user]
                outstanding[idx] -= 1
        yield env.timeout(max(step.end_cycle / hz - env.now, 0.0))


def simulate(image, requests, n_chips=2, chip="hc1", kv_capacity_tokens=None, chunk=64):
    """Serve ``requests`` (a list of :class:`Request`, filled in place) on ``n_chips`` chips; each
    request goes to the chip with the fewest unfinished requests (ties: the lowest index). Returns the requests and the end time (s)."""
    env = simpy.Environment()
    if kv_capacity_tokens is None:
        kv_capacity_tokens = max(len(r.prompt) + r.n_generate for r in requests)
    queues = [simpy.Store(env) for _ in range(n_chips)]
    outstanding = [0] * n_chips
    for i, q in enumerate(queues):
        env.process(chip_process(env, i, ChipStepper(image, chip=chip, kv_capacity_tokens=kv_capacity_tokens),
                                 q, chunk, outstanding))

    def arrivals():
        for r in sorted(requests, key=lambda r: r.arrival_s):
            yield env.timeout(r.arrival_s - env.now)
            i = min(range(n_chips), key=lambda i: outstanding[i])
            outstanding[i] += 1
            queues[i].put(r)
    env.process(arrivals())
    env.run()
    return requests, env.now


def poisson_requests(vocab, n, rate_per_s, prompt_len=(4, 24), n_generate=(2, 8), seed=0):
    """``n`` requests with exponential gaps at ``rate_per_s``, random prompts and lengths."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    return [Request(float(t[i]), rng.integers(0, vocab, rng.integers(*prompt_len)).tolist(),
                    int(rng.integers(*n_generate))) for i in range(n)]


def main(argv=None):
    from hcemu.rom.image import RomImage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--chips", type=int, default=2)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--rate", type=float, default=50.0, help="arrivals per second")
    args = ap.parse_args(argv)
    img = RomImage.load(args.image)
    reqs, end = simulate(img, poisson_requests(img.spec.vocab_size, args.requests, args.rate), args.chips)
    print(f"{'arrival_s':>10} {'chip':>4} {'ttft_ms':>9} {'e2e_ms':>9} ids")
    for r in reqs:
        print(f"{r.arrival_s:10.4f} {r.chip:4d} {(r.first_token_s - r.arrival_s) * 1e3:9.4f} "
              f"{(r.finish_s - r.arrival_s) * 1e3:9.4f} {r.ids}")
    print(f"simulated {end:.4f} s")


if __name__ == "__main__":
    main()
