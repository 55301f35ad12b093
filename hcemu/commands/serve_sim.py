"""``hcemu serve-sim``: fleets of hard-coded cards and GPUs serving one trace, request by request."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("serve-sim", help="request-level serving simulation of fleets (TTFT, TPOT, goodput, cost)")
    p.add_argument("--model", default="llama-3.1-8b", help="model preset (default: llama-3.1-8b)")
    p.add_argument("--fleet", action="append", required=True, metavar="NAME[-PRECISION]:COUNT",
                   help="a fleet to simulate, e.g. hc1:10, h200:8, h200-fp8:8 (repeat to compare fleets)")
    p.add_argument("--rate", type=float, default=10.0, help="mean arrival rate, requests/s (default 10)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of arrivals (default 600)")
    p.add_argument("--trace", default=None, metavar="FILE.csv",
                   help="replay a CSV trace (TIMESTAMP, ContextTokens, GeneratedTokens) scaled to --rate")
    p.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson", help="arrival process")
    p.add_argument("--cv", type=float, default=2.0, help="coefficient of variation of gamma gaps (burstiness)")
    p.add_argument("--prompt", type=float, default=1024, help="mean prompt tokens (default 1024)")
    p.add_argument("--output", type=float, default=256, help="mean output tokens (default 256)")
    p.add_argument("--lengths", choices=("fixed", "exponential", "lognormal"), default="fixed",
                   help="length distribution (default fixed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-precision", default="bf16", help="GPU precision for fleets that name none")
    p.add_argument("--engine", default="vllm", help="GPU serving engine preset (vllm, trtllm)")
    p.add_argument("--slo-ttft", type=float, default=0.2, help="TTFT SLO, seconds (default 0.2)")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO, seconds (default 0.1)")
    p.add_argument("--cost", default="default", help="cost-assumption preset")
    p.add_argument("--sweep", default=None, metavar="R1,R2,...",
                   help="also sweep these rates (requests/s) for goodput (default with --plot: 0.25x..4x --rate)")
    p.add_argument("--workers", type=int, default=1, help="processes for the sweep (ProcessPoolExecutor)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write FILE.png (latency CDFs) and FILE-goodput.png (SLO attainment vs rate)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


COLUMNS = (("fleet", "fleet", "{}"), ("served", "served", "{:,}"), ("rejected", "rej", "{:,}"),
           ("throughput_tok_s", "out tok/s", "{:,.0f}"), ("ttft_p50_s", "TTFT p50 ms", "{:.2f}"),
           ("ttft_p99_s", "p99", "{:.2f}"), ("tpot_p50_s", "TPOT p50 ms", "{:.3f}"), ("tpot_p99_s", "p99", "{:.3f}"),
           ("e2e_p90_s", "e2e p90 s", "{:.3f}"), ("slo_attainment", "SLO ok", "{:.1%}"),
           ("utilization", "util", "{:.1%}"), ("energy_j_per_request", "J/req", "{:,.1f}"),
           ("cost_cents_per_mtok", "c/Mtok", "{:.2f}"))


def table(rows) -> str:
    ms = {"ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"}
    out = [[h for _, h, _ in COLUMNS]]
    for r in rows:
        cells = []
        for k, _, f in COLUMNS:
            v = r.get(k)
            cells.append("-" if v is None or v != v else f.format(v * 1e3 if k in ms else v))
        out.append(cells)
    widths = [max(len(row[i]) for row in out) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in out)


def run(args) -> int:
    from tqdm import tqdm

    from hcemu.model.spec import get_preset
    from hcemu.serving import Slo, goodput, parse_fleet, read_trace, simulate, summarize, sweep, synthetic

    spec = get_preset(args.model)
    fleets = [parse_fleet(f, precision=args.gpu_precision, engine=args.engine) for f in args.fleet]
    slo = Slo(args.slo_ttft, args.slo_tpot)
    if not args.rate > 0 or not args.duration > 0:
        raise ValueError(f"--rate and --duration must be > 0, got {args.rate}, {args.duration}")
    kw = dict(arrival=args.arrival, cv=args.cv, prompt_mean=args.prompt, output_mean=args.output,
              length_dist=args.lengths, seed=args.seed)
    trace = read_trace(args.trace) if args.trace else None
    if trace is not None:
        workload = trace.scaled(args.rate / (len(trace) / max(trace.duration_s, 1e-12)))
    else:
        workload = synthetic(args.rate, duration_s=args.duration, **kw)
    quiet = args.no_progress or args.json
    outcomes, rows = [], []
    for f in fleets:
        with tqdm(total=len(workload), desc=f"simulating {f.label}", unit="req", disable=quiet,
                  file=sys.stderr) as bar:
            o = simulate(f, workload, spec, progress=bar)
        outcomes.append(o)
        rows.append(summarize(o, spec, slo, args.cost))
    sweep_rows = []
    rates = None
    if args.sweep:
        rates = [float(x) for x in args.sweep.split(",") if x.strip()]
    elif args.plot:
        rates = [args.rate * k for k in (0.25, 0.5, 1, 1.5, 2, 3, 4)]
    if rates:
        executor = None
        if args.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            executor = ProcessPoolExecutor(args.workers)
        try:
            if not quiet:
                print(f"sweeping {len(rates)} rates x {len(fleets)} fleets ...", file=sys.stderr)
            sweep_rows = sweep(fleets, rates, spec, duration_s=args.duration, trace=trace, slo=slo, cost=args.cost,
                               executor=executor, **({} if trace is not None else kw))
        finally:
            if executor is not None:
                executor.shutdown()
    good = goodput(sweep_rows, slo) if sweep_rows else {}
    if args.json:
        print(json.dumps({"model": spec.name, "workload": workload.label, "slo": vars(slo), "rows": rows,
                          "sweep": sweep_rows, "goodput_req_s": good}, indent=2, default=float))
    else:
        print(f"{spec.name}: {workload.label}, {len(workload):,} requests; SLO TTFT {slo.ttft_s * 1e3:g} ms, "
              f"TPOT {slo.tpot_s * 1e3:g} ms")
        print(table(rows))
        for label, g in good.items():
            print(f"{label}: goodput {g:g} req/s ({slo.attainment:.0%} within SLO) over rates {rates}")
    if args.plot:
        from hcemu.serving.plots import plot_goodput, plot_latency_cdfs

        base = args.plot[:-4] if args.plot.lower().endswith(".png") else args.plot
        written = [plot_latency_cdfs(args.plot, outcomes, slo), plot_goodput(base + "-goodput.png", sweep_rows, slo)]
        print("wrote " + ", ".join(written), file=sys.stderr)
    return 0
