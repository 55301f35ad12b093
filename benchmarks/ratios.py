"""Measure the kernel targets as ratios against peers run in the same process, interleaved.

    python benchmarks/ratios.py [--quick] [--json PATH]

For each Llama 3.1 8B matrix shape (n_out x n_in) it times, single-threaded unless stated, with
cold weights (several copies rotated, 4x the L3 cache in total): hcemu int8 (G32) and int4
(asymmetric G32) at M = 1 and 8 and with 2 threads; a plain C read of the same bytes (1 and 2
threads); numpy float32 BLAS matvec and numpy int8 matmul; onnxruntime MatMulInteger and
MatMulNBits when installed. Each ratio is computed per shape; the "geomean" column (geometric
mean over the shapes) is what the goal is checked against. The table says which targets hold;
rows marked (context) have no goal: they show how the 2-thread read scales on this host, how close
the 2-thread kernels come to it, and so the highest 2-thread gain a memory-bound kernel could show.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hcemu  # noqa: E402
from hcemu.bench import kernels as kb  # noqa: E402

SPECS = [
    ("hcemu", "int8", 1, 1), ("hcemu", "int8", 8, 1), ("hcemu", "int8", 1, 2),
    ("hcemu", "int4", 1, 1), ("hcemu", "int4", 8, 1), ("hcemu", "int4", 1, 2),
    ("read", "int8", 1, 1), ("read", "int8", 1, 2), ("read", "int4", 1, 1), ("read", "int4", 1, 2),
    ("numpy_f32", "f32", 1, 1), ("numpy_int", "int8", 1, 1),
    ("ort_int8", "int8", 1, 1), ("ort_int4", "int4", 1, 1),
]

# (label, numerator key, denominator key, quantity, target)  quantity: "bytes" (GB/s) or "macs" (MAC/s)
TARGETS = [
    ("int8 M=1 / plain read (GB/s)", ("hcemu", "int8", 1, 1), ("read", "int8", 1, 1), "bytes", 0.90),
    ("int8 M=1 / onnxruntime MatMulInteger (MAC/s)", ("hcemu", "int8", 1, 1), ("ort_int8", "int8", 1, 1), "macs", 1.0),
    ("int4 M=1 / plain read (GB/s)", ("hcemu", "int4", 1, 1), ("read", "int4", 1, 1), "bytes", 0.75),
    ("int4 M=1 / onnxruntime MatMulNBits (MAC/s)", ("hcemu", "int4", 1, 1), ("ort_int4", "int4", 1, 1), "macs", 1.0),
    ("int8 M=1 / numpy f32 BLAS matvec (MAC/s)", ("hcemu", "int8", 1, 1), ("numpy_f32", "f32", 1, 1), "macs", 3.0),
    ("int8 M=1 / numpy int8 matmul (MAC/s)", ("hcemu", "int8", 1, 1), ("numpy_int", "int8", 1, 1), "macs", 20.0),
    ("int8 M=8 / int8 M=1 (MAC/s)", ("hcemu", "int8", 8, 1), ("hcemu", "int8", 1, 1), "macs", 4.0),
    ("int4 M=8 / int4 M=1 (MAC/s)", ("hcemu", "int4", 8, 1), ("hcemu", "int4", 1, 1), "macs", 4.0),
    ("int8 M=1 2 threads / 1 thread", ("hcemu", "int8", 1, 2), ("hcemu", "int8", 1, 1), "macs", 1.6),
    ("int4 M=1 2 threads / 1 thread", ("hcemu", "int4", 1, 2), ("hcemu", "int4", 1, 1), "macs", 1.6),
    ("plain read 2 threads / 1 thread (context)", ("read", "int8", 1, 2), ("read", "int8", 1, 1), "bytes", None),
    # the ceiling of the two targets above: a memory-bound kernel cannot stream faster than the
    # plain read on the same threads, so its 2-thread gain is at most read(2 threads) / itself(1)
    ("int8 M=1 2 threads / plain read 2 threads (context)", ("hcemu", "int8", 1, 2), ("read", "int8", 1, 2),
     "bytes", None),
    ("int4 M=1 2 threads / plain read 2 threads (context)", ("hcemu", "int4", 1, 2), ("read", "int4", 1, 2),
     "bytes", None),
    ("ceiling: plain read 2 threads / int8 M=1 1 thread (context)", ("read", "int8", 1, 2), ("hcemu", "int8", 1, 1),
     "bytes", None),
]


def rate(ms, key, quantity):
    """Work per second summed over measurements ``ms`` of runner ``key`` (None if absent)."""
    sel = [m for m in ms if (m.peer, m.format, m.m, m.threads) == key]
    if not sel:
        return None
    work = sum(m.weight_bytes if quantity == "bytes" else m.macs for m in sel)
    return work / sum(m.seconds for m in sel)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two layer shapes, fewer rounds")
    ap.add_argument("--no-head", action="store_true", help="skip the 128256x4096 output head")
    ap.add_argument("--json", metavar="PATH", help="also write measurements and ratios as JSON")
    args = ap.parse_args(argv)

    shapes = list(kb.LLAMA31_8B_SHAPES)
    if args.quick:
        shapes = [(4096, 4096), (14336, 4096)]
    elif args.no_head:
        shapes = shapes[:3]
    rounds = 3 if args.quick else 5
    caps = hcemu.capabilities()
    print(f"hcemu kernels: ISA {caps['active']} (supported {', '.join(caps['supported'])}), "
          f"OpenMP {caps['openmp']}, onnxruntime {'yes' if kb.have_onnxruntime() else 'no'}, "
          f"L3 {kb.l3_bytes() >> 20} MiB", flush=True)
    measurements = []
    for n, k in shapes:
        print(f"measuring {n}x{k} ...", flush=True)
        measurements += kb.measure_shape(n, k, SPECS, rounds=rounds)

    print()
    print(f"{'runner':34s} " + " ".join(f"{f'{n}x{k}':>12s}" for n, k in shapes))
    for spec in SPECS:
        row = [m for m in measurements if (m.peer, m.format, m.m, m.threads) == spec]
        if not row:
            continue
        label = f"{spec[0]} {spec[1]} m={spec[2]} t={spec[3]}"
        cells = []
        for n, k in shapes:
            mm = [m for m in row if m.shape == (n, k)]
            cells.append(f"{mm[0].gbps:6.1f} GB/s" if mm else "-")
        print(f"{label:34s} " + " ".join(f"{c:>12s}" for c in cells))

    print()
    header = f"{'target':58s} {'geomean':>7s} " + " ".join(f"{f'{n}x{k}':>11s}" for n, k in shapes) + "  goal   holds"
    print(header)
    results = []
    for label, num, den, quantity, goal in TARGETS:
        per = []
        for n, k in shapes:
            sub = [m for m in measurements if m.shape == (n, k)]
            a, b = rate(sub, num, quantity), rate(sub, den, quantity)
            per.append(None if a is None or b is None else a / b)
        valid = [v for v in per if v is not None]
        total = math.exp(sum(math.log(v) for v in valid) / len(valid)) if valid else None
        holds = None if total is None or goal is None else total >= goal
        results.append({"target": label, "ratio": total, "per_shape": per, "goal": goal, "holds": holds})
        fmt = lambda v: f"{v:7.2f}" if v is not None else "      -"  # noqa: E731
        print(f"{label:58s} {fmt(total)} " + " ".join(f"{fmt(v):>11s}" for v in per)
              + f"  {'' if goal is None else f'>={goal:g}':6s} {'' if holds is None else ('yes' if holds else 'NO')}")
    if args.json:
        from hcemu._io import write_json

        write_json(args.json, {"capabilities": caps, "measurements": [m.to_dict() for m in measurements],
                               "ratios": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
