"""``hcemu economics``: lifetime cost per Mtok of hard-wiring a model vs serving it on GPUs; break-even
volume as a function of the model's lifetime, and the lifetime below which GPUs win."""
from __future__ import annotations

import json
import math
import sys

LIFETIMES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def register(sub) -> None:
    p = sub.add_parser("economics", help="NRE, cards, power and model lifetime: hard-coded vs GPU cost per Mtok")
    p.add_argument("--model", default="llama-3.1-8b", help="model preset (default: llama-3.1-8b)")
    p.add_argument("--context", type=int, default=1024, help="prompt tokens per request (default 1024)")
    p.add_argument("--generated", type=int, default=1024, help="output tokens per request (default 1024)")
    p.add_argument("--chip", default="hc1", help="hard-coded chip technology preset (default hc1)")
    p.add_argument("--gpu", action="append", default=None, help="GPU preset(s) (default: h200 and b200)")
    p.add_argument("--gpu-precision", default="fp8", help="GPU precision (default fp8)")
    p.add_argument("--engine", default="vllm", help="GPU serving engine preset (default vllm)")
    p.add_argument("--demand", type=float, default=1e7,
                   help="mean output tokens/s the deployment serves (default 10,000,000)")
    p.add_argument("--lifetime", type=float, default=1.0, help="model lifetime in years (default 1)")
    p.add_argument("--economics", default="default", help="economics-assumption preset")
    p.add_argument("--cost", default="default", help="cost-assumption preset (electricity, utilization, ...)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write break-even volume and cost per Mtok vs model lifetime")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def report(args) -> dict:
    from hcemu.model.spec import get_preset
    from hcemu.perf.economics import Economics, deployment_systems

    spec = get_preset(args.model)
    gpus = args.gpu or ["h200", "b200"]
    if not args.demand > 0 or not args.lifetime > 0:
        raise ValueError(f"--demand and --lifetime must be > 0, got {args.demand}, {args.lifetime}")
    chip, gsys, cc = deployment_systems(spec, args.context, args.generated, chip=args.chip, gpus=gpus,
                                        gpu_precision=args.gpu_precision, engine=args.engine, econ=args.economics)
    ec = Economics(args.economics, args.cost)
    u = ec.cost.utilization
    rows = []
    for s in [chip] + gsys:
        bridge = gsys[0] if s.hard_coded else None
        rows.append({"system": s.name, "tok_s_per_device": s.tok_s, "power_w": s.power_w,
                     "installed_usd": s.installed_usd, "devices": math.ceil(args.demand / (s.tok_s * u)),
                     "cents_per_mtok": float(ec.lifetime_cents_per_mtok(s, args.demand, args.lifetime, bridge))})
    be = {g.name: {"lifetimes_years": list(LIFETIMES),
                   "break_even_demand_tok_s": [float(x) for x in ec.break_even_demand(chip, g, LIFETIMES)],
                   "break_even_cards": [float(x) for x in ec.break_even_cards(chip, g, LIFETIMES)],
                   "gpu_wins_below_years": ec.gpu_wins_below_years(chip, g, args.demand)} for g in gsys}
    return {"model": spec.name, "workload": [args.context, args.generated], "demand_tok_s": args.demand,
            "lifetime_years": args.lifetime, "utilization": u, "nre_usd": ec.nre_usd(), "card": cc.to_dict(),
            "rows": rows, "break_even": be, "_systems": (chip, gsys, ec)}


def run(args) -> int:
    rep = report(args)
    chip, gsys, ec = rep.pop("_systems")
    if args.json:
        print(json.dumps(rep, indent=2, default=float))
    else:
        c = rep["card"]
        print(f"{rep['model']}, {rep['workload'][0]}/{rep['workload'][1]} tokens, {rep['demand_tok_s']:,.0f} output "
              f"tok/s for {rep['lifetime_years']:g} years at {rep['utilization']:.0%} utilization")
        print(f"{chip.name} card: {c['die_mm2']:.0f} mm2 die, {c['dies_per_wafer']:.0f} per wafer, yield "
              f"{c['yield_fraction']:.0%}, die ${c['die_usd']:,.0f}, card price ${c['card_price_usd']:,.0f} + "
              f"server share ${c['server_share_usd']:,.0f}; NRE per model ${rep['nre_usd'] / 1e6:.1f} M")
        print(f"{'system':<14}{'tok/s/device':>14}{'W':>7}{'installed $':>13}{'devices':>10}{'c/Mtok (life)':>15}")
        for r in rep["rows"]:
            print(f"{r['system']:<14}{r['tok_s_per_device']:>14,.0f}{r['power_w']:>7,.0f}{r['installed_usd']:>13,.0f}"
                  f"{r['devices']:>10,}{r['cents_per_mtok']:>15.3f}")
        print("break-even volume (hard-coded cards deployed) vs model lifetime:")
        print(f"{'vs':<14}" + "".join(f"{L:>9g}y" for L in LIFETIMES) + f"{'GPU wins below':>17}")
        for name, b in rep["break_even"].items():
            cells = "".join(f"{x:>10,.0f}" if math.isfinite(x) else f"{'never':>10}" for x in b["break_even_cards"])
            w = b["gpu_wins_below_years"]
            wins = "always" if math.isinf(w) else ("never" if w == 0 else f"{w * 12:.1f} months")
            print(f"{name:<14}{cells}{wins:>17}")
    if args.plot:
        from hcemu.perf.plots import plot_economics

        print("wrote " + plot_economics(args.plot, chip, gsys, ec, rep["demand_tok_s"]), file=sys.stderr)
    return 0
