"""Block-format kernels (k-quants, Q5_0/Q5_1, MXFP4, NVFP4) at M = 1 against the plain read of the
same bytes, on every ISA path of the host, one thread, cold weights; ratios in the same process.

    python benchmarks/block_ratios.py [--quick] [--kinds q4_k,q6_k] [--isas avx2,avx512vnni] [--reps N] [--json PATH]

For each Llama 3.1 8B layer shape (--quick: 4096x4096 only) and block kind, the kernel on each ISA
path and the plain read (``hcemu.bench.kernels.read_runner``) of the same bytes are timed interleaved
in rounds; each runner's time is the least CPU time of the calling thread over ``--reps`` calls per
round (every runner is single-threaded and runs in that thread, so time the scheduler gives other
processes on a shared host is not counted; the least of many calls is the unloaded figure). GB/s =
the bytes one product streams (the records: codes in their host slots and every level of scales) /
that time. The target (docs/formats.md "Speed"): kernel / read >= 0.90.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hcemu  # noqa: E402
from hcemu._io import write_json  # noqa: E402
from hcemu.bench import kernels as kb  # noqa: E402
from hcemu.formats import BLOCK_KINDS, WeightFormat  # noqa: E402

GOAL = 0.90


def _on_isa(runner, isa):
    def fn():
        hcemu.set_isa(isa)
        runner.fn()
    return kb.Runner(runner.peer, fn, runner.weight_bytes, runner.macs, runner.copies)


def least_cpu_s(fn, reps: int) -> float:
    """Least thread CPU time (s) of ``reps`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def measure(shapes, kinds, isas, rounds: int = 3, reps: int = 20) -> list:
    rows = []
    before = hcemu.capabilities()["active"]
    try:
        for n, k in shapes:
            for kind in kinds:
                fmt = WeightFormat.of_kind(kind)
                cim = kb.cim_runner(fmt, n, k, 1, 1, True)
                runners = {"read": kb.read_runner(cim.weight_bytes, 1, True)}
                runners.update({isa: _on_isa(cim, isa) for isa in isas})
                secs = {name: float("inf") for name in runners}
                for _ in range(rounds):
                    for name, r in runners.items():
                        secs[name] = min(secs[name], least_cpu_s(r.fn, reps))
                for isa in isas:
                    rows.append({"n": n, "k": k, "kind": kind, "isa": isa, "bytes": cim.weight_bytes,
                                 "gb_s": cim.weight_bytes / secs[isa] / 1e9,
                                 "read_gb_s": cim.weight_bytes / secs["read"] / 1e9,
                                 "of_read": secs["read"] / secs[isa]})
                del runners, cim
    finally:
        hcemu.set_isa(before)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 4096x4096 shape only, 3 rounds")
    ap.add_argument("--kinds", default=",".join(BLOCK_KINDS))
    ap.add_argument("--isas", default=",".join(hcemu.capabilities()["supported"]))
    ap.add_argument("--reps", type=int, default=20, help="calls per runner and round")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    shapes = [(4096, 4096)] if a.quick else list(kb.LLAMA31_8B_SHAPES[:3])
    kinds, isas = a.kinds.split(","), a.isas.split(",")
    rows = measure(shapes, kinds, isas, rounds=2 if a.quick else 3, reps=a.reps)
    print(f"block kernels at M = 1, 1 thread, cold; GB/s (fraction of the plain read of the same bytes); goal {GOAL}")
    for n, k in shapes:
        print(f"{n}x{k}")
        for kind in kinds:
            sel = [r for r in rows if (r["n"], r["k"], r["kind"]) == (n, k, kind)]
            cells = "  ".join(f"{r['isa']} {r['gb_s']:5.1f} ({r['of_read']:.2f})" for r in sel)
            print(f"  {kind:6s} read {sel[0]['read_gb_s']:5.1f}  {cells}")
    if a.json:
        write_json(a.json, {"rows": rows, "goal": GOAL})
    return 0


if __name__ == "__main__":
    sys.exit(main())
