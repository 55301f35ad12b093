"""Side-by-side figures: the hard-coded chip, the GPUs and the host emulator, as rows of one table.

Every row has the keys of :data:`ROW_KEYS`; a value a system does not have (a GPU's die area, the
host's cost) is ``None``.
"""
from __future__ import annotations

import csv
import io
import math

from hcemu.bench.host import HostUnavailable, measure_host_decode
from hcemu.model.spec import ModelSpec, get_preset
from hcemu.perf.cost import CostModel
from hcemu.perf.gpu import GpuModel
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import GPU_PRESETS, HC1_PLAN, get_chip, get_cost, get_gpu

ROW_KEYS = ("system", "kind", "per_user_tok_s", "aggregate_tok_s", "concurrent_users", "latency_ms_per_token",
            "energy_mj_per_token", "power_w", "area_mm2", "cost_cents_per_mtok", "note")


def _row(**kw) -> dict:
    row = {k: None for k in ROW_KEYS}
    unknown = set(kw) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"unknown report keys {sorted(unknown)}")
    row.update(kw)
    return row


def compare_rows(spec: ModelSpec | str, n_prompt: int, n_generated: int, *, chip="hc1", plan=HC1_PLAN,
                 gpus=tuple(GPU_PRESETS), cost="default", host: bool = True, host_layers: int = 1,
                 host_threads: int = 1, adapters=(), resident_adapters: int = 1) -> list[dict]:
    """One row per system: the chip (modeled, its technology sized for ``spec`` by
    :func:`hcemu.perf.sizing.size_for_model`), each GPU (roofline), and the host emulator (measured).

    adapters: a :class:`~hcemu.perf.analytic.LoraShape` (or several): adds a row for the same chip with
    ``resident_adapters`` such LoRA adapters in SRAM, every request applying one (SRAM mm2, W, tok/s)."""
    spec = get_preset(spec) if isinstance(spec, str) else spec
    chip = size_for_model(chip, spec, plan)
    cm = CostModel(get_cost(cost))
    si = SiliconModel(chip).evaluate(spec, plan, n_prompt, n_generated)
    fits = si.users > 0
    ccost = cm.chip(chip, si.aggregate_tok_s, si.power_w) if fits else None
    note = (f"plan {plan.name}; {si.users} users pipelined (KV SRAM holds {si.users_kv_limit})" if fits else
            f"plan {plan.name}; one user's KV at {n_prompt + n_generated - 1} tokens exceeds the "
            f"{chip.kv_sram_bytes / 2**20:.0f} MiB KV SRAM (or the power limit): per-user speed only")
    rows = [_row(system=chip.name, kind="hard-coded chip (modeled)", per_user_tok_s=si.per_user_tok_s,
                 aggregate_tok_s=si.aggregate_tok_s, concurrent_users=si.users,
                 latency_ms_per_token=si.latency_s_per_token * 1e3,
                 energy_mj_per_token=si.energy_j_per_token * 1e3 if fits else None,
                 power_w=si.power_w, area_mm2=si.area_mm2,
                 cost_cents_per_mtok=ccost.cents_per_mtok if fits else None, note=note)]
    if adapters:
        rows.append(_adapter_row(spec, plan, chip, cm, n_prompt, n_generated, si, adapters, resident_adapters))
    for name in gpus:
        g = get_gpu(name)
        gm = GpuModel(g)
        if gm.max_batch(spec, n_prompt + n_generated - 1) < 1:
            rows.append(_row(system=g.name, kind="GPU (roofline)", power_w=g.power_w,
                             note=f"{spec.name} in {g.weight_dtype} ({gm.weight_bytes(spec) / 1e9:.0f} GB) plus one "
                                  f"user's KV does not fit in {g.memory_gb:.0f} GB: needs several GPUs (not modeled)"))
            continue
        gr = gm.evaluate(spec, n_prompt, n_generated)
        gc = cm.gpu(g, gr.aggregate_tok_s)
        be = cm.break_even_units(chip, si.aggregate_tok_s, si.power_w, gc.cents_per_mtok) if fits else math.inf
        rows.append(_row(system=g.name, kind="GPU (roofline)", per_user_tok_s=gr.per_user_tok_s,
                         aggregate_tok_s=gr.aggregate_tok_s, concurrent_users=gr.serving_batch,
                         latency_ms_per_token=gr.latency_s_per_token * 1e3,
                         energy_mj_per_token=gr.energy_j_per_token * 1e3, power_w=gr.power_w,
                         cost_cents_per_mtok=gc.cents_per_mtok,
                         note=f"{g.weight_dtype} weights; batch {gr.serving_batch} for aggregate and cost; "
                              + (f"{chip.name} never breaks even" if math.isinf(be) else
                                 f"{chip.name} breaks even above {math.ceil(be):,} cards per model")))
    if host:
        rows.append(host_row(spec, plan, n_layers_timed=host_layers, n_threads=host_threads))
    return rows


def _adapter_row(spec, plan, chip, cm, n_prompt, n_generated, base, adapters, resident) -> dict:
    """The chip with ``resident`` LoRA adapters of the given shapes in SRAM, each request applying one."""
    from hcemu.perf.analytic import LoraShape

    shapes = (adapters,) if isinstance(adapters, LoraShape) else tuple(adapters)
    si = SiliconModel(chip).evaluate(spec, plan, n_prompt, n_generated, adapters=shapes, resident_adapters=resident)
    fits = si.users > 0
    desc = " + ".join(f"rank {a.rank} on {len(a.kinds)} matrices ({a.fmt})" for a in shapes)
    note = (f"{resident} LoRA adapter(s) of {desc} resident: {si.adapter_sram_bytes / 2**20:,.1f} MiB of SRAM "
            f"(+{si.sram_mm2 - base.sram_mm2:.1f} mm2, SRAM {si.sram_mm2:.1f} mm2 in all); every request applies one, "
            f"beside the ROM products: {si.per_user_tok_s / base.per_user_tok_s:.3f}x the tok/s per user, "
            f"{si.power_w - base.power_w:+.1f} W")
    ccost = cm.chip(chip, si.aggregate_tok_s, si.power_w) if fits else None
    return _row(system=f"{chip.name} + LoRA", kind="hard-coded chip + SRAM adapters (modeled)",
                per_user_tok_s=si.per_user_tok_s, aggregate_tok_s=si.aggregate_tok_s, concurrent_users=si.users,
                latency_ms_per_token=si.latency_s_per_token * 1e3,
                energy_mj_per_token=si.energy_j_per_token * 1e3 if fits else None, power_w=si.power_w,
                area_mm2=si.area_mm2, cost_cents_per_mtok=ccost.cents_per_mtok if fits else None, note=note)


def host_row(spec: ModelSpec, plan, *, n_layers_timed: int = 1, n_threads: int = 1) -> dict:
    """The emulator's decode tok/s measured here; a row saying why when the kernels are missing."""
    try:
        h = measure_host_decode(spec, plan, n_layers_timed=n_layers_timed, n_threads=n_threads)
    except HostUnavailable as exc:
        return _row(system="host", kind="emulator on this machine (measured)", note=str(exc))
    return _row(system="host", kind="emulator on this machine (measured)", per_user_tok_s=h.decode_tok_s,
                aggregate_tok_s=h.decode_tok_s, concurrent_users=1,
                latency_ms_per_token=h.seconds_per_token * 1e3, note=h.label)


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_KEYS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def rows_to_text(rows: list[dict]) -> str:
    cols = [("system", "system", "{}"), ("per_user_tok_s", "tok/s/user", "{:,.0f}"),
            ("aggregate_tok_s", "tok/s total", "{:,.0f}"), ("concurrent_users", "users", "{}"),
            ("latency_ms_per_token", "ms/token", "{:.4f}"), ("energy_mj_per_token", "mJ/token", "{:.3f}"),
            ("power_w", "W", "{:,.0f}"), ("area_mm2", "mm2", "{:,.0f}"), ("cost_cents_per_mtok", "c/Mtok", "{:.2f}")]
    table = [[h for _, h, _ in cols]]
    for r in rows:
        table.append(["-" if r[k] is None else f.format(r[k]) for k, _, f in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
    lines += [f"{r['system']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines)


def chip_figures_for_image(image, n_prompt: int, n_generated: int, context: int | None = None,
                           chip="hc1", events=None, adapter_sram_bytes: int = 0) -> dict:
    """Modeled figures of ``chip``'s technology, sized for the image's model (:func:`hcemu.perf.sizing.size_for_model`),
    hard-wiring the image's model and plan.

    image: anything with ``.spec`` (ModelSpec) and ``.plan`` (Plan). events: optional
    ``(prefill_events, decode_events)`` counted by the functional chip for this run; they are priced
    as counted when they hold at least one decode step and no ``context`` is asked. With ``context``,
    the workload is ``context`` prompt tokens and ``context`` generated (the 1k/1k setting at another
    length), generated analytically. Runs shorter than one decode step are modeled with one.
    """
    if context is not None:
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        return silicon_figures(image.spec, image.plan, int(context), max(int(context), 2), chip,
                               adapter_sram_bytes=adapter_sram_bytes)
    n_prompt, n_generated = max(int(n_prompt), 1), int(n_generated)
    if events is not None and n_generated >= 2 and events[1].counts[0, 0] == n_generated - 1:
        return silicon_figures(image.spec, image.plan, n_prompt, n_generated, chip, events=events,
                               adapter_sram_bytes=adapter_sram_bytes)
    return silicon_figures(image.spec, image.plan, n_prompt, max(n_generated, 2), chip,
                           adapter_sram_bytes=adapter_sram_bytes)


def silicon_figures(spec: ModelSpec, plan, n_prompt: int, n_generated: int, chip="hc1", events=None,
                    sized: bool = True, adapter_sram_bytes: int = 0) -> dict:
    """The chip figures ``hcemu run``/``demo`` print. With ``events=(prefill, decode)`` (counted by the
    functional chip) those are priced; otherwise the analytical generator supplies them. Figures that
    do not exist (energy per token when not even one user's KV fits) are ``None``.

    sized: price ``chip``'s technology sized for ``spec`` (:func:`hcemu.perf.sizing.size_for_model`: lanes, KV SRAM
    and leakage follow the model the chip hard-wires); False prices the preset's units as they are."""
    chip = get_chip(chip)
    if sized:
        chip = size_for_model(chip, spec, plan)
    model = SiliconModel(chip)
    si = (model.price(spec, plan, n_prompt, n_generated, *events, adapter_sram_bytes=adapter_sram_bytes)
          if events is not None else model.evaluate(spec, plan, n_prompt, n_generated))
    fits = si.users > 0
    return {"chip": chip.name, "sized_for_model": chip.sized_for_model, "model": spec.name, "plan": plan.name,
            "n_prompt": n_prompt,
            "n_generated": n_generated, "events": "counted" if events is not None else "analytical",
            "per_user_tok_s": si.per_user_tok_s,
            "latency_us_per_token": si.latency_s_per_token * 1e6, "prefill_ms": si.prefill_s * 1e3,
            "aggregate_tok_s": si.aggregate_tok_s, "concurrent_users": si.users,
            "energy_mj_per_token": si.energy_j_per_token * 1e3 if fits else None,
            "dynamic_energy_mj_per_token": si.dynamic_energy_j_per_token * 1e3, "power_w": si.power_w,
            "area_mm2": si.area_mm2, "transistors": si.transistors, "sram_mm2": si.sram_mm2,
            "adapter_sram_bytes": si.adapter_sram_bytes}
