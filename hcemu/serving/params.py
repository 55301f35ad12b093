"""The serving simulator's own parameters (what :mod:`hcemu.perf` does not price): GPU idle power and
the default service-level objectives. Each has a source or a stated assumption in :data:`PARAM_SOURCES`
(docs/serving.md tabulates them)."""
from __future__ import annotations

from dataclasses import dataclass

from hcemu.perf.specs import GpuSpec


@dataclass(frozen=True)
class Slo:
    """A service-level objective: a request meets it when its time to first token is at most
    ``ttft_s`` and its mean time per output token at most ``tpot_s``; goodput is the highest request
    rate at which at least ``attainment`` of the requests meet it (DistServe's definition)."""

    ttft_s: float = 0.2
    tpot_s: float = 0.1
    attainment: float = 0.9

    def __post_init__(self):
        for f in ("ttft_s", "tpot_s", "attainment"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"Slo.{f} must be > 0, got {v!r}")
        if self.attainment > 1:
            raise ValueError(f"Slo.attainment is a fraction in (0, 1], got {self.attainment}")


GPU_IDLE_POWER_FRACTION = 0.12
"""A GPU's draw while it has no request, as a fraction of its board power."""

PARAM_SOURCES = {
    "GPU_IDLE_POWER_FRACTION": "assumption: 0.12 of board power (~85 W of an H100/H200's 700 W) while idle "
                               "with the model loaded; busy steps draw the full board power, as GpuModel "
                               "assumes at every batch",
    "Slo.ttft_s": "200 ms time to first token: the chatbot SLO of DistServe's simulator (OSDI'24)",
    "Slo.tpot_s": "100 ms per output token: same source",
    "Slo.attainment": "90% of requests: DistServe's goodput definition",
}


def gpu_idle_power_w(gpu: GpuSpec) -> float:
    """Watts a GPU draws while no request is resident."""
    return gpu.power_w * GPU_IDLE_POWER_FRACTION
