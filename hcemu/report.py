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
from hcemu.perf.deploy import gpu_at_precision
from hcemu.perf.gpu import GpuModel
from hcemu.perf.multigpu import cheapest_tensor_parallel
from hcemu.perf.silicon import SiliconModel
from hcemu.perf.sizing import size_for_model
from hcemu.perf.specs import GPU_PRESETS, HC1_PLAN, get_chip, get_cost, get_gpu
from hcemu.perf.system import DEFAULT_LINK, RETICLE_MM2, SystemModel

ROW_KEYS = ("system", "kind", "chips", "per_user_tok_s", "aggregate_tok_s", "concurrent_users", "latency_ms_per_token",
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
                 host_threads: int = 1, gpu_precision="bf16", gpu_kv_precision=None, chips="auto", link=None,
                 link_format="fp32", adapters=(), resident_adapters: int = 1, expert_parallel: int = 1) -> list[dict]:
    """One row per system: the chip (modeled, its technology sized for ``spec`` by
    :func:`hcemu.perf.sizing.size_for_model`), the multi-chip system where the model needs several dies
    (``chips``: ``"auto"`` = the fewest dies within the reference die's ROM, an integer, or None: no
    system row; ``link``/``link_format``: its links, :mod:`hcemu.perf.system`), each GPU (roofline) serving
    at ``gpu_precision`` (weights; KV at ``gpu_kv_precision`` when given, see
    :func:`hcemu.perf.deploy.gpu_at_precision`; a GPU without tensor cores for it gets a row that says so;
    tensor-parallel over 2-8 GPUs, the cheapest degree, where one GPU does not hold the model), and the
    host emulator (measured).

    adapters: a :class:`~hcemu.perf.analytic.LoraShape` (or several): adds a row for the same chip with
    ``resident_adapters`` such LoRA adapters in SRAM, every request applying one (SRAM mm2, W, tok/s).
    expert_parallel: the system row's expert parallelism (:class:`hcemu.perf.system.SystemModel`)."""
    spec = get_preset(spec) if isinstance(spec, str) else spec
    base_chip = chip
    chip = size_for_model(chip, spec, plan)
    cm = CostModel(get_cost(cost))
    si = SiliconModel(chip).evaluate(spec, plan, n_prompt, n_generated)
    fits = si.users > 0
    ccost = cm.chip(chip, si.aggregate_tok_s, si.power_w) if fits else None
    note = (f"plan {plan.name}; {si.users} users pipelined (KV SRAM holds {si.users_kv_limit})" if fits else
            f"plan {plan.name}; one user's KV at {n_prompt + n_generated - 1} tokens exceeds the "
            f"{chip.kv_sram_bytes / 2**20:.0f} MiB KV SRAM (or the power limit): per-user speed only")
    if si.area_mm2 > RETICLE_MM2:
        note += (f"; one die of {si.area_mm2:,.0f} mm2 exceeds the {RETICLE_MM2:.0f} mm2 reticle: not makeable as "
                 f"one die")
    rows = [_row(system=chip.name, kind="hard-coded chip (modeled)", chips=1, per_user_tok_s=si.per_user_tok_s,
                 aggregate_tok_s=si.aggregate_tok_s, concurrent_users=si.users,
                 latency_ms_per_token=si.latency_s_per_token * 1e3,
                 energy_mj_per_token=si.energy_j_per_token * 1e3 if fits else None,
                 power_w=si.power_w, area_mm2=si.area_mm2,
                 cost_cents_per_mtok=ccost.cents_per_mtok if fits else None, note=note)]
    if adapters:
        rows.append(_adapter_row(spec, plan, chip, cm, n_prompt, n_generated, si, adapters, resident_adapters))
    if chips is not None:
        row = system_row(spec, plan, n_prompt, n_generated, chip=base_chip, chips=chips, link=link,
                         link_format=link_format, cost=cost, expert_parallel=expert_parallel)
        if row is not None:
            rows.append(row)
    for name in gpus:
        try:
            g = gpu_at_precision(name, gpu_precision, gpu_kv_precision)
        except ValueError as exc:
            rows.append(_row(system=get_gpu(name).name, kind="GPU (roofline)", note=str(exc)))
            continue
        gm = GpuModel(g)
        if gm.max_batch(spec, n_prompt + n_generated - 1) < 1:   # one GPU does not hold it: tensor parallel
            rows.append(tensor_parallel_row(spec, g, n_prompt, n_generated, cost))
            continue
        gr = gm.evaluate(spec, n_prompt, n_generated)
        gc = cm.gpu(g, gr.aggregate_tok_s)
        be = cm.break_even_units(chip, si.aggregate_tok_s, si.power_w, gc.cents_per_mtok) if fits else math.inf
        tp_note = ""
        if gr.serving_batch < g.max_batch:   # memory-bound batch: would several GPUs serve it more cheaply?
            best = cheapest_tensor_parallel(spec, g, n_prompt, n_generated, cost)
            if best is not None and best[0] > 1:
                tp_note = (f"; tensor parallel over {best[0]} GPUs would serve {best[1].serving_batch} users at "
                           f"{best[2]:.2f} c/Mtok")
        rows.append(_row(system=g.name, kind="GPU (roofline)", chips=1, per_user_tok_s=gr.per_user_tok_s,
                         aggregate_tok_s=gr.aggregate_tok_s, concurrent_users=gr.serving_batch,
                         latency_ms_per_token=gr.latency_s_per_token * 1e3,
                         energy_mj_per_token=gr.energy_j_per_token * 1e3, power_w=gr.power_w,
                         cost_cents_per_mtok=gc.cents_per_mtok,
                         note=f"{g.weight_dtype} weights; batch {gr.serving_batch} for aggregate and cost; "
                              + (f"{chip.name} never breaks even" if math.isinf(be) else
                                 f"{chip.name} breaks even above {math.ceil(be):,} cards per model") + tp_note))
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


def system_row(spec: ModelSpec, plan, n_prompt: int, n_generated: int, *, chip="hc1", chips="auto", link=None,
               link_format="fp32", cost="default", expert_parallel: int = 1) -> dict | None:
    """The row of the multi-chip system (:class:`hcemu.perf.system.SystemModel`): ``chips`` pipeline dies
    (``"auto"``: the fewest within the reference die's ROM), each one's experts over ``expert_parallel``
    dies; None when ``"auto"`` finds one die enough and there is no expert parallelism."""
    sm = SystemModel(chip, link or DEFAULT_LINK, link_format, expert_parallel=expert_parallel)
    part = sm.partition(spec, plan, None if chips == "auto" else int(chips))
    if chips == "auto" and part.n_dies == 1 and expert_parallel == 1:
        return None
    r = sm.evaluate(spec, plan, part, n_prompt, n_generated)
    fits = r.users > 0
    layers = sorted(set(part.layers_per_die))
    note = (f"plan {plan.name}; {r.n_dies} dies ({layers[0]}-{layers[-1]} layers each, largest "
            f"{r.largest_die_mm2:,.0f} mm2{' > reticle' if r.largest_die_mm2 > RETICLE_MM2 else ''}) over "
            f"{r.link} links in {r.link_format}: {r.link_bytes_per_token / (part.n_dies - 1) if part.n_dies > 1 else 0:,.0f} "
            f"bytes per hop, hops add {r.hops_s_per_token * 1e6:.1f} us/token; ")
    if r.expert_parallel > 1:
        note += (f"experts of each pipeline die over {r.expert_parallel} dies ({part.n_dies} pipeline dies): "
                 f"{r.expert_link_bytes_per_token:,} bytes per token of dispatch and combine, round trips add "
                 f"{r.expert_hops_s_per_token * 1e6:.1f} us/token; ")
    note += (f"{r.users} users pipelined (KV SRAM of the fullest die holds {r.users_kv_limit}, power "
             f"{r.users_power_limit})" if fits else "one user's KV does not fit a die's SRAM: per-user speed only")
    return _row(system=f"{r.chip} x{r.n_dies}", kind="hard-coded system (modeled)", chips=r.n_dies,
                per_user_tok_s=r.per_user_tok_s, aggregate_tok_s=r.aggregate_tok_s, concurrent_users=r.users,
                latency_ms_per_token=r.latency_s_per_token * 1e3,
                energy_mj_per_token=r.energy_j_per_token * 1e3 if fits else None, power_w=r.power_w,
                area_mm2=r.area_mm2, cost_cents_per_mtok=sm.cost(r, cost).cents_per_mtok if fits else None,
                note=note)


def tensor_parallel_row(spec: ModelSpec, gpu, n_prompt: int, n_generated: int, cost="default", best=None) -> dict:
    """The row of ``gpu`` when one does not hold ``spec``: the cheapest tensor-parallel degree that does
    (``best``, default :func:`hcemu.perf.multigpu.cheapest_tensor_parallel`), or a row saying no degree up
    to 8 holds it."""
    g = get_gpu(gpu)
    best = best or cheapest_tensor_parallel(spec, g, n_prompt, n_generated, cost)
    if best is None:
        return _row(system=g.name, kind="GPU (roofline)", power_w=g.power_w,
                    note=f"{spec.name} in {g.weight_dtype} plus one user's KV does not fit in 8 x "
                         f"{g.memory_gb:.0f} GB: needs more than one server (not modeled)")
    tp, gr, cents = best
    return _row(system=gr.gpu, kind="GPUs, tensor parallel (roofline)", chips=tp, per_user_tok_s=gr.per_user_tok_s,
                aggregate_tok_s=gr.aggregate_tok_s, concurrent_users=gr.serving_batch,
                latency_ms_per_token=gr.latency_s_per_token * 1e3, energy_mj_per_token=gr.energy_j_per_token * 1e3,
                power_w=gr.power_w, cost_cents_per_mtok=cents,
                note=f"{g.weight_dtype} weights over {tp} GPUs (tensor parallel, 2 all-reduces per layer on NVLink; "
                     f"the cheapest of the degrees 1-8 that hold the model); batch {gr.serving_batch} for aggregate "
                     f"and cost")


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
    cols = [("system", "system", "{}"), ("chips", "chips", "{}"), ("per_user_tok_s", "tok/s/user", "{:,.0f}"),
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
