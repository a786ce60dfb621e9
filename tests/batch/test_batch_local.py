"""A batch job in this process on the tiny model: the records are what `caption` gives for the same videos (batch is
a thin client of the same tasks), broken videos become error records with their reason, manifests carry windows
and prompts, `--max-duration` refuses long videos, `--retry-failed` redoes errors, and an out-of-memory in the
engine shrinks the batch and retries without losing a video."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from batch_kit import BAD

from videocap.batch import BatchConfig, run_batch
from videocap.batch import journal
from videocap.batch.engine_loop import TaskSpec

GEN = (("max_new_tokens", 2),)
FAST = TaskSpec("fast", generation=GEN)


def config(inp, out, **kw) -> BatchConfig:
    return BatchConfig(str(inp), str(out), task=kw.pop("task", FAST), frames=kw.pop("frames", 4),
                       decode_workers=kw.pop("decode_workers", 1), quiet=True, **kw)


@pytest.fixture(scope="module")
def subset(clips, tmp_path_factory):
    """8 good clips and the 4 broken ones, in one folder."""
    root = tmp_path_factory.mktemp("subset")
    for p in sorted(clips.rglob("clip*.mp4"))[:8]:
        shutil.copy(p, root / p.name)
    for name in BAD:
        shutil.copy(clips / name, root / name)
    return root


def test_records_equal_caption_and_errors_have_reasons(subset, tmp_path, tiny_base):
    out = tmp_path / "j.jsonl"
    summary = run_batch(config(subset, out, export=("csv",)), tiny_base)
    recs = journal.read(str(out)).records
    assert summary.done == 8 and sum(summary.failed.values()) == 4 and summary.skipped == 0
    assert summary.videos_per_hour > 0 and 0 < summary.gpu_busy <= 1 and summary.engines == 1
    paths = sorted(str(p) for p in subset.glob("*.mp4"))
    assert sorted(recs) == paths
    good = [p for p in paths if "bad_" not in p]
    want = {r.video: r for r in tiny_base.caption(good, "fast", frames=4, max_new_tokens=2)}
    for p in good:
        got = recs[p]
        assert got["caption"] == want[p].caption and got["frame_timestamps"] == list(want[p].frame_timestamps)
        assert got["prompt_tokens"] == want[p].prompt_tokens and got["new_tokens"] == want[p].new_tokens
        assert got["mode"] == "fast" and got["model"] == tiny_base.name and got["timings"]["decode_video"] > 0
    reasons = {p.rsplit("/", 1)[1]: recs[p]["reason"] for p in paths if "bad_" in p}
    assert reasons["bad_garbage.mp4"] == "not a video" and reasons["bad_empty.mp4"] == "not a video"
    assert reasons["bad_image.mp4"] in ("not a video", "no video stream") and reasons["bad_cut.mp4"] != "error"
    assert all("error" in recs[p] and "caption" not in recs[p] for p in paths if "bad_" in p)
    assert sum(1 for _ in open(str(out).replace(".jsonl", ".csv"))) == 1 + 8

    assert summary.busy_seconds <= summary.wall_seconds  # this run's engine time only (the captioner ran before)
    again = run_batch(config(subset, out), tiny_base)  # a rerun has nothing left to do
    assert again.skipped == 12 and again.done == 0 and not again.failed
    retried = run_batch(config(subset, out, retry_failed=True), tiny_base)
    assert retried.skipped == 8 and sum(retried.failed.values()) == 4
    assert sum(1 for _ in open(out)) == 16  # the errors again, appended after the first ones


def test_manifest_windows_prompts_and_max_duration(subset, tmp_path, tiny_base):
    clips = sorted(str(p) for p in subset.glob("clip*.mp4"))
    rows = [{"id": "window", "path": clips[0], "start": 0.5, "end": 1.5},
            {"id": "prompt", "path": clips[1], "end": 1.5, "prompt": "Say what the {frames} frames show."},
            {"id": "badprompt", "path": clips[2], "end": 1.5, "prompt": "Use {nothing}."},
            {"id": "long", "path": clips[3]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "j.jsonl"
    run_batch(config(manifest, out, max_duration=1.5), tiny_base)
    recs = journal.read(str(out)).records
    assert recs["window"]["start"] == 0.5 and recs["window"]["end"] == 1.5
    assert 0.5 <= min(recs["window"]["frame_timestamps"]) and max(recs["window"]["frame_timestamps"]) <= 1.5
    plain = tiny_base.caption(clips[1], frames=4, max_new_tokens=2, end=1.5)
    custom = tiny_base.caption(clips[1], frames=4, max_new_tokens=2, end=1.5,
                               prompt="Say what the {frames} frames show.")
    assert recs["prompt"]["prompt_tokens"] == custom.prompt_tokens != plain.prompt_tokens
    assert recs["badprompt"]["reason"] == "bad prompt" and "{nothing}" in recs["badprompt"]["error"]
    assert recs["long"]["reason"] == "too long" and "--max-duration 1.5" in recs["long"]["error"]


def test_slide_mode(subset, tmp_path, tiny_base):
    clip = sorted(subset.glob("clip*.mp4"))[0]
    out = tmp_path / "j.jsonl"
    run_batch(config(clip, out, frames=None, seconds=1.0, task=TaskSpec("slide", generation=GEN)), tiny_base)
    [got] = journal.read(str(out)).records.values()
    want = tiny_base.caption(str(clip), "slide", seconds=1.0, max_new_tokens=2)
    assert got["caption"] == want.caption and len(got["segments"]) == len(want.segments) == 2
    assert got["frame_timestamps"] == list(want.frame_timestamps)


def test_out_of_memory_shrinks_the_batch_and_loses_nothing(subset, tmp_path, tiny_base, monkeypatch):
    runner = tiny_base.engine.runner
    real = runner.run
    scheduler = tiny_base.engine.scheduler

    def run(batch, *args, **kwargs):
        # Every step runs out of memory until the batch limit is down to 2 (8 -> 4 -> 2): whatever the step's size,
        # which depends on how fast the decode workers deliver on a busy machine.
        if scheduler.max_num_seqs > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(runner, "run", run)
    monkeypatch.setattr(scheduler, "max_num_seqs", 8)
    monkeypatch.setattr(scheduler, "max_prefill_tokens", scheduler.max_prefill_tokens)
    messages = []
    out = tmp_path / "j.jsonl"
    # No bad clips here: their records come first and would be written whatever the engine does.
    summary = run_batch(config(subset / "clip*.mp4", out), tiny_base, log=messages.append)
    recs = journal.read(str(out)).records
    assert len(recs) == 8 and all("caption" in r for r in recs.values())
    assert summary.out_of_memory >= 2 and scheduler.max_num_seqs == 2
    assert any("out of memory" in m and "at most 2 sequences" in m for m in messages)
    assert sum(1 for _ in open(out)) == 8  # each video once


def test_out_of_memory_at_one_sequence_becomes_error_records(subset, tmp_path, tiny_base, monkeypatch):
    def run(batch, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(tiny_base.engine.runner, "run", run)
    monkeypatch.setattr(tiny_base.engine.scheduler, "max_num_seqs", 1)
    out = tmp_path / "j.jsonl"
    summary = run_batch(config(sorted(subset.glob("clip*.mp4"))[0], out), tiny_base)
    [rec] = journal.read(str(out)).records.values()
    assert rec["reason"] == "out of memory" and summary.failed == {"out of memory": 1}
