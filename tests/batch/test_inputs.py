"""What a batch job reads: directories, globs, lists and manifests become items with deterministic ids; bad input
is one line naming the file and line; shards split by id whatever the order."""

from __future__ import annotations

import json
import os

import pytest

from videocap.batch.inputs import Item, read_inputs, shard
from videocap.errors import BatchInputError


@pytest.fixture
def tree(tmp_path):
    for rel in ["a/one.mp4", "a/b/two.MKV", "three.webm", "notes.txt", "a/.hidden.mp4", "image.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_directory_is_recursive_by_extension_and_sorted(tree):
    items = read_inputs(str(tree))
    assert [os.path.relpath(it.path, tree) for it in items] == ["a/b/two.MKV", "a/one.mp4", "three.webm"]
    assert all(it.id == it.path and it.start is None for it in items)
    assert read_inputs(str(tree) + "/") == items  # the same ids however the folder is spelled


def test_glob_and_single_file(tree):
    assert [os.path.basename(it.path) for it in read_inputs(str(tree / "**" / "*.mp4"))] == ["one.mp4"]
    [item] = read_inputs(str(tree / "three.webm"))
    assert item.path == str(tree / "three.webm")


def test_list_file_paths_relative_to_the_list(tree):
    (tree / "list.txt").write_text("# videos\na/one.mp4\n\n  three.webm  \n" + str(tree / "a/b/two.MKV") + "\n")
    items = read_inputs(str(tree / "list.txt"))
    assert [it.path for it in items] == [str(tree / "a/one.mp4"), str(tree / "three.webm"), str(tree / "a/b/two.MKV")]


def test_jsonl_and_csv_manifests(tree):
    rows = [{"path": "a/one.mp4", "id": "v1", "start": 1, "end": 2.5, "prompt": "Describe {frames} frames."},
            {"path": "three.webm", "id": 7}]
    (tree / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tree / "m.csv").write_text("id,path,start,end,prompt\nv1,a/one.mp4,1,2.5,Describe {frames} frames.\n7,three.webm,,,\n")
    expected = [Item("v1", str(tree / "a/one.mp4"), 1.0, 2.5, "Describe {frames} frames."),
                Item("7", str(tree / "three.webm"))]
    assert read_inputs(str(tree / "m.jsonl")) == expected
    assert read_inputs(str(tree / "m.csv")) == expected


@pytest.mark.parametrize("name, text, needle", [
    ("m.jsonl", '{"path": "a.mp4"}\n{"id": "x"}\n', "m.jsonl:2: no 'path'"),
    ("m.jsonl", '{"path": "a.mp4"}\nnot json\n', "m.jsonl:2: not JSON"),
    ("m.jsonl", '{"path": "a.mp4", "start": 3, "end": 2}\n', "'end' (2.0) must be after 'start' (3.0)"),
    ("m.jsonl", '{"path": "a.mp4", "start": "soon"}\n', "'start' must be a number of seconds"),
    ("m.jsonl", '{"path": "a.mp4", "id": "x"}\n{"path": "b.mp4", "id": "x"}\n', "id 'x' appears twice"),
    ("m.csv", "video,id\na.mp4,1\n", "needs a header with a 'path' column"),
    ("m.csv", "path,end\na.mp4,-1\n", "m.csv:2: 'end' must be a number of seconds >= 0"),
    ("l.txt", "# nothing\n\n", "holds no path"),
    ("l.txt", "a.mp4\na.mp4\n", "appears twice"),
])
def test_bad_input_is_one_line_naming_where(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    with pytest.raises(BatchInputError) as e:
        read_inputs(str(tmp_path / name))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_nothing_there(tmp_path):
    with pytest.raises(BatchInputError, match="no such file, directory or glob match"):
        read_inputs(str(tmp_path / "missing"))
    with pytest.raises(BatchInputError, match="matches no file"):
        read_inputs(str(tmp_path / "*.mp4"))
    with pytest.raises(BatchInputError, match="no video files"):
        read_inputs(str(tmp_path))


def test_shards_partition_by_id_whatever_the_order():
    items = [Item(f"id{k}", f"/v/{k}.mp4") for k in range(200)]
    parts = [shard(items, i, 4) for i in range(4)]
    assert sorted(it.id for p in parts for it in p) == sorted(it.id for it in items)
    assert all(30 < len(p) < 70 for p in parts)  # a hash spreads them
    assert shard(items[::-1], 1, 4) == parts[1][::-1]
    assert shard(items + [Item("new", "/v/new.mp4")], 2, 4)[: len(parts[2])] == parts[2]  # others stay put
