"""Metrics of a simulation: latency percentiles, throughput, SLO attainment, utilization, energy and cost.

* TTFT = first token - arrival; TPOT = (last token - first token) / (output tokens - 1) (requests with
  one output token have none); end-to-end latency = last token - arrival; percentiles p50/p90/p99 over
  the served requests.
* Throughput: output tokens (and requests) served over the window from the first arrival to the last
  token.
* SLO attainment: the share of *all* requests (rejected ones fail) with TTFT <= ``slo.ttft_s`` and TPOT
  <= ``slo.tpot_s``; goodput (:func:`hcemu.serving.sweep.goodput`) is the highest rate at which it is
  >= ``slo.attainment``.
* Utilization: busy share (at least one admitted request) per card, averaged; for hard-coded cards also
  the pipeline occupancy (injection slots used / window).
* Energy: static (chip leakage, GPU idle) power over the window for every card, plus the chips'
  dynamic energy per event or the GPUs' board power above idle while busy; per served request.
* Cost per Mtok at the measured utilization: the fleet's hourly cost (:class:`hcemu.perf.cost.CostModel`:
  hardware over its life, the chips' NRE, energy at the measured mean power x PUE) over the output
  tokens it served per hour.
"""
from __future__ import annotations

import numpy as np

from hcemu.perf.cost import CostModel
from hcemu.perf.specs import get_cost
from hcemu.serving.fleet import chip_for, gpu_model
from hcemu.serving.params import Slo
from hcemu.serving.sim import Outcome

PERCENTILES = (50, 90, 99)


def _pct(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {f"p{q}": float("nan") for q in PERCENTILES}
    v = np.percentile(x, PERCENTILES)
    return {f"p{q}": float(a) for q, a in zip(PERCENTILES, v)}


def latencies(o: Outcome) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT (nan for one output token) and end-to-end seconds (nan if rejected)."""
    w = o.workload
    ttft = o.first_token_s - w.arrival_s
    steps = w.output_tokens - 1
    tpot = np.where(steps > 0, (o.finish_s - o.first_token_s) / np.maximum(steps, 1), np.nan)
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": o.finish_s - w.arrival_s}


def slo_attainment(o: Outcome, slo: Slo) -> float:
    """Share of all requests meeting both SLOs (rejected requests miss them)."""
    lat = latencies(o)
    ok = (lat["ttft_s"] <= slo.ttft_s) & ((o.workload.output_tokens == 1) | (lat["tpot_s"] <= slo.tpot_s))
    return float(ok.mean()) if ok.size else float("nan")


def summarize(o: Outcome, spec, slo: Slo = Slo(), cost="default", plan=None) -> dict:
    """One flat dict of every metric (seconds, tokens/s, W, J, cents); see the module docstring."""
    w, fleet = o.workload, o.fleet
    served = ~o.rejected
    lat = latencies(o)
    start = float(w.arrival_s[0]) if len(w) else 0.0
    end = float(np.nanmax(o.finish_s)) if served.any() else start
    window = max(end - start, 1e-12)
    out_tok = float(w.output_tokens[served].sum())
    tok_s = out_tok / window
    static_j = fleet.count * o.static_power_w * window
    busy_j = float(o.busy_s.sum()) * (o.busy_power_w - o.static_power_w) if o.busy_power_w else 0.0
    energy = static_j + busy_j + o.dynamic_energy_j
    power = energy / window
    cm = CostModel(get_cost(cost))
    if fleet.kind == "chip":
        chip, _ = chip_for(fleet, spec, plan)
        per_card = cm.chip(chip, 1.0, 0.0)
        hw_hourly = per_card.hardware_usd_per_hour + per_card.nre_usd_per_hour
    else:
        hw_hourly = cm.gpu(gpu_model(fleet).gpu, 1.0).hardware_usd_per_hour
    hourly = fleet.count * hw_hourly + cm.energy_usd_per_hour(power)
    cents = hourly / (tok_s * 3600.0) * 1e6 * 100.0 if tok_s > 0 else float("inf")
    row = {"fleet": fleet.label, "requests": len(w), "served": int(served.sum()), "rejected": int(o.rejected.sum()),
           "offered_rate_req_s": len(w) / max(w.duration_s, 1e-12) if len(w) > 1 else float("nan"),
           "throughput_req_s": float(served.sum()) / window, "throughput_tok_s": tok_s,
           "slo_attainment": slo_attainment(o, slo),
           "utilization": float(np.mean(o.busy_s)) / window,
           "pipeline_occupancy": (float(np.mean(o.pipeline_busy_s)) / window if o.pipeline_busy_s is not None
                                  else None),
           "mean_power_w": power, "energy_j_per_request": energy / max(served.sum(), 1),
           "cost_cents_per_mtok": cents, "window_s": window, "events": o.events}
    for k in ("ttft_s", "tpot_s", "e2e_s"):
        x = lat[k][served]
        for q, v in _pct(x[np.isfinite(x)]).items():
            row[f"{k[:-2]}_{q}_s"] = v
    return row
