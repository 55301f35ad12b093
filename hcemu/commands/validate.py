"""``hcemu validate``: every published figure the models are compared with, hcemu's value and the error,
calibration figures and held-out ones apart."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("validate", help="published figures vs hcemu's models: kind, source, calibrated or held out, error")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows and summary as JSON")
    fmt.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--sources", action="store_true", help="list the sources under the table")
    p.set_defaults(func=run)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1e3 and abs(x) < 1e12 else f"{x:.4g}"


def run(args) -> int:
    from hcemu.perf.validation import error_summary, validation_rows

    rows = validation_rows()
    summary = error_summary(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    sources = list(dict.fromkeys(r["source"] for r in rows))
    if args.markdown:
        print("| figure | kind | use | published | hcemu | error | source |")
        print("|---|---|---|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['figure']} | {r['kind']} | {r['use']} | {_num(r['published'])} {r['unit']} | "
                  f"{_num(r['hcemu'])} | {r['error']:+.1%} | [{sources.index(r['source']) + 1}] |")
    else:
        w = max(len(r["figure"]) for r in rows)
        print(f"{'figure':<{w}}  {'published':>12}  {'hcemu':>12}  {'error':>7}  use  [source]")
        for r in rows:
            print(f"{r['figure']:<{w}}  {_num(r['published']):>12}  {_num(r['hcemu']):>12}  {r['error']:>+7.1%}  "
                  f"{r['use']}  [{sources.index(r['source']) + 1}]")
    print()
    for k, s in summary.items():
        print(f"{k}: {s['n']} figures, mean |error| {s['mean_abs_error']:.1%}, max {s['max_abs_error']:.1%}")
    if args.sources or args.markdown:
        print()
        for i, s in enumerate(sources, 1):
            print(f"[{i}] {s}")
    return 0
