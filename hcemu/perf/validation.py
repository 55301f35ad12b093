"""Every published figure the performance models are compared with, what hcemu predicts for it, and the
error -- separately for the figures a parameter was tuned to (calibration: the error only shows the
tuning landed) and the ones no parameter saw (held out: the error is the model's).

Kinds: ``vendor claim`` (a number a vendor states, method unpublished), ``vendor measurement`` (a
vendor's benchmark with its method and settings published), ``independent measurement``. Figures and
sources are in :data:`FIGURES`; ``docs/serving.md`` ("Validation") reproduces the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hcemu.model.spec import get_preset
from hcemu.perf.area import chip_area_breakdown
from hcemu.perf.cost import CostModel
from hcemu.perf.deploy import gpu_at_precision
from hcemu.perf.gpu import GpuModel
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.specs import HC1_PLAN, get_chip, get_gpu

TRTLLM = ("NVIDIA TensorRT-LLM performance overview (docs/source/performance/perf-overview.md, v1.0 tables): "
          "trtllm-bench throughput, PyTorch backend, ModelOpt checkpoints, requests at an unbounded rate, "
          "total output tok/s per GPU")


@dataclass(frozen=True)
class Figure:
    """A published figure: ``value`` in ``unit``; ``calibrates`` names the parameter tuned to it (None:
    held out); ``key`` selects what hcemu predicts (see :func:`predict`)."""

    name: str
    kind: str
    source: str
    value: float
    unit: str
    calibrates: str | None
    key: tuple


_ISL_OSL = ((128, 128), (128, 2048), (128, 4096), (500, 2000), (1000, 1000), (1000, 2000), (2048, 128),
            (2048, 2048), (5000, 500), (20000, 2000))
_TRT = {  # (model, gpu, precision): output tok/s at each ISL/OSL above, TP1
    ("llama-3.1-8b", "h200", "fp8"): (27911, 26221, 18027, 20770, 17744, 16828, 3538, 12194, 3902, 1804),
    ("llama-3.1-8b", "h100", "fp8"): (28312, 22714, 14325, 17660, 15220, 13899, 3450, 9305, 3459, 1351),
    ("llama-3.1-70b", "h200", "fp8"): (3803, 4336, 2872, 3666, 2909, 2994, 442, 2003, 566, 283),
    ("llama-3.1-70b", "b200", "nvfp4"): (11147, 9922, 6831, 7762, 7007, 6271, 1339, 4783, 1459, 665),
}
_TRT_MODEL = {"llama-3.1-8b": "Llama 3.1 8B", "llama-3.1-70b": "Llama 3.3 70B"}  # 3.3 70B has 3.1 70B's shapes
_TRT_CALIBRATION = {("llama-3.1-8b", "h200", "fp8", 2048, 128): "fp8 compute_efficiency",
                    ("llama-3.1-8b", "h200", "fp8", 128, 2048): "trtllm kv_read_efficiency"}

_V = "vendor claim"
FIGURES: list[Figure] = [
    Figure("HC1 Llama 3.1 8B per-user decode, 1k/1k", _V,
           "Taalas via latent.space 'AINews: The Custom ASIC Thesis' (silicon-facts 1)", 16960, "tok/s",
           "hc1 cim_macs_per_cycle_w4", ("chip", "per_user")),
    Figure("HC1 card power", _V, "Taalas CEO, Next Platform 2026-02-19; 250 W in the brief (silicon-facts 1)",
           250, "W", "hc1 rom_read_pj_per_bit (with kv_sram_bytes)", ("chip", "power")),
    Figure("HC1 die area", _V, "ertas.ai / thequantumdispatch.com (silicon-facts 1)", 815, "mm2", None,
           ("chip", "area")),
    Figure("HC1 transistors", _V, "Next Platform; ang.gg (silicon-facts 1)", 53e9, "transistors",
           "hc1 cim_lane_transistors", ("chip", "transistors")),
    Figure("HC1 demo reading, per-user decode", "independent measurement (weak: setting unknown, 1k/1k assumed)",
           "frontiermodels.cc/?p=4947 (silicon-facts 1)", 15780, "tok/s", None, ("chip", "per_user")),
    Figure("HC1 review reading, per-user decode", "independent measurement (weak: setting unknown, 1k/1k assumed)",
           "ctol.digital HC1 review (silicon-facts 1)", 14357, "tok/s", None, ("chip", "per_user")),
    Figure("HC1 cost per Mtok", _V, "project brief; agent-wars.com 2026-03-15 (method unpublished)", 0.75,
           "c/Mtok", "hc1 card_price_usd", ("chip", "cost")),
    Figure("B200 Llama 3.1 8B per-user decode (HC1 48x faster)", _V, "project brief (silicon-facts 1)", 353,
           "tok/s", "bandwidth_efficiency, kernel_launch_us", ("gpu1", "b200")),
    Figure("H200 Llama 3.1 8B per-user decode (HC1 74x faster)", "press restating a vendor",
           "aicentral.substack.com/p/hardwired (silicon-facts 1)", 230, "tok/s",
           "bandwidth_efficiency, kernel_launch_us", ("gpu1", "h200")),
    Figure("B200 cost per Mtok", _V, "project brief (silicon-facts 1)", 3.79, "c/Mtok", "hardware_lifetime_years",
           ("gpucost", "b200")),
] + [
    Figure(f"{_TRT_MODEL[m]} {g.upper()} {p.upper()} TP1 {i}/{o} max throughput", "vendor measurement", TRTLLM, v,
           "tok/s", _TRT_CALIBRATION.get((m, g, p, i, o)), ("trt", m, g, p, i, o))
    for (m, g, p), vals in _TRT.items() for (i, o), v in zip(_ISL_OSL, vals)
]


@lru_cache(maxsize=None)
def _chip():
    spec = get_preset("llama-3.1-8b")
    si = SiliconModel("hc1").evaluate(spec, HC1_PLAN, 1024, 1024)
    area = chip_area_breakdown("hc1", spec, HC1_PLAN)
    cost = CostModel().chip(get_chip("hc1"), si.aggregate_tok_s, si.power_w).cents_per_mtok
    return {"per_user": si.per_user_tok_s, "power": si.power_w, "area": area.total_mm2,
            "transistors": area.transistors, "cost": cost}


def predict(fig: Figure) -> float:
    """hcemu's value for the figure's setting."""
    kind, *rest = fig.key
    spec8 = get_preset("llama-3.1-8b")
    if kind == "chip":
        return float(_chip()[rest[0]])
    if kind == "gpu1":
        return float(GpuModel(rest[0]).evaluate(spec8, 1024, 1024).per_user_tok_s)
    if kind == "gpucost":
        r = GpuModel(rest[0]).evaluate(spec8, 1024, 1024)
        return float(CostModel().gpu(get_gpu(rest[0]), r.aggregate_tok_s).cents_per_mtok)
    if kind == "trt":
        model, gpu, prec, isl, osl = rest
        m = GpuModel(gpu_at_precision(gpu, prec), "trtllm")
        return float(m.saturated_throughput(get_preset(model), isl, osl)["output_tok_s"])
    raise ValueError(f"unknown figure key {fig.key!r}")


def validation_rows() -> list[dict]:
    """One row per figure: name, kind, source, use, published, hcemu, unit, error (hcemu / published - 1)."""
    rows = []
    for f in FIGURES:
        v = predict(f)
        rows.append({"figure": f.name, "kind": f.kind, "source": f.source,
                     "use": f"calibrated: {f.calibrates}" if f.calibrates else "held out",
                     "published": f.value, "hcemu": v, "unit": f.unit, "error": v / f.value - 1})
    return rows


def error_summary(rows: list[dict]) -> dict[str, dict]:
    """Mean and max absolute error of the calibration figures and of the held-out ones (and the held-out
    TensorRT-LLM points by GPU and model)."""
    groups: dict[str, list[float]] = {"calibrated": [], "held out": []}
    for r in rows:
        groups["calibrated" if r["use"].startswith("calibrated") else "held out"].append(abs(r["error"]))
        if r["use"] == "held out" and r["source"] == TRTLLM:
            name = " ".join(r["figure"].split()[:5])
            groups.setdefault(f"held out: {name}", []).append(abs(r["error"]))
    return {k: {"n": len(v), "mean_abs_error": float(np.mean(v)) if v else float("nan"),
                "max_abs_error": float(np.max(v)) if v else float("nan")} for k, v in groups.items()}
