"""``hcemu kernels [--json] [--threads N] [--quick] [--isa NAME]``: measured throughput of the CIM
kernels on Llama 3.1 8B layer shapes, beside a plain read of the same bytes, and which ISA path ran."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("kernels", help="measure the CIM kernels' throughput on Llama 3.1 8B layer shapes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="threads per product (1..256; default 1); 1 is always measured too")
    p.add_argument("--quick", action="store_true", help="one shape (14336x4096), fewer rounds")
    p.add_argument("--isa", metavar="NAME", help="kernel path to measure (scalar, avx2, avxvnni, avx512vnni; default: "
                                                  "the best this CPU supports, or HCEMU_ISA)")
    p.set_defaults(func=run)


def run(args) -> int:
    import hcemu
    from hcemu.bench import kernels as kb

    if not 1 <= args.threads <= 256:
        raise ValueError(f"--threads must be in 1..256, got {args.threads}")
    if args.isa:
        hcemu.set_isa(args.isa)  # an error naming the supported paths when this CPU lacks it
    shapes = [kb.LLAMA31_8B_SHAPES[1]] if args.quick else list(kb.LLAMA31_8B_SHAPES[:3])  # quick: 14336x4096
    threads = sorted({1, args.threads})
    specs = [("hcemu", f, m, t) for f in ("int8", "int4") for m in (1, 8) for t in threads]
    specs += [("read", f, 1, t) for f in ("int8", "int4") for t in threads]
    caps = hcemu.capabilities()
    rounds = 3 if args.quick else 5
    ms = []
    for n, k in shapes:
        if not args.json:
            print(f"measuring {n}x{k} ...", file=sys.stderr, flush=True)
        ms += kb.measure_shape(n, k, specs, rounds=rounds, min_time_s=0.05 if args.quick else 0.1)

    def total(peer, fmt, m, t):
        sel = [x for x in ms if (x.peer, x.format, x.m, x.threads) == (peer, fmt, m, t)]
        sec = sum(x.seconds for x in sel)
        return sum(x.weight_bytes for x in sel) / sec / 1e9, 2 * sum(x.macs for x in sel) / sec / 1e9

    rows = []
    for fmt in ("int8", "int4"):
        for t in threads:
            read_gbps, _ = total("read", fmt, 1, t)
            for m in (1, 8):
                gbps, gops = total("hcemu", fmt, m, t)
                rows.append({"format": fmt, "m": m, "threads": t, "gb_per_s": gbps, "gops": gops,
                             "read_gb_per_s": read_gbps, "of_read": gbps / read_gbps})
    if args.json:
        print(json.dumps({"isa": caps["active"], "supported": caps["supported"], "openmp": caps["openmp"],
                          "shapes": shapes, "summary": rows, "measurements": [x.to_dict() for x in ms]}, indent=2))
        return 0
    names = {"int8": "int8 (G32)", "int4": "int4 asym (G32)"}
    print(f"ISA path: {caps['active']} (supported: {', '.join(caps['supported'])}; OpenMP {caps['openmp']})")
    print(f"shapes (n_out x n_in): {', '.join(f'{n}x{k}' for n, k in shapes)}; cold weights; "
          f"totals over the shapes")
    print(f"{'format':18s} {'M':>3s} {'thr':>3s} {'GB/s':>8s} {'GOPS':>8s} {'read GB/s':>10s} {'of read':>8s}")
    for r in rows:
        print(f"{names[r['format']]:18s} {r['m']:3d} {r['threads']:3d} {r['gb_per_s']:8.1f} {r['gops']:8.1f} "
              f"{r['read_gb_per_s']:10.1f} {100 * r['of_read']:7.0f}%")
    return 0
