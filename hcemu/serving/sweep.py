"""Sweeps of request rates x fleets on any ``concurrent.futures.Executor`` (threads, processes, a Dask
``client.get_executor()``): one simulation per point, the same numbers wherever it runs.

:func:`goodput` reads DistServe's goodput off a sweep: the highest swept rate at which at least
``slo.attainment`` of the requests met both SLOs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hcemu.model.spec import ModelSpec
from hcemu.serving.fleet import FleetSpec
from hcemu.serving.metrics import summarize
from hcemu.serving.params import Slo
from hcemu.serving.sim import simulate
from hcemu.serving.workload import Workload, synthetic


@dataclass(frozen=True)
class Point:
    """One simulation of a sweep: ``fleet`` at ``rate`` requests/s. The workload is ``trace`` replayed at
    that mean rate, or drawn by :func:`hcemu.serving.workload.synthetic` with ``workload_kwargs``."""

    fleet: FleetSpec
    spec: ModelSpec
    rate: float
    duration_s: float
    workload_kwargs: tuple = ()
    trace: Workload | None = None
    slo: Slo = Slo()
    cost: str = "default"

    def workload(self) -> Workload:
        if self.trace is not None:
            base = len(self.trace) / max(self.trace.duration_s, 1e-12)
            return self.trace.scaled(self.rate / base)
        return synthetic(self.rate, duration_s=self.duration_s, **dict(self.workload_kwargs))


def run_point(point: Point) -> dict:
    """Simulate one point; its metrics (:func:`hcemu.serving.metrics.summarize`) plus ``rate``."""
    out = simulate(point.fleet, point.workload(), point.spec)
    return {"rate": point.rate, **summarize(out, point.spec, point.slo, point.cost)}


def sweep(fleets, rates, spec: ModelSpec, *, duration_s: float = 600.0, trace: Workload | None = None,
          slo: Slo = Slo(), cost: str = "default", executor=None, **workload_kwargs) -> list[dict]:
    """Every fleet at every rate (requests/s); rows in fleet-major order. ``executor.map`` runs the points
    (in this process when None)."""
    rates = [float(r) for r in rates]
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise ValueError(f"rates must be finite and > 0, got {rates}")
    points = [Point(f, spec, r, duration_s, tuple(sorted(workload_kwargs.items())), trace, slo, cost)
              for f in fleets for r in rates]
    mapper = map if executor is None else executor.map
    return list(mapper(run_point, points))


def goodput(rows: list[dict], slo: Slo = Slo()) -> dict[str, float]:
    """Per fleet label: the highest swept rate whose SLO attainment is >= ``slo.attainment`` (0 if none)."""
    best: dict[str, float] = {}
    for r in rows:
        ok = r["slo_attainment"] >= slo.attainment
        best[r["fleet"]] = max(best.get(r["fleet"], 0.0), r["rate"] if ok else 0.0)
    return best
