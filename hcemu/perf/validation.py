"""Every published figure (:data:`hcemu.perf.figures.FIGURES`), what hcemu predicts for it and the error,
separately for the figures a parameter was tuned to and the ones no parameter saw; and the generated
tables of ``docs/perf.md`` and ``docs/serving.md``.

A figure some preset parameter is ``calibrated`` to (its :class:`~hcemu.perf.specs.Source` names the
figure) is a *calibration* target: the model landing on it is a regression pin, not evidence. Every
other figure is *held out*: nothing was tuned to it, and its error is what the model is worth. The
Llama 3.1 8B figures are predicted at 1k prompt / 1k generated tokens (the vendor's setting) on the
presets (``hc1`` sized for the model by :func:`hcemu.perf.sizing.size_for_model`, as ``hcemu compare``
prices it; the BF16 GPUs; the ``default`` costs); the TensorRT-LLM points by
``GpuModel(gpu_at_precision(gpu, precision), "trtllm").saturated_throughput``.

``hcemu validate`` prints the table; ``python -m hcemu.perf.validation --markdown`` prints the generated
blocks, ``--update FILE.md`` rewrites them in place and ``--check FILE.md`` exits 1 when they are stale.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from hcemu._io import atomic_write
from hcemu.model.spec import get_preset
from hcemu.perf.analytic import kv_bytes_per_token
from hcemu.perf.cost import CostModel
from hcemu.perf.deploy import DEPLOY_SOURCES, gpu_at_precision
from hcemu.perf.economics import ECONOMICS_SOURCES
from hcemu.perf.figures import FIGURES, TRTLLM, Figure, format_value
from hcemu.perf.gpu import GpuModel
from hcemu.perf.links import LINK_PRESETS, LINK_SOURCES, TP_PRESETS
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import CHIP_PRESETS, COST_PRESETS, GPU_PRESETS, HC1_PLAN, SOURCES, get_cost, get_gpu

__all__ = ["FIGURES", "TRTLLM", "PIN_BAND", "FigureCheck", "calibrated_parameters", "workload", "predict",
           "figure_checks", "validation_rows", "error_summary", "figures_markdown", "generated_blocks",
           "update_markdown"]

PIN_BAND = 0.06
"""Relative band of a calibration target that carries none of its own (the TensorRT-LLM points)."""

SOURCE_TABLES = (SOURCES, DEPLOY_SOURCES, ECONOMICS_SOURCES, LINK_SOURCES)
"""Every preset family's sources (preset name -> field -> Source)."""

MODEL, N_PROMPT, N_GENERATED = "llama-3.1-8b", 1024, 1024


def calibrated_parameters() -> dict[str, tuple[str, ...]]:
    """Figure key -> the ``preset.field`` parameters calibrated to it (every figure a key)."""
    out: dict[str, list[str]] = {f.key: [] for f in FIGURES}
    for table in SOURCE_TABLES:
        for preset, srcs in table.items():
            for field, src in srcs.items():
                for t in src.targets:
                    out[t].append(f"{preset}.{field}")
    return {k: tuple(v) for k, v in out.items()}


def workload(model: str = MODEL, n_prompt: int = N_PROMPT, n_generated: int = N_GENERATED) -> SimpleNamespace:
    """The presets on one workload: ``spec``, ``chip`` (hc1 sized for the model), ``hc1`` (SiliconResult),
    ``hc1_cost``, ``gpu`` and ``gpu_cost`` (dicts by GPU preset name)."""
    spec = get_preset(model)
    chip = size_for_model("hc1", spec, HC1_PLAN)
    cm = CostModel(get_cost("default"))
    hc1 = SiliconModel(chip).evaluate(spec, HC1_PLAN, n_prompt, n_generated)
    gpu = {g: GpuModel(g).evaluate(spec, n_prompt, n_generated) for g in GPU_PRESETS}
    return SimpleNamespace(spec=spec, chip=chip, hc1=hc1, hc1_cost=cm.chip(chip, hc1.aggregate_tok_s, hc1.power_w),
                           gpu=gpu, gpu_cost={g: cm.gpu(get_gpu(g), r.aggregate_tok_s) for g, r in gpu.items()})


def predict(fig: Figure, w: SimpleNamespace | None = None) -> float:
    """hcemu's value for the figure's setting (``fig.model``); w: a :func:`workload` to reuse."""
    kind, *rest = fig.model
    if kind == "trt":
        model, gpu, prec, isl, osl = rest
        m = GpuModel(gpu_at_precision(gpu, prec), "trtllm")
        return float(m.saturated_throughput(get_preset(model), isl, osl)["output_tok_s"])
    w = workload() if w is None else w
    if kind == "chip":
        what = rest[0]
        if what == "cents_per_mtok":
            return float(w.hc1_cost.cents_per_mtok)
        if what == "kv_sram_bytes":
            return float(w.chip.kv_sram_bytes)
        return float(getattr(w.hc1, what))
    if kind == "kv_bytes_per_token":
        return float(kv_bytes_per_token(w.spec, HC1_PLAN))
    if kind == "gpu1":
        return float(w.gpu[rest[0]].per_user_tok_s)
    if kind == "gpucost":
        return float(w.gpu_cost[rest[0]].cents_per_mtok)
    raise ValueError(f"unknown figure model {fig.model!r}")


@dataclass(frozen=True)
class FigureCheck:
    """One figure against hcemu: ``error`` relative (0 inside a range); ``parameters`` the ``preset.field``
    names calibrated to it (empty: held out)."""

    figure: Figure
    modeled: float
    error: float
    parameters: tuple[str, ...]

    @property
    def key(self) -> str:
        return self.figure.key

    @property
    def role(self) -> str:
        return "calibration" if self.parameters else "held out"

    @property
    def band(self) -> float | None:
        """The band the error is held to: the figure's, or :data:`PIN_BAND` for a calibration target."""
        return self.figure.band if self.figure.band is not None or not self.parameters else PIN_BAND

    @property
    def within_band(self) -> bool:
        return self.band is None or abs(self.error) <= self.band


def figure_checks(figures=FIGURES) -> list[FigureCheck]:
    """Every figure predicted (one :func:`workload` shared by all), in registry order."""
    w, params = workload(), calibrated_parameters()
    checks = []
    for f in figures:
        v = predict(f, w)
        checks.append(FigureCheck(f, v, f.error(v), params[f.key]))
    return checks


def validation_rows(checks: list[FigureCheck] | None = None) -> list[dict]:
    """One row per figure: figure, kind, source, use (``calibrated: preset.field, ...`` or ``held out``),
    published, hcemu, unit, error (relative; 0 inside a published range), band."""
    checks = figure_checks() if checks is None else checks
    return [{"figure": c.figure.name, "kind": c.figure.kind, "source": c.figure.source,
             "use": "calibrated: " + ", ".join(_grouped(c.parameters)) if c.parameters else "held out",
             "published": c.figure.value, "hcemu": c.modeled, "unit": c.figure.unit, "error": c.error,
             "band": c.band} for c in checks]


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


def summary_lines(summary: dict[str, dict]) -> list[str]:
    return [f"{k}: {s['n']} figures, mean |error| {s['mean_abs_error']:.1%}, max {s['max_abs_error']:.1%}"
            for k, s in summary.items()]


def _grouped(parameters) -> list[str]:
    """``preset.field`` names with one field of several presets written once: ``b200/h200/h100.field``."""
    by_field: dict[str, list[str]] = {}
    for p in parameters:
        preset, field = p.split(".", 1)
        by_field.setdefault(field, []).append(preset)
    return ["/".join(presets) + "." + field for field, presets in by_field.items()]


# ----------------------------------------------------------------------------------------------
# Markdown: the figures table and the parameter tables, and the generated blocks of the docs

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_figure(v: float, unit: str) -> str:
    """A figure's value for tables: billions of transistors, MB of bytes, cents with two decimals."""
    if unit == "transistors":
        return f"{v / 1e9:.1f} B"
    if unit == "bytes":
        return f"{v / 1e6:.0f} MB" if v >= 1e6 else f"{v:,.0f}"
    if unit == "c/Mtok":
        return f"{v:.2f}"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def figures_markdown(checks: list[FigureCheck], summary: bool = False) -> str:
    """The figures table (figure, kind, use, published, hcemu, error, band, [source]), with summary: the
    :func:`error_summary` lines under it, then the sources (``hcemu validate --markdown`` prints this)."""
    rows = validation_rows(checks)
    sources = list(dict.fromkeys(r["source"] for r in rows))
    lines = ["| figure | kind | use | published | hcemu | error | band | source |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for c, r in zip(checks, rows):
        f = c.figure
        name = f.name + (f" — {f.note}" if f.note else "")
        err = "0 (inside)" if c.error == 0 and f.low < f.high else f"{c.error:+.1%}"
        band = "-" if c.band is None else f"±{c.band:.0%}"
        lines.append(f"| {_cell(name)} | {_cell(f.kind)} | {_cell(r['use'])} | {_cell(f.stated)} "
                     f"| {fmt_figure(c.modeled, f.unit)} | {err} | {band} | [{sources.index(f.source) + 1}] |")
    if summary:
        lines += [""] + summary_lines(error_summary(rows))
    lines.append("")
    lines += [f"[{i}] {_cell(s)}" for i, s in enumerate(sources, 1)]
    return "\n".join(lines)


def _kind_cell(src) -> str:
    if src.kind != "calibrated":
        return src.kind
    return "**calibrated** to " + ", ".join(f"`{t}`" for t in src.targets)


def _params_table(names: list[str], table=SOURCES) -> str:
    """Markdown table of presets' parameters: one value column per preset, kind and source text (``table``:
    one of :data:`SOURCE_TABLES`)."""
    srcs = [table[n] for n in names]
    lines = ["| field | " + " | ".join(names) + " | kind | source |",
             "|---|" + "---|" * len(names) + "---|---|"]
    for field in srcs[0]:
        per = [s[field] for s in srcs]
        values = " | ".join(_cell(format_value(s.value)) for s in per)
        kinds = {_kind_cell(s) for s in per}
        kind = kinds.pop() if len(kinds) == 1 else "; ".join(f"{n}: {_kind_cell(s)}" for n, s in zip(names, per))
        texts = {s.text for s in per}
        text = texts.pop() if len(texts) == 1 else "; ".join(f"{n}: {s.text}" for n, s in zip(names, per))
        lines.append(f"| {field} | {values} | {kind} | {_cell(text)} |")
    return "\n".join(lines)


def generated_blocks(checks: list[FigureCheck] | None = None) -> dict[str, str]:
    """Name -> markdown of every generated block (docs/perf.md: ``params-hc1``, ``params-gpu``,
    ``params-cost``, ``params-links``, ``params-tp``, ``figures``; docs/serving.md: ``validate``;
    docs/economics.md: ``params-economics``)."""
    checks = figure_checks() if checks is None else checks
    presets8b = [c for c in checks if c.figure.model[0] != "trt"]
    params = _grouped(sorted({p for c in checks for p in c.parameters}))
    calibrated = (f"{len(params)} parameters are calibrated (a GPU parameter is one value shared by the GPU "
                  "presets): " + ", ".join(f"`{p}`" for p in params) + ".")
    return {"params-hc1": _params_table(sorted(CHIP_PRESETS)),
            "params-gpu": _params_table(list(GPU_PRESETS)),
            "params-cost": _params_table(sorted(COST_PRESETS)),
            "params-economics": _params_table(sorted(ECONOMICS_SOURCES), ECONOMICS_SOURCES),
            "params-links": _params_table(sorted(LINK_PRESETS), LINK_SOURCES),
            "params-tp": _params_table(sorted(TP_PRESETS), LINK_SOURCES),
            "figures": figures_markdown(presets8b) + "\n\n" + calibrated,
            "validate": figures_markdown(checks, summary=True)}


_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) [^>]*-->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                    re.DOTALL)


def update_markdown(text: str, blocks: dict[str, str] | None = None) -> str:
    """``text`` with the body of every ``<!-- generated: NAME ... -->`` ... ``<!-- end generated: NAME -->``
    block replaced by the generated markdown; ValueError naming a block name that is not generated or a
    block that does not close."""
    blocks = generated_blocks() if blocks is None else blocks
    found = [m.group("name") for m in _BLOCK.finditer(text)]
    opened = re.findall(r"<!-- generated: ([\w-]+) ", text)
    unknown = sorted(set(found) - set(blocks))
    if unknown or len(opened) != len(found):
        raise ValueError(f"generated blocks: unknown {unknown}, unclosed "
                         f"{sorted(set(opened) - set(found)) or opened}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + "\n" + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hcemu.perf.validation",
                                description="the generated tables of the docs")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print every generated block")
    g.add_argument("--update", metavar="FILE.md", nargs="+", help="rewrite the generated blocks of FILE.md in place")
    g.add_argument("--check", metavar="FILE.md", nargs="+", help="exit 1 when a file's generated blocks are stale")
    args = p.parse_args(argv)
    blocks = generated_blocks()
    if args.markdown:
        for name, body in blocks.items():
            print(f"<!-- {name} -->\n{body}\n")
        return 0
    stale = []
    for path in args.update or args.check:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = update_markdown(text, blocks)
        if new != text:
            stale.append(path)
            if args.update:
                with atomic_write(path, "w") as f:
                    f.write(new)
    if args.check and stale:
        print(f"stale generated tables in {', '.join(stale)}: python -m hcemu.perf.validation --update "
              f"{' '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
