"""Plots of serving simulations (matplotlib, extra ``plot``): latency CDFs and SLO attainment vs rate."""
from __future__ import annotations

import numpy as np

from hcemu.perf.plots import _pyplot, _save
from hcemu.serving.metrics import latencies
from hcemu.serving.params import Slo


def plot_latency_cdfs(path, outcomes, slo: Slo = Slo()) -> str:
    """TTFT and TPOT cumulative distributions of each simulated fleet, SLOs dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for o in outcomes:
        lat = latencies(o)
        for ax, key in zip(axes, ("ttft_s", "tpot_s")):
            x = np.sort(lat[key][np.isfinite(lat[key])])
            if x.size:
                ax.plot(x * 1e3, np.arange(1, x.size + 1) / x.size, label=o.fleet.label)
    for ax, key, lim in zip(axes, ("TTFT", "TPOT"), (slo.ttft_s, slo.tpot_s)):
        ax.axvline(lim * 1e3, ls="--", color="grey", label=f"SLO {lim * 1e3:g} ms")
        ax.set(xscale="log", xlabel=f"{key} (ms)", ylabel="share of requests", title=f"{key} CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_goodput(path, rows, slo: Slo = Slo()) -> str:
    """SLO attainment vs offered rate for each fleet; the goodput (highest rate >= attainment) marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(r["fleet"] for r in rows):
        pts = sorted((r["rate"], r["slo_attainment"]) for r in rows if r["fleet"] == label)
        x, y = zip(*pts)
        line, = ax.plot(x, y, "o-", label=label)
        good = [a for a, b in pts if b >= slo.attainment]
        if good:
            ax.axvline(max(good), color=line.get_color(), ls=":", alpha=0.7)
    ax.axhline(slo.attainment, ls="--", color="grey",
               label=f"{slo.attainment:.0%} within TTFT {slo.ttft_s * 1e3:g} ms, TPOT {slo.tpot_s * 1e3:g} ms")
    ax.set(xscale="log", xlabel="offered load (requests/s)", ylabel="SLO attainment",
           title="Goodput: highest rate meeting the SLO (dotted)", ylim=(-0.02, 1.02))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
