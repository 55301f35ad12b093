"""hcemu compare: rows, JSON/CSV, the host row, the figures for run/demo, and the plots."""
import csv
import importlib.util
import io
import json
from types import SimpleNamespace

import pytest

from hcemu.cli import main
from hcemu.formats import get_plan
from hcemu.model.spec import get_preset
from hcemu.report import ROW_KEYS, chip_figures_for_image, compare_rows, host_row, silicon_figures
from hcemu.perf.specs import HC1_PLAN

HAVE_CIM = importlib.util.find_spec("hcemu.kernels.cim") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
REQUIRED = {"system", "per_user_tok_s", "aggregate_tok_s", "latency_ms_per_token", "energy_mj_per_token",
            "power_w", "area_mm2", "cost_cents_per_mtok"}


def test_compare_json_has_one_row_per_system(capsys):
    assert main(["compare", "--model", "llama-3.1-8b", "--context", "1024", "--json", "--no-host"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [r["system"] for r in rows] == ["hc1", "b200", "h200", "h100"]
    for r in rows:
        assert REQUIRED <= set(r) and set(r) == set(ROW_KEYS)
        assert r["per_user_tok_s"] > 0 and r["cost_cents_per_mtok"] > 0
    assert rows[0]["area_mm2"] > 0 and all(r["area_mm2"] is None for r in rows[1:])
    assert rows[0]["per_user_tok_s"] > 40 * rows[1]["per_user_tok_s"]


def test_compare_csv_header_and_rows(capsys):
    assert main(["compare", "--csv", "--no-host", "--context", "512"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert set(rows[0]) == set(ROW_KEYS) and len(rows) == 4
    assert float(rows[0]["latency_ms_per_token"]) < float(rows[1]["latency_ms_per_token"])


def test_compare_text_and_bad_arguments(capsys):
    assert main(["compare", "--no-host"]) == 0
    assert "hc1" in capsys.readouterr().out
    assert main(["compare", "--context", "0", "--no-host"]) == 1
    assert "--context" in capsys.readouterr().err
    assert main(["compare", "--model", "gpt-9", "--no-host"]) == 1
    assert "unknown model preset" in capsys.readouterr().err


def test_chip_row_when_kv_does_not_fit():
    rows = compare_rows("llama-3.1-8b", 8192, 8192, host=False)
    assert rows[0]["concurrent_users"] == 0 and rows[0]["cost_cents_per_mtok"] is None
    assert "exceeds" in rows[0]["note"] and "never breaks even" in rows[1]["note"]


@pytest.mark.skipif(HAVE_CIM, reason="hcemu.kernels.cim is importable: the measured row is tested instead")
def test_host_row_says_why_without_kernels():
    row = host_row(get_preset("smollm2-135m"), get_plan("int4"))
    assert row["system"] == "host" and row["per_user_tok_s"] is None
    assert "hcemu.kernels.cim" in row["note"]


@pytest.mark.skipif(not HAVE_CIM, reason="hcemu.kernels.cim (the CIM kernels) is not in this build yet")
def test_host_row_is_measured():
    row = host_row(get_preset("smollm2-135m"), get_plan("int4"), n_layers_timed=2)
    assert row["per_user_tok_s"] > 0 and "timed 2 of 30 layers" in row["note"]


def test_figures_for_run_and_demo():
    image = SimpleNamespace(spec=get_preset("smollm2-135m"), plan=get_plan("int4"))
    fig = chip_figures_for_image(image, 12, 20, None)
    for k in ("chip", "per_user_tok_s", "latency_us_per_token", "energy_mj_per_token", "power_w", "area_mm2"):
        assert k in fig
    assert fig["n_prompt"] == 12 and fig["n_generated"] == 20
    at_ctx = chip_figures_for_image(image, 12, 20, 256)
    assert at_ctx["per_user_tok_s"] < fig["per_user_tok_s"]
    # counted events are priced as given
    from hcemu.perf.analytic import decode_positions, events_from_shapes
    spec = get_preset("llama-3.1-8b")
    ev = (events_from_shapes(spec, HC1_PLAN, 100, 0),
          events_from_shapes(spec, HC1_PLAN, positions=decode_positions(100, 50)))
    counted = silicon_figures(spec, HC1_PLAN, 100, 50, events=ev)
    modeled = silicon_figures(spec, HC1_PLAN, 100, 50)
    assert counted.pop("events") == "counted" and modeled.pop("events") == "analytical"
    assert counted == modeled
    llama = SimpleNamespace(spec=spec, plan=HC1_PLAN)
    assert chip_figures_for_image(llama, 100, 50, events=ev)["events"] == "counted"
    # events that do not match the run's length, or a run without a decode step: analytical
    assert chip_figures_for_image(llama, 100, 51, events=ev)["events"] == "analytical"
    assert chip_figures_for_image(llama, 100, 1)["n_generated"] == 2
    assert chip_figures_for_image(llama, 100, 50, 8192)["energy_mj_per_token"] is None


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (extra 'plot') not installed")
def test_plots_write_pngs(tmp_path, capsys):
    assert main(["compare", "--no-host", "--csv", "--plot", str(tmp_path / "cmp.png")]) == 0
    for name in ("cmp.png", "cmp-cost.png", "cmp-roofline.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temporaries left


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (extra 'plot') not installed")
def test_plots_show_the_chip_the_table_prices(monkeypatch, capsys):
    """compare --plot draws the chip compare's table prices: the preset sized for the model."""
    import matplotlib.pyplot as plt

    import hcemu.perf.plots as plots
    from hcemu.perf.cost import CostModel
    from hcemu.perf.sizing import size_for_model

    figs = []

    def keep(fig, path):
        figs.append(fig)
        return str(path)

    monkeypatch.setattr(plots, "_save", keep)
    spec, plan = get_preset("smollm2-135m"), get_plan("int4")
    assert main(["compare", "--model", spec.name, "--context", "1024", "--json", "--no-host", "--plot", "p.png"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    chip = size_for_model("hc1", spec, plan)
    assert row["system"] == chip.name == "hc1/smollm2-135m"
    context, cost, roofline = (f.axes[0] for f in figs)
    ctx, tps = context.lines[0].get_data()
    assert context.lines[0].get_label() == f"{chip.name} (modeled)"
    assert tps[list(ctx).index(1024)] == pytest.approx(row["per_user_tok_s"], rel=1e-12)
    units, cents = cost.lines[0].get_data()
    expect = CostModel().chip_cost_vs_units(chip, row["aggregate_tok_s"], row["power_w"], units)
    assert cents == pytest.approx(expect, rel=1e-12)
    serving = roofline.lines[-3].get_ydata()[0]  # the chip's serving point: FLOP/s at the aggregate tok/s
    assert serving == pytest.approx(2.0 * spec.n_params * row["aggregate_tok_s"], rel=1e-12)
    for f in figs:
        plt.close(f)


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (extra 'plot') not installed")
def test_failed_plot_leaves_no_file(tmp_path):
    from hcemu.perf.plots import plot_cost_volume

    with pytest.raises(ValueError, match="KV"):
        plot_cost_volume(tmp_path / "c.png", get_preset("llama-3.1-8b"), 8192, 8192)
    assert not list(tmp_path.iterdir())


def test_models_that_do_not_fit_a_gpu_run_tensor_parallel():
    rows = {r["system"]: r for r in compare_rows("llama-3.1-70b", 1024, 1024, host=False)}
    assert rows["h100 x4"]["per_user_tok_s"] > 0 and "tensor parallel" in rows["h100 x4"]["note"]
    assert rows["b200"]["per_user_tok_s"] > 0  # 141 GB of BF16 weights fit in 180 GB
    big = get_preset("llama-3.1-70b").__class__(**{**get_preset("llama-3.1-70b").to_dict(), "name": "huge",
                                                    "n_layers": 800, "rope_scaling": None})
    rows = {r["system"]: r for r in compare_rows(big, 1024, 1024, host=False, chips=None)}
    assert rows["h100"]["per_user_tok_s"] is None and "does not fit in 8 x" in rows["h100"]["note"]


def test_default_plan_follows_the_model_widths():
    from hcemu.perf.specs import default_plan

    assert default_plan(get_preset("llama-3.1-8b")) is HC1_PLAN
    assert default_plan(get_preset("smollm2-135m")).name == "int4"  # 576 is not a multiple of 128
