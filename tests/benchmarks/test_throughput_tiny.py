"""benchmarks/throughput.py as a dry run (`--tiny`: toy sizes on CPU): every step runs, the JSON has every figure
the RESULTS.md table needs, and transformers' baseline holds the engine's weights (identical greedy answers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_tiny_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("throughput", None)
    import throughput

    throughput.main(["--tiny", "--out", str(tmp_path), "--profile"])
    res = json.loads((tmp_path / "throughput.json").read_text())

    assert res["env"]["device"] == "cpu" and res["env"]["torch"] and res["env"]["date"]
    inputs = res["inputs"]
    assert inputs["grid_size"] == [1920, 1096] and inputs["tiles"] == 5
    assert inputs["image_tokens"] == 1948 and inputs["prompt_tokens"] == 1948 + 40 + 70
    assert res["hardware"]["matmul_flops_per_s"] > 0 and res["hardware"]["copy_bytes_per_s"] > 0
    base = res["baseline"]
    assert base["batch1"]["s_per_video"] > 0 and base["batch1"]["tok_s"] > 0 and base["batch1"]["complete"]
    assert base["batch32"]["s_per_video"] > 0 and base["batch32"]["complete"]
    single = res["single"]
    assert 0 < single["ttft_s"] < single["s_per_video"] and single["decode_tok_s"] > 0
    tp = res["throughput"]
    assert tp["finished"] == tp["requests"] == inputs["requests"] and not tp["timed_out"]
    assert tp["videos_per_s"] > 0 and tp["first_token_s"]["median"] > 0
    steps = tp["engine_steps"]
    assert steps["prefill_steps"] >= 1 and steps["decode_steps"] >= inputs["new_tokens"] - 1
    assert 0 < steps["prefill_share"] < 1
    assert tp["agree_with_transformers"] == [inputs["new_tokens"]] * 2  # float32: the same answers
    roof = res["roofline"]
    for key in ("at_max_batch", "at_batch_used"):
        assert roof[key]["videos_per_s"] > 0 and roof[key]["decode_steps"] > 0
    assert roof["single"]["ttft_s"] > 0 and roof["shapes"]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # float32

    assert "## decode" in (tmp_path / "profile.txt").read_text()
    table = capsys.readouterr().out
    assert "| throughput, 2 queued (videos/s) |" in table and "Roofline inputs" in table
