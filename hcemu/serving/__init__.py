"""Request-level serving simulation above :mod:`hcemu.perf`: fleets of hard-coded cards or GPUs serving
a trace (Poisson, bursty gamma, or a replayed CSV), with TTFT/TPOT/latency percentiles, throughput,
goodput under an SLO, utilization, energy and cost. It consumes per-request and per-step prices from
``hcemu.perf`` and never looks at events or kernels.

Modules: :mod:`~hcemu.serving.workload` (traces), :mod:`~hcemu.serving.fleet` (fleets and their prices),
:mod:`~hcemu.serving.sim` (the event loop), :mod:`~hcemu.serving.metrics`, :mod:`~hcemu.serving.sweep`
(rates x fleets on an Executor, goodput), :mod:`~hcemu.serving.params` (SLOs, idle power),
:mod:`~hcemu.serving.plots`.
"""
from hcemu.serving.fleet import FleetSpec, parse_fleet
from hcemu.serving.metrics import summarize
from hcemu.serving.params import Slo
from hcemu.serving.sim import simulate
from hcemu.serving.sweep import goodput, sweep
from hcemu.serving.workload import Workload, read_trace, synthetic

__all__ = ["FleetSpec", "parse_fleet", "summarize", "Slo", "simulate", "goodput", "sweep", "Workload",
           "read_trace", "synthetic"]
