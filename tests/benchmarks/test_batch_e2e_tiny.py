"""benchmarks/batch_e2e.py as a dry run (`--tiny`: toy sizes on CPU): both runs caption every input with the same
prompts and answer lengths, and the JSON has every figure the RESULTS.md table needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_tiny_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("batch_e2e", None)
    import batch_e2e

    batch_e2e.main(["--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    res = json.loads((tmp_path / "out" / "batch_e2e.json").read_text())
    inputs = res["inputs"]
    assert inputs["videos"] == inputs["clips"] * inputs["copies"] == 6 and inputs["decode_workers"] == 2
    pre, e2e = res["predecoded"], res["e2e"]
    for run in (pre, e2e):
        assert run["videos"] == 6 and run["videos_per_hour"] > 0 and 0 < run["gpu_busy"] <= 1
        assert run["new_tokens"] == [inputs["new_tokens"]]  # no stop ids: every answer is full length
    assert pre["prompt_tokens"] == e2e["prompt_tokens"]  # the same requests, decoded ahead or not
    assert e2e["decode_s_per_video"] > 0 and e2e["summary"]["decode_workers"] == 2
    assert e2e["worker_s_per_video"] >= e2e["decode_s_per_video"] and e2e["queued_s_per_video"] >= 0
    supply = res["supply"]["--decode-device cpu"]
    assert supply["videos"] == 6 and supply["videos_per_s"] > 0
    assert set(supply["stages_s_per_video"]) == {"probe", "plan", "frames", "layout", "prepare", "cpu"}
    assert res["e2e_over_predecoded"] == e2e["videos_per_s"] / pre["videos_per_s"]
    assert "| `videocap batch` end to end, `--decode-device cpu` |" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*.mp4")) and (tmp_path / "work" / "captions.jsonl").exists()
