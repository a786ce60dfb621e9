"""benchmarks/xcomposer2_speed.py as a dry run (`--tiny`: toy sizes on CPU): every cell runs through the engine and
the eager loop, which agree token for token in float32 (greedy and beam search), and the JSON and table carry
every figure RESULTS.md needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_tiny_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("xcomposer2_speed", None)
    import xcomposer2_speed

    xcomposer2_speed.main(["--tiny", "--out", str(tmp_path), "--new-tokens", "3"])
    res = json.loads((tmp_path / "xcomposer2_speed.json").read_text())
    assert res["env"]["device"] == "cpu" and res["env"]["date"] and res["env"]["commit"]
    assert res["inputs"]["fast"]["hd_num"] == 16 and res["inputs"]["pair"]["hd_num"] == 9
    for name, w in res["inputs"].items():
        cols, rows = w["grid"]
        assert w["tiles"] == 1 + cols * rows and w["image_tokens"] == (cols * rows + 1) * 144 + 1 + (rows + 1) * 12
    assert [(r["workload"], r["beams"]) for r in res["rows"]] == [("fast", 1), ("fast", 3), ("pair", 1), ("pair", 3)]
    for row in res["rows"]:
        assert row["engine_s"] > 0 and row["eager_s"] > 0
        assert row["agreeing_prefix"] == 3  # float32: the engine and the plain loop choose the same tokens
    table = capsys.readouterr().out
    assert "| sliding step: frame pair, hd_num 9 | 3 |" in table
