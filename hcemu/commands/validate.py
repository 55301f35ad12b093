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


def run(args) -> int:
    from hcemu.perf.validation import (error_summary, figure_checks, figures_markdown, fmt_figure, summary_lines,
                                       validation_rows)

    checks = figure_checks()
    rows = validation_rows(checks)
    summary = error_summary(rows)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    if args.markdown:
        print(figures_markdown(checks, summary=True))
        return 0
    sources = list(dict.fromkeys(r["source"] for r in rows))
    w = max(len(r["figure"]) for r in rows)
    print(f"{'figure':<{w}}  {'published':>18}  {'hcemu':>10}  {'error':>7}  use  [source]")
    for c, r in zip(checks, rows):
        print(f"{r['figure']:<{w}}  {c.figure.stated:>18}  {fmt_figure(c.modeled, c.figure.unit):>10}  "
              f"{r['error']:>+7.1%}  {r['use']}  [{sources.index(r['source']) + 1}]")
    print()
    print("\n".join(summary_lines(summary)))
    if args.sources:
        print()
        for i, s in enumerate(sources, 1):
            print(f"[{i}] {s}")
    return 0
