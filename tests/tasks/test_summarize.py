"""`summarize`: videocap's slide output and ShareGPT4Video records (both spellings of the time fields), JSON /
array / JSONL, one summary per record, and one-line errors naming what is missing."""

from __future__ import annotations

import json

import pytest

from fakes import fake_session

from videocap.cli import main
from videocap.engine.request import SamplingParams
from videocap.errors import RecordError
from videocap.tasks import driver
from videocap.tasks.family import family
from videocap.tasks.records import read_captions
from videocap.tasks.results import Segment
from videocap.tasks.summarize import SummaryOptions, summary_task

SLIDE_RECORD = {
    "video": "clip.mp4", "mode": "slide", "caption": "old",
    "segments": [{"start": 0.0, "end": 0.0, "text": "A dog on grass."},
                 {"start": 0.0, "end": 2.04, "text": "The dog runs."},
                 {"start": 2.04, "end": 3.5, "text": "It stops."}],
}


def sharegpt4video(field: str = "timestamp", times=(0.0, 2.0, 4.6)) -> dict:
    return {
        "video_id": "abc", "video_path": "pexels/abc.mp4", "zip_folder": "pexels_1.zip", field: list(times),
        "captions": [{"idx": "1", "content": "The dog runs."}, {"idx": "0", "content": "A dog on grass. "},
                     {"idx": "2", "content": "It stops."}, {"idx": "-1", "content": "A dog runs on grass, then stops."}],
    }


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_slide_output_is_read_with_exact_times(tmp_path):
    [captions] = read_captions(write(tmp_path, "clip.json", json.dumps(SLIDE_RECORD)))
    assert captions.segments == (Segment(0.0, 0.0, "A dog on grass."), Segment(0.0, 2.04, "The dog runs."),
                                 Segment(2.04, 3.5, "It stops."))
    assert captions.source.endswith("clip.json (clip.mp4)") and captions.reference is None


@pytest.mark.parametrize("field", ["timestamp", "timestamps"])
def test_sharegpt4video_records_in_idx_order_with_their_times(tmp_path, field):
    [captions] = read_captions(write(tmp_path, "r.json", json.dumps(sharegpt4video(field))))
    assert [(s.end, s.text) for s in captions.segments] == [(0.0, "A dog on grass."), (2.0, "The dog runs."),
                                                           (4.6, "It stops.")]
    assert captions.reference == "A dog runs on grass, then stops."


@pytest.mark.parametrize("field", ["keyframe", "keyframes"])
def test_sharegpt4video_keyframe_numbers_with_fps(tmp_path, field):
    record = {**sharegpt4video(field, (0, 60, 138)), "fps": 30}
    [captions] = read_captions(write(tmp_path, "r.json", json.dumps(record)))
    assert [s.end for s in captions.segments] == [0.0, 2.0, 4.6]


def test_time_spans_are_accepted(tmp_path):
    record = sharegpt4video("timestamps", ([0, 0], [0, 2.5], [2.5, 5]))
    [captions] = read_captions(write(tmp_path, "r.json", json.dumps(record)))
    assert [(s.start, s.end) for s in captions.segments] == [(0, 0), (0, 2.5), (2.5, 5)]


def test_jsonl_and_arrays_give_one_set_per_record(tmp_path):
    lines = "\n".join(json.dumps(r) for r in (sharegpt4video(), SLIDE_RECORD, sharegpt4video("timestamps"))) + "\n\n"
    sets = read_captions(write(tmp_path, "many.jsonl", lines))
    assert len(sets) == 3 and sets[0].source.endswith("many.jsonl:1 (abc)") and sets[1].source.endswith(":2 (clip.mp4)")
    assert sets[2].source.endswith("many.jsonl:3 (abc)")
    assert len(read_captions(write(tmp_path, "arr.json", json.dumps([SLIDE_RECORD, SLIDE_RECORD])))) == 2


def test_records_without_times_need_an_interval(tmp_path):
    record = sharegpt4video()
    del record["timestamp"]
    path = write(tmp_path, "r.json", json.dumps(record))
    with pytest.raises(RecordError, match="no keyframe times.*--interval"):
        read_captions(path)
    [captions] = read_captions(path, interval=2.0)
    assert [s.end for s in captions.segments] == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("content, needle", [
    ("", "empty"),
    ("{not json\n", "bad.json:1: not JSON"),
    (json.dumps({"video": "x.mp4"}), "no 'segments' (videocap slide --json output) or 'captions'"),
    (json.dumps({"segments": [{"start": 0, "text": "a"}]}), "segment 1 has no 'end'"),
    (json.dumps({"segments": [{"start": 0, "end": "soon", "text": "a"}]}), "segment 1 'end' must be a number"),
    (json.dumps({"captions": [{"idx": "0"}], "timestamp": [0]}), "caption 1 needs 'idx' and 'content'"),
    (json.dumps({"captions": [{"idx": "-1", "content": "all"}]}), "no per-keyframe captions"),
    (json.dumps({"captions": [{"idx": "0", "content": "a"}, {"idx": "1", "content": "b"}], "timestamp": [0]}),
     "'timestamp' has 1 entries for 2 keyframe captions"),
    (json.dumps({"captions": [{"idx": "0", "content": "a"}], "keyframe": [0]}), "no 'fps'"),
    (json.dumps([1, 2]), "bad.json[1]: a JSON int, not an object"),
])
def test_malformed_files_name_what_is_missing(tmp_path, content, needle):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(RecordError) as e:
        read_captions(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        read_captions(tmp_path / "nope.json")


def test_cli_malformed_file_is_exit_2_before_the_model_loads(tmp_path, capsys):
    path = write(tmp_path, "bad.jsonl", json.dumps(SLIDE_RECORD) + "\n" + json.dumps({"video_id": "v2"}) + "\n")
    assert main(["summarize", str(path), "--model", str(tmp_path / "no-model"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:2 (v2)" in err and "'captions'" in err


def test_summary_prompt_of_a_dataset_record(llama3, tiny_cfg, tmp_path):
    session = fake_session(llama3, tiny_cfg, lambda p, r: "A dog runs, then stops.")
    [captions] = read_captions(write(tmp_path, "r.json", json.dumps(sharegpt4video())))
    options = SummaryOptions(SamplingParams(max_new_tokens=8), session.limit, session.count, "One sentence.")
    [result] = driver.run(session, [summary_task(captions, family("llava_next"), options)])
    prompt = session.engine.prompt_text(session.engine.requests[0])
    assert ("<|start_header_id|>user<|end_header_id|>\n\nSummarize the following per frame descriptions:\n"
            "Video frame 1 at 0.00 Second(s) description: A dog on grass.\n"
            "Video frame 2 at 2.00 Second(s) description: The dog runs.\n"
            "Video frame 3 at 5.00 Second(s) description: It stops.\nOne sentence.<|eot_id|>") in prompt
    assert result.summary == "A dog runs, then stops." and result.levels == 1
    assert result.reference == "A dog runs on grass, then stops."


def test_summarize_api_and_cli_on_the_tiny_model(tiny_captioner, tiny_ckpt, tmp_path, capsys):
    lines = "\n".join(json.dumps(r) for r in (sharegpt4video(), SLIDE_RECORD)) + "\n"
    path = write(tmp_path, "two.jsonl", lines)
    results = tiny_captioner.summarize(str(path), max_new_tokens=4)
    assert [len(r.segments) for r in results] == [3, 3] and all(r.new_tokens <= 4 for r in results)
    one = tiny_captioner.summarize([(0.0, "A dog."), (2.0, "It runs.")], max_new_tokens=3)
    assert one.summary == tiny_captioner.summarize(
        [Segment(0, 0, "A dog."), Segment(0, 2, "It runs.")], max_new_tokens=3).summary
    assert main(["summarize", str(path), "--model", str(tiny_ckpt), "--max-new-tokens", "3", "--json", "--quiet"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and records[0]["source"].endswith("two.jsonl:1 (abc)")
    assert {"summary", "segments", "prompt_tokens", "new_tokens", "timings", "levels"} <= set(records[0])
