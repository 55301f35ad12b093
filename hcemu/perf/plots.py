"""Plots of the models (matplotlib, optional extra ``plot``); every figure is written atomically as PNG.

The chip in every plot is ``chip``'s technology sized for the plotted model
(:func:`hcemu.perf.sizing.size_for_model`), the chip ``hcemu compare``'s table prices.

* :func:`plot_context` — tokens/s per user vs context length, chip and GPUs;
* :func:`plot_cost_volume` — chip cost per Mtok vs cards built per model, GPU levels, break-even;
* :func:`plot_compensation` — KLD against the float reference vs SRAM bytes of a low-rank
  compensation adapter, per plan (rows of :func:`hcemu.chip.evaluate.compensation_study`);
* :func:`plot_roofline` — each GPU's roofline with its batch-1 and serving operating points, and the
  chip's (its ROM read bandwidth and CIM peak as the roof);
* :func:`plot_system_sweep` — a model split over dies: tok/s per user, aggregate and cost per Mtok vs the
  ROM per die, one line per link bandwidth (:func:`hcemu.perf.system.system_sweep`).
"""
from __future__ import annotations

import os

import numpy as np

from hcemu._io import atomic_write
from hcemu.model.spec import ModelSpec
from hcemu.perf.analytic import decode_positions, events_from_shapes
from hcemu.perf.area import expert_lanes, head_lane_scale
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel, GpuWork
from hcemu.perf.silicon import SiliconModel, decode_sweep
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import GPU_PRESETS, HC1_PLAN, get_cost, get_gpu


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'hcemu[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> str:
    path = os.fspath(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_context(path, spec: ModelSpec, *, chip="hc1", plan=HC1_PLAN, gpus=tuple(GPU_PRESETS),
                 contexts=None) -> str:
    plt = _pyplot()
    ctx = np.asarray(contexts if contexts is not None else 2 ** np.arange(7, 17), dtype=np.float64)
    ctx = ctx[2 * ctx <= spec.max_context + 1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    chip = size_for_model(chip, spec, plan)
    sw = decode_sweep(spec, plan, chip, ctx, ctx)
    line, = ax.plot(ctx, sw["per_user_tok_s"], "o-", label=f"{chip.name} (modeled)")
    over = sw["users"] < 1
    if over.any():
        ax.plot(ctx[over], sw["per_user_tok_s"][over], "o", mfc="white", color=line.get_color(),
                label=f"{chip.name}: one user's KV exceeds its SRAM")
    for g in gpus:
        m = GpuModel(g)
        tps = [1.0 / float(m.step_seconds(spec, 1, decode_positions(int(c), int(c)) + 1.0).mean()) for c in ctx]
        ax.plot(ctx, tps, "s--", label=f"{g} batch 1 (roofline)")
    ax.set(xscale="log", yscale="log", xlabel="context: prompt tokens = generated tokens",
           ylabel="decode tokens/s per user", title=f"{spec.name}: per-user speed vs context")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_cost_volume(path, spec: ModelSpec, n_prompt: int, n_generated: int, *, chip="hc1", plan=HC1_PLAN,
                     gpus=tuple(GPU_PRESETS), cost="default") -> str:
    plt = _pyplot()
    chip = size_for_model(chip, spec, plan)
    cm = CostModel(get_cost(cost))
    si = SiliconModel(chip).evaluate(spec, plan, n_prompt, n_generated)
    if si.aggregate_tok_s <= 0:
        raise ValueError(f"{chip.name} cannot hold one user's KV at {n_prompt + n_generated - 1} tokens: no cost")
    units = np.logspace(1, 6, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(units, cm.chip_cost_vs_units(chip, si.aggregate_tok_s, si.power_w, units), "-", lw=2,
            label=f"{chip.name} (NRE ${cm.cost.nre_usd / 1e6:.0f} M over units)")
    for i, g in enumerate(gpus):
        gs = get_gpu(g)
        c = cm.gpu(gs, GpuModel(gs).evaluate(spec, n_prompt, n_generated).aggregate_tok_s).cents_per_mtok
        line = ax.axhline(c, ls="--", color=f"C{i + 1}", label=f"{g}: {c:.2f} c/Mtok")
        be = cm.break_even_units(chip, si.aggregate_tok_s, si.power_w, c)
        if np.isfinite(be) and units[0] <= be <= units[-1]:
            ax.plot([be], [c], "o", color=line.get_color())
            ax.annotate(f"break-even {be:,.0f}", (be, c), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="cards built per model", ylabel="cents per million tokens",
           title=f"{spec.name} {n_prompt}/{n_generated}: cost vs deployment volume")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roofline(path, spec: ModelSpec, n_prompt: int, n_generated: int, *, chip="hc1", plan=HC1_PLAN,
                  gpus=tuple(GPU_PRESETS)) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ai = np.logspace(-1, 4, 200)
    keys = float(np.mean(decode_positions(n_prompt, n_generated) + 1.0))
    for g in gpus:
        m = GpuModel(g)
        gs = m.gpu
        peak = gs.peak_tflops(gs.weight_dtype) * 1e12
        bw = gs.mem_bandwidth_tb_s * 1e12
        line, = ax.plot(ai, np.minimum(peak, ai * bw), "-", label=f"{g} roof ({gs.weight_dtype})")
        w = GpuWork.of(spec, gs)
        for b, mk in ((1, "o"), (m.max_batch(spec, n_prompt + n_generated - 1), "^")):
            t = float(m.step_seconds(spec, b, keys))
            ax.plot([m.arithmetic_intensity(spec, b, keys)], [b * (w.flops + keys * w.flops_per_key) / t], mk,
                    color=line.get_color())
    chip = size_for_model(chip, spec, plan)
    si = SiliconModel(chip).evaluate(spec, plan, n_prompt, n_generated)
    hz = chip.clock_ghz * 1e9
    regions = spec.n_layers + head_lane_scale(spec, plan, chip) + expert_lanes(spec, chip)
    peak = 2 * chip.cim_macs_per_cycle_w4 * regions * hz
    bw = chip.rom_read_bits_per_cycle / 8 * regions * hz
    line, = ax.plot(ai, np.minimum(peak, ai * bw), "-", lw=2, label=f"{chip.name} roof (ROM read, CIM)")
    flops = 2.0 * spec.n_active_params
    step = events_from_shapes(spec, plan, positions=[n_prompt])   # ROM bytes one decode step reads
    rom_bytes = (step.rom_code_bits + step.rom_meta_bits) / 8
    for n, mk in ((1, "o"), (si.users, "^")):
        tps = min(n * si.per_user_tok_s, si.aggregate_tok_s) if n > 1 else si.per_user_tok_s
        ax.plot([flops / rom_bytes], [flops * tps], mk, ms=9, color=line.get_color())
    ax.plot([], [], "ko", label="batch 1 / one user")
    ax.plot([], [], "k^", label="serving point")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP per weight/KV byte)",
           ylabel="FLOP/s", title=f"{spec.name} decode: roofline and operating points")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_system_sweep(path, spec: ModelSpec, *, plan=HC1_PLAN, sweep: dict | None = None, **kw) -> str:
    """tok/s per user, aggregate tok/s and cents per Mtok of ``spec`` split over dies vs the largest die's
    ROM (Gbit), one line per link bandwidth; hollow markers where the largest die exceeds the reticle.
    ``sweep``: a :func:`hcemu.perf.system.system_sweep` result (computed with ``kw`` if not given)."""
    from hcemu.perf.system import RETICLE_MM2, system_sweep

    sw = sweep if sweep is not None else system_sweep(spec, plan, **kw)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    x, big = sw["die_rom_gbit"], sw["largest_die_mm2"] > RETICLE_MM2
    panels = (("per_user_tok_s", "tok/s per user"), ("aggregate_tok_s", "aggregate tok/s (users pipelined)"),
              ("cost_cents_per_mtok", "cents per Mtok"))
    for ax, (key, label) in zip(axes, panels):
        for j, bw in enumerate(sw["bandwidth_gb_s"]):
            y = sw[key][:, j]
            line, = ax.plot(x, y, "-", label=f"link {bw:g} GB/s")
            ax.plot(x[~big], y[~big], "o", color=line.get_color(), ms=4)
            ax.plot(x[big], y[big], "o", mfc="none", color=line.get_color(), ms=6)
        ax.set(xscale="log", xlabel="ROM of the largest die (Gbit)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    top = axes[0]
    for xi, n in zip(x, sw["n_dies"]):
        top.annotate(f"{n}", (xi, top.get_ylim()[0]), textcoords="offset points", xytext=(0, 3), ha="center",
                     fontsize=7, color="gray")
    axes[0].plot([], [], "o", mfc="none", color="k", label=f"largest die > {RETICLE_MM2:.0f} mm2 reticle")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{spec.name} ({plan.name}) over N dies (gray: N), balanced by ROM bits: where speed and cost turn")
    return _save(fig, path)


def plot_all(stem, spec: ModelSpec, n_prompt: int, n_generated: int, **kw) -> list[str]:
    """Write ``STEM.png`` (context) and, for a model one reference die holds, ``STEM-cost.png`` and
    ``STEM-roofline.png``; for a larger model (one chip cannot serve it, nor may one GPU), the system
    sweep ``STEM-system.png`` (:func:`plot_system_sweep`) instead of those two."""
    from hcemu.perf.system import SystemModel

    base = os.fspath(stem)
    root = base[:-4] if base.lower().endswith(".png") else base
    plan = kw.get("plan", HC1_PLAN)
    context = plot_context(root + ".png", spec, **{k: v for k, v in kw.items() if k in ("chip", "plan", "gpus")})
    if SystemModel(kw.get("chip", "hc1")).partition(spec, plan).n_dies > 1:
        return [context, plot_system_sweep(root + "-system.png", spec, plan=plan, chip=kw.get("chip", "hc1"),
                                           n_prompt=n_prompt, n_generated=n_generated, cost=kw.get("cost", "default"))]
    return [context,
            plot_cost_volume(root + "-cost.png", spec, n_prompt, n_generated, **kw),
            plot_roofline(root + "-roofline.png", spec, n_prompt, n_generated,
                          **{k: v for k, v in kw.items() if k in ("chip", "plan", "gpus")})]


def plot_compensation(rows, path) -> str:
    """KLD (mean, nats) and top-1 agreement vs the compensation adapter's SRAM MiB, one line per
    (plan, method), ranks labelled; ``rows`` as :func:`hcemu.chip.evaluate.compensation_study` returns."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = {}
    for r in rows:
        groups.setdefault((r["plan"], r["method"]), []).append(r)
    for (plan, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["rank"])
        mib = [r["sram_bytes"] / 2**20 for r in rs]
        line, = ax.plot(mib, [r["kld_mean"] for r in rs], marker="o", label=f"{plan} ({method})")
        ax2.plot(mib, [100 * r["same_top1"] for r in rs], marker="o", color=line.get_color())
        for x, r in zip(mib, rs):
            ax.annotate(f"r{r['rank']}", (x, r["kld_mean"]), textcoords="offset points", xytext=(3, 4), fontsize=8)
    ax.set_xlabel("compensation adapter SRAM (MiB)")
    ax.set_ylabel("mean KLD vs float reference (nats)")
    ax.set_title("Low-rank compensation of the ROM quantization error")
    ax.legend(fontsize=8)
    ax2.set_xlabel("compensation adapter SRAM (MiB)")
    ax2.set_ylabel("top-1 agreement with float reference (%)")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    return _save(fig, path)


def plot_economics(path, chip, gpus, econ, demand_tok_s: float) -> str:
    """Left: hard-coded cards needed to break even vs model lifetime, per GPU. Right: lifetime cost per
    Mtok vs model lifetime at ``demand_tok_s``, chip (GPU-bridged) and GPUs, with the crossover marked.
    chip, gpus: :class:`hcemu.perf.economics.System`; econ: :class:`hcemu.perf.economics.Economics`."""
    plt = _pyplot()
    L = np.linspace(0.1, 5.0, 120)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for g in gpus:
        a.plot(L, econ.break_even_cards(chip, g, L), label=f"{chip.name} vs {g.name}")
        line, = b.plot(L, econ.lifetime_cents_per_mtok(g, demand_tok_s, L), "--", label=g.name)
        w = econ.gpu_wins_below_years(chip, g, demand_tok_s)
        if 0 < w < L[-1]:
            b.axvline(w, color=line.get_color(), ls=":", alpha=0.7)
    b.plot(L, econ.lifetime_cents_per_mtok(chip, demand_tok_s, L, gpus[0] if gpus else None), "k-",
           label=f"{chip.name} (NRE, cards scrapped with the model)")
    a.set(yscale="log", xlabel="model lifetime (years)", ylabel="cards deployed to break even",
          title="Break-even volume vs model lifetime")
    b.set(yscale="log", xlabel="model lifetime (years)", ylabel="cents per Mtok over the life",
          title=f"Lifetime cost at {demand_tok_s:,.0f} tok/s (dotted: GPUs win below)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
