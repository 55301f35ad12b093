"""Parameter sources, published figures, regression pins and validation, and the generated tables of
docs/perf.md and docs/serving.md.

A *regression pin* checks a modeled figure against the published figure some parameter was tuned to:
it holds the model on its calibration, it does not validate it. A *validation* check compares the
model with a figure nothing was tuned to; its error is reported in the assertion and in docs/perf.md.
"""
import dataclasses
import pathlib

import pytest

from hcemu.perf.deploy import DEPLOY_SOURCES, ENGINES, PRECISIONS
from hcemu.perf.economics import ECONOMICS_PRESETS, ECONOMICS_SOURCES
from hcemu.perf.figures import FIGURES, FIGURES_BY_KEY, Figure, format_value, numbers_stated, states_value
from hcemu.perf.links import LINK_PRESETS, LINK_SOURCES, TP_PRESETS
from hcemu.perf.specs import CHIP_PRESETS, COST_PRESETS, GPU_PRESETS, SOURCE_KINDS, SOURCES, Source, get_chip
from hcemu.perf.validation import (PIN_BAND, calibrated_parameters, figure_checks, generated_blocks, main,
                                   update_markdown)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "perf.md"
DOCS = (DOC, ROOT / "docs" / "serving.md", ROOT / "docs" / "economics.md")
FAMILIES = {  # (presets, their sources) of every preset family
    **{("specs", n): (p, SOURCES) for n, p in {**CHIP_PRESETS, **GPU_PRESETS, **COST_PRESETS}.items()},
    **{("deploy", n): (p, DEPLOY_SOURCES) for n, p in {**PRECISIONS, **ENGINES}.items()},
    **{("economics", n): (p, ECONOMICS_SOURCES) for n, p in ECONOMICS_PRESETS.items()},
    **{("links", n): (p, LINK_SOURCES) for n, p in {**LINK_PRESETS, **TP_PRESETS}.items()},
}
TARGETS = {k for k, v in calibrated_parameters().items() if v}


@pytest.fixture(scope="module")
def checks():
    return {c.key: c for c in figure_checks()}


# ---------------------------------------------------------------- sources
@pytest.mark.parametrize("family", sorted(FAMILIES), ids=lambda f: f"{f[0]}-{f[1]}")
def test_every_source_has_a_kind_and_states_its_value(family):
    spec, table = FAMILIES[family]
    name = family[1]
    src = dict(table[name])
    assert set(src) == {f.name for f in dataclasses.fields(spec)} - {"name"}
    for field, s in src.items():
        assert isinstance(s, Source) and s.kind in SOURCE_KINDS
        assert s.value == getattr(spec, field), field
        assert states_value(s.text, s.value), f"{name}.{field} = {s.value!r}: the text does not state it: {s.text!r}"


@pytest.mark.parametrize("family", sorted(FAMILIES), ids=lambda f: f"{f[0]}-{f[1]}")
def test_every_calibrated_source_names_its_figure(family):
    name = family[1]
    for field, s in FAMILIES[family][1][name].items():
        if s.kind != "calibrated":
            assert not s.targets, f"{name}.{field}"
            continue
        assert s.targets, f"{name}.{field} is calibrated to no figure"
        for t in s.targets:
            fig = FIGURES_BY_KEY[t]
            assert fig.low in [pytest.approx(x, rel=1e-9) for x in numbers_stated(s.text)], (
                f"{name}.{field}: the text does not name {fig.stated!r}: {s.text!r}")


def test_parameters_tuned_to_a_figure_are_tagged_calibrated():
    """The parameters the calibration rests on (docs/perf.md 'Reasoning') carry the calibrated tag."""
    expect = {"hc1-decode-tok-s": {"hc1.cim_macs_per_cycle_w4"},
              "hc1-card-power-w": {"hc1.rom_read_pj_per_bit", "hc1.mac_w4_pj", "hc1.kv_sram_bytes"},
              "hc1-transistors": {"hc1.cim_lane_transistors"},
              "hc1-cost-cents-per-mtok": {"hc1.card_price_usd"},
              "b200-cost-cents-per-mtok": {"default.hardware_lifetime_years"}}
    params = calibrated_parameters()
    for fig, names in expect.items():
        assert names <= set(params[fig]), (fig, params[fig])
    for g in GPU_PRESETS:
        assert {f"{g}.bandwidth_efficiency", f"{g}.kernel_launch_us"} <= set(params["h200-decode-tok-s"])
    assert params["trtllm-llama-3.1-8b-h200-fp8-2048-128"] == ("fp8.compute_efficiency",)
    assert params["trtllm-llama-3.1-8b-h200-fp8-128-2048"] == ("trtllm.kv_read_efficiency",)


def test_states_value_reads_the_opening_number():
    # the texts the hc1 energies used to carry: a range that contains the value is not a statement of it
    assert not states_value("0.10 pJ/bit: Horowitz 45 nm 8 KB SRAM read 5 pJ/32 bit = 0.16 pJ/bit", 0.15)
    assert not states_value("0.10 pJ: select + add; half the 8-bit ALU op (0.20-0.29 pJ [S])", 0.20)
    assert states_value("[I] 1.25 pJ/byte: Horowitz", 1.25) and states_value("288 MiB of KV SRAM", 288 * 2**20)
    assert states_value("$9,000 per card", 9000.0) and states_value("10% of the core", 0.10)
    assert states_value("true: balanced", True) and not states_value("true: balanced", False)
    assert states_value("[V] TSMC N6 (Next Platform)", "TSMC N6") and not states_value("no number", 1.0)
    assert states_value("[V] 2 months from model to silicon", 2 / 12)
    assert numbers_stated("53 B and 130-290") == [53.0, 53e9, 130.0, 290.0]
    assert format_value(9000.0) == "9,000" and format_value(0.15) == "0.15" and format_value(True) == "true"


@pytest.mark.parametrize("make, match", [
    (lambda: Source("guessed", "1 GHz"), "kind"),
    (lambda: Source("calibrated", "1 GHz"), "needs target"),
    (lambda: Source("assumed", "1 GHz", ("hc1-card-power-w",)), "takes no target"),
    (lambda: Source("calibrated", "1 GHz", ("hc1-speed",)), "unknown figures"),
    (lambda: Figure("x", "x", "vendor claim", "s", 5, 4, "W", "5 W", ("chip", "power_w")), "low <= high"),
    (lambda: Figure("x", "x", "vendor claim", "s", 5, 5, "W", "6 W", ("chip", "power_w")), "does not state"),
    (lambda: Figure("x", "x", "rumour", "s", 5, 5, "W", "5 W", ("chip", "power_w")), "kind"),
])
def test_bad_sources_and_figures_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- figures: pins and validation
def test_every_figure_is_modeled(checks):
    assert set(checks) == set(FIGURES_BY_KEY)
    assert TARGETS and set(FIGURES_BY_KEY) - TARGETS  # some figures calibrate, some validate
    for c in checks.values():
        assert c.modeled > 0 and c.error == c.figure.error(c.modeled)
    # the calibration targets hold a band: their own, or PIN_BAND (the TensorRT-LLM points)
    assert {checks[k].band for k in TARGETS} >= {PIN_BAND, 0.10}


@pytest.mark.parametrize("key", sorted(TARGETS))
def test_regression_pin_calibrated_figure(checks, key):
    """Regression pin, not validation: parameters were tuned to this figure (see its row in docs/perf.md);
    the pin fails when a change moves the model off its calibration band."""
    c = checks[key]
    assert c.role == "calibration" and c.within_band, (
        f"{key}: modeled {c.modeled:.4g} vs {c.figure.stated}, error {c.error:+.1%} (band ±{c.figure.band:.0%})")


@pytest.mark.parametrize("key", sorted(k for k, f in FIGURES_BY_KEY.items() if k not in TARGETS and f.band))
def test_validation_against_untuned_figure(checks, key):
    """Validation: no parameter was tuned to this figure; the error (reported here and in docs/perf.md)
    must stay within the figure's plausibility band. (The held-out TensorRT-LLM points carry no band:
    their errors are reported by hcemu validate and discussed in docs/serving.md.)"""
    c = checks[key]
    assert c.role == "held out" and not c.parameters
    assert c.within_band, f"{key}: modeled {c.modeled:.4g} vs {c.figure.stated}, error {c.error:+.1%}"


def test_figure_error_is_relative_and_zero_inside_a_range():
    f = FIGURES_BY_KEY["gpu-8b-single-user-tok-s"]
    assert f.error(200) == 0 and f.error(145) == 0
    assert f.error(100) == pytest.approx(100 / 130 - 1) and f.error(319) == pytest.approx(0.1)
    assert FIGURES_BY_KEY["hc1-card-power-w"].error(275) == pytest.approx(0.1)


def test_pins_follow_a_parameter_change(monkeypatch):
    """The calibration pin can fail: 70 W more leakage moves the card off its 250 W band (still two users)."""
    import hcemu.perf.validation as v

    hot = get_chip("hc1").replace(static_power_w=100.0)
    monkeypatch.setattr(v, "size_for_model", lambda chip, spec, plan: hot)
    c = {c.key: c for c in v.figure_checks(FIGURES[:3])}["hc1-card-power-w"]
    assert not c.within_band and c.error > 0.15


# ---------------------------------------------------------------- docs/perf.md
def test_doc_tables_are_generated():
    blocks = generated_blocks()
    texts = [d.read_text(encoding="utf-8") for d in DOCS]
    for d, text in zip(DOCS, texts):
        assert update_markdown(text, blocks) == text, (
            f"{d.name} is stale: python -m hcemu.perf.validation --update docs/*.md")
    for name in blocks:
        assert any(f"<!-- generated: {name} " in t for t in texts), name


def test_update_markdown_replaces_blocks_and_names_missing_ones(tmp_path, capsys):
    blocks = {"a": "| x |"}
    doc = "intro\n<!-- generated: a (how) -->\nold\n<!-- end generated: a -->\nend\n"
    assert update_markdown(doc, blocks) == "intro\n<!-- generated: a (how) -->\n| x |\n<!-- end generated: a -->\nend\n"
    with pytest.raises(ValueError, match=r"unknown \['a'\]"):
        update_markdown(doc, {"b": ""})
    with pytest.raises(ValueError, match="unclosed"):
        update_markdown(doc.replace("<!-- end generated: a -->", ""), blocks)
    stale = tmp_path / "perf.md"
    stale.write_text(DOC.read_text(encoding="utf-8").replace("| process | TSMC N6 |", "| process | N7 |"))
    assert main(["--check", str(stale)]) == 1
    assert main(["--update", str(stale)]) == 0 and main(["--check", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    assert main(["--markdown"]) == 0 and "HC1 die area" in capsys.readouterr().out


def test_doc_counts_the_calibrated_parameters_it_lists():
    text = DOC.read_text(encoding="utf-8")
    assert "three are tuned" not in text
    n = len({(p.split(".")[1], p.split(".")[0] in GPU_PRESETS)
             for v in calibrated_parameters().values() for p in v})
    assert f"{n} parameters are calibrated" in text
    assert sum(s.kind == "calibrated" for src in SOURCES.values() for s in src.values()) >= n
