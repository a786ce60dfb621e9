"""The journal: records whole, the latest per id wins, a line cut short at the end is dropped before appending
(a crash mid-write never breaks the next run), and the exports read from it."""

from __future__ import annotations

import csv
import json

import pytest

from videocap.batch import journal
from videocap.batch.export import export
from videocap.batch.inputs import Item
from videocap.batch import records
from videocap.errors import CorruptVideoError, WindowError


def test_append_read_and_latest_wins(tmp_path):
    path = str(tmp_path / "sub" / "j.jsonl")
    with journal.Journal(path) as j:
        j.write({"id": "a", "path": "a.mp4", "caption": "first"})
        j.write({"id": "b", "path": "b.mp4", "error": "broken", "reason": "corrupt"})
        j.write({"id": "b", "path": "b.mp4", "caption": "ünïcode ✓"})
    state = journal.read(path)
    assert state.done() == {"a", "b"} and state.failed() == set() and not state.torn_tail
    assert state.records["b"]["caption"] == "ünïcode ✓"
    assert open(path, encoding="utf-8").read().count("\n") == 3


def test_torn_tail_is_dropped_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"id": "a", "caption": "x"}\n{"id": "b", "capt')  # a crash in the middle of a write
    state = journal.read(str(path))
    assert state.torn_tail and set(state.records) == {"a"}
    with journal.Journal(str(path)) as j:
        assert j.dropped_tail
        j.write({"id": "c", "caption": "y"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "c"]


def test_bad_whole_lines_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"id": "a"}\n[1, 2]\n{"no_id": 1}\nnot json\n\n{"id": "b", "error": "e"}\n')
    state = journal.read(str(path))
    assert set(state.records) == {"a", "b"} and state.bad_lines == 3 and state.failed() == {"b"}


def test_error_records_name_a_reason():
    item = Item("x", "/v/x.mp4")
    record = records.failure(item, "fast", "m", CorruptVideoError("/v/x.mp4", "bad data at 3.2 s"))
    assert record == {"id": "x", "path": "/v/x.mp4", "mode": "fast", "model": "m", "error": "bad data at 3.2 s",
                      "reason": "corrupt"}
    assert records.failure(item, "fast", "m", WindowError(None, "empty window"))["reason"] == "bad window"
    windowed = records.failure(Item("y", "/v/y.mp4", 1.0, 2.0), "slide", "m", "too long", records.TOO_LONG)
    assert windowed["start"] == 1.0 and windowed["end"] == 2.0 and windowed["reason"] == "too long"


def _journal(tmp_path):
    path = str(tmp_path / "captions.jsonl")
    with journal.Journal(path) as j:
        j.write({"id": "a", "path": "a.mp4", "mode": "fast", "model": "m", "caption": "A cat, \"quoted\", sits.",
                 "segments": [], "frame_timestamps": [0.0, 1.5], "prompt_tokens": 10, "new_tokens": 3,
                 "requests": 1, "finish_reason": "stop", "timings": {"total": 0.5}, "warnings": []})
        j.write({"id": "b", "path": "b.mp4", "mode": "fast", "model": "m", "error": "broken", "reason": "corrupt"})
        j.write({"id": "c", "path": "c.mp4", "mode": "slide", "model": "m", "caption": "Two\nlines.",
                 "segments": [{"start": 0.0, "end": 0.0, "text": "s"}], "frame_timestamps": [0.0], "start": 2.0})
    return path


def test_export_csv_is_path_text_of_the_captioned(tmp_path):
    out = export(_journal(tmp_path), "csv")
    assert out == str(tmp_path / "captions.csv")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    # c.mp4's caption is of a manifest window (from 2 s): the window travels with it.
    assert rows == [["path", "text", "start", "end"], ["a.mp4", 'A cat, "quoted", sits.', "", ""],
                    ["c.mp4", "Two\nlines.", "2.0", ""]]


def test_export_csv_without_windows_is_path_text(tmp_path):
    path = str(tmp_path / "j.jsonl")
    with journal.Journal(path) as j:
        j.write({"id": "a", "path": "a.mp4", "caption": "x"})
        j.write({"id": "b", "path": "b.mp4", "error": "broken", "reason": "corrupt", "start": 1.0})
    with open(export(path, "csv"), newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["path", "text"], ["a.mp4", "x"]]


def test_export_parquet_keeps_every_record(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(export(_journal(tmp_path), "parquet")).to_pylist()
    assert [r["id"] for r in table] == ["a", "b", "c"]
    assert table[0]["frame_timestamps"] == [0.0, 1.5] and table[0]["timings"] == [("total", 0.5)]
    assert table[1]["reason"] == "corrupt" and table[1]["caption"] is None
    assert table[2]["segments"] == [{"start": 0.0, "end": 0.0, "text": "s"}] and table[2]["start"] == 2.0
