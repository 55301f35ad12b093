"""Smoke test of ``benchmarks/ratios.py`` (the script the README's kernel figures come from): it runs
end to end on one small shape and writes every target, with its ratio, to its JSON."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ratios  # noqa: E402

from hcemu.bench import kernels as kb  # noqa: E402


def test_ratios_script_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kb, "LLAMA31_8B_SHAPES", [(64, 256)])
    out = tmp_path / "ratios.json"
    assert ratios.main(["--no-head", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    labels = [r["target"] for r in data["ratios"]]
    assert labels == [t[0] for t in ratios.TARGETS]
    peers_present = {(m["peer"], m["format"], m["m"], m["threads"]) for m in data["measurements"]}
    for row, (_, num, den, _, goal) in zip(data["ratios"], ratios.TARGETS):
        if num in peers_present and den in peers_present:
            assert row["ratio"] is not None and row["ratio"] > 0
            assert row["holds"] is (None if goal is None else row["ratio"] >= goal)
    text = capsys.readouterr().out
    assert "ceiling: plain read 2 threads" in text and "64x256" in text
