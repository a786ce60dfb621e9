"""Never lose work: the `videocap batch` process on 60 videos (4 broken) stopped by Ctrl-C, then killed with SIGKILL
(after a record cut short is left at the end of the journal, as a crash mid-write would), then run to the end:
every video appears exactly once, with the right status, and no line of the journal is broken."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from batch_kit import BAD, RUN_ARGS, ids_of, videocap


def wait_for_records(journal: Path, n: int, proc, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = journal.read_bytes().count(b"\n") if journal.exists() else 0
        if have >= n:
            return have
        assert proc.poll() is None, f"the job ended early: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError(f"no {n} records within {timeout} s")


def lines(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines()]


def test_interrupt_kill_and_resume(clips, tiny_ckpt, tmp_path):
    journal = tmp_path / "captions.jsonl"
    argv = ["batch", clips, "--out", journal, "--model", tiny_ckpt, *RUN_ARGS]
    slow = ["--decode-workers", 1, "--prefetch", 1]  # decoding sets the pace: the signals land mid-run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    # 1. Ctrl-C: no new videos start; those in the engine finish and are written; exit 130.
    proc = videocap(*argv, *slow, env=env)
    wait_for_records(journal, 3, proc)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    out, err = proc.communicate(timeout=60)
    first = lines(journal)
    assert proc.returncode == 130, err
    assert "interrupted" in out and "left for the next run" in out and 3 <= len(first) < 60

    # 2. SIGKILL mid-run, then a torn record at the end (what a crash inside a write leaves).
    proc = videocap(*argv, *slow, env=env)
    wait_for_records(journal, len(first) + 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    second = lines(journal)
    assert len(first) + 3 <= len(second) < 60
    with open(journal, "a") as f:
        f.write('{"id": "' + str(clips / "part1" / "clip01.mp4") + '", "path": "x", "capt')

    # 3. To the end.
    proc = videocap(*argv, "--decode-workers", 2, env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "dropped a record cut short" in err
    final = lines(journal)  # every line parses: the torn one is gone
    ids = [r["id"] for r in final]
    assert sorted(ids) == ids_of(clips) and len(ids) == len(set(ids)) == 60
    for r in final:
        broken = Path(r["path"]).name in BAD
        assert ("error" in r) == broken and ("caption" in r) == (not broken), r
    assert f"skipped {len(second)}" in out and "done" in out

    # A rerun has nothing to do.
    proc = videocap(*argv, env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "skipped 60" in out and len(lines(journal)) == 60
    assert "nothing to do" in out and "videos/hour" not in out
