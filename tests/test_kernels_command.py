"""``hcemu kernels``: the throughput report runs, reports the path it measured, and rejects bad
arguments with a message (small shapes stand in for the Llama 3.1 8B ones)."""
from __future__ import annotations

import json

import pytest

import hcemu
from hcemu.bench import kernels as kb
from hcemu.cli import main


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(kb, "LLAMA31_8B_SHAPES", [(32, 256), (48, 256), (16, 512), (64, 256)])
    before = hcemu.capabilities()["active"]
    yield
    hcemu.set_isa(before)


@pytest.mark.parametrize("isa", hcemu.capabilities()["supported"])
def test_json_report_per_path(small_shapes, capsys, isa):
    assert main(["kernels", "--json", "--quick", "--threads", "2", "--isa", isa]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["isa"] == isa and data["shapes"] == [[48, 256]]
    rows = {(r["format"], r["m"], r["threads"]): r for r in data["summary"]}
    assert set(rows) == {(f, m, t) for f in ("int8", "int4") for m in (1, 8) for t in (1, 2)}
    for r in rows.values():
        assert r["gb_per_s"] > 0 and r["gops"] > 0 and r["read_gb_per_s"] > 0
        assert r["of_read"] == pytest.approx(r["gb_per_s"] / r["read_gb_per_s"])
    # 2 GOPS per MAC: M = 8 does 8x the work of M = 1 on the same bytes
    m1, m8 = rows[("int8", 1, 1)], rows[("int8", 8, 1)]
    assert m8["gops"] / m8["gb_per_s"] == pytest.approx(8 * m1["gops"] / m1["gb_per_s"])


def test_table_report(small_shapes, capsys):
    assert main(["kernels", "--quick"]) == 0
    out = capsys.readouterr().out
    assert f"ISA path: {hcemu.capabilities()['active']}" in out and "48x256" in out
    assert out.count("int8 (G32)") == 2 and out.count("int4 asym (G32)") == 2  # M = 1 and 8, one thread


@pytest.mark.parametrize("argv, message", [(["--threads", "0"], "--threads must be in 1..256"),
                                           (["--isa", "sse9"], "unknown ISA path 'sse9'")])
def test_bad_arguments(small_shapes, capsys, argv, message):
    assert main(["kernels", "--quick", *argv]) == 1
    assert message in capsys.readouterr().err
