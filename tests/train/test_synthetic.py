"""The synthetic generator (deterministic, ShareGPT4Video records), the fact parser and the evaluation protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videocap.tasks.records import from_record
from videocap.train import evaluation, facts, language, render
from videocap.train.scene import sample_scene
from videocap.train.synthetic import EVAL_SEED_BASE, record, write_clip, write_dataset
from videocap.video import sample
from videocap.video.sampling import Every


def test_generator_is_deterministic_per_seed():
    a, b = sample_scene(123), sample_scene(123)
    assert a == b and a != sample_scene(124)
    assert np.array_equal(render.frame(a, 1.3), render.frame(b, 1.3))
    assert json.dumps(record(a)) == json.dumps(record(b))


def test_scenes_vary_and_stay_in_bounds():
    scenes = [sample_scene(s) for s in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3} and {len(s.events) for s in scenes} == {1, 2, 3}
    assert {e.kind for s in scenes for e in s.events} == {"move", "appear", "disappear", "recolor", "grow", "rotate", "pan"}
    assert len({(s.width, s.height) for s in scenes}) > 3 and len({s.background for s in scenes}) == 5
    for s in scenes:
        assert len({o.colour for o in s.objects}) == len(s.objects)  # names are unambiguous


def test_record_is_a_sharegpt4video_record():
    scene = sample_scene(7)
    rec = record(scene)
    assert rec["captions"][0] == {"idx": "-1", "content": language.detailed_caption(scene)}
    assert [c["idx"] for c in rec["captions"][1:]] == [str(k) for k in range(len(scene.events) + 1)]
    assert rec["timestamp"] == [2.0 * k for k in range(len(scene.events) + 1)]
    captions = from_record(rec, "record")  # what `videocap summarize` reads
    assert captions.reference == rec["captions"][0]["content"]
    assert [s.end for s in captions.segments] == rec["timestamp"]
    assert [s.text for s in captions.segments] == [c["content"] for c in rec["captions"][1:]]
    assert [e["kind"] for e in rec["facts"]["events"]] == [e.kind for e in scene.events]


def test_parser_round_trips_ground_truth():
    for seed in range(400):
        scene = sample_scene(seed)
        truth = language.facts(scene)
        texts = [language.detailed_caption(scene, v) for v in range(3)] + [language.summary(scene, v) for v in range(2)]
        for text in texts:
            score = facts.Score()
            score.add(facts.parse(text), truth)
            assert score.precision == score.recall == 1.0, text
            assert facts.events(facts.parse(text)) == facts.events(truth), text
        for k in range(len(scene.events)):
            assert facts.events(facts.parse(language.pair_caption(scene, k))) == [facts.events(truth)[k]]


def test_score_counts_misses_and_order():
    truth = [("background", "gray"), ("object", "red circle"), ("event", "move", "red circle", "left"),
             ("event", "grow", "red circle", "")]
    pred = facts.parse("A blue square on a gray background. First, the red circle grows. Then the red circle moves left.")
    score = facts.Score()
    score.add(pred, truth)
    assert (score.true_positive, score.predicted, score.actual) == (3, 4, 4)
    assert score.pairs == 1 and score.ordered_pairs == 0 and score.exact_order_rate == 0.0


def test_qa_answers_are_checked_by_meaning():
    scene = sample_scene(3)
    for qa in language.qa_pairs(scene):
        assert evaluation.qa_correct(qa, qa.answer)
        assert evaluation.qa_correct(qa, qa.answer.upper() + "!!")
    assert not evaluation.qa_correct(language.QA("q", "Left.", "direction"), "Right.")


def test_eval_protocol_is_held_out_and_hard_enough():
    scenes = evaluation.eval_scenes()
    assert len(scenes) == 200 and min(s.seed for s in scenes) == EVAL_SEED_BASE
    assert sum(len(s.objects) >= 2 or len(s.events) >= 2 for s in scenes) >= 100


def test_clip_decodes_to_the_rendered_frames_and_times(tmp_path):
    scene = sample_scene(11)
    path = tmp_path / "clip.mp4"
    write_clip(scene, path)
    got = sample(path, Every(2.0))
    assert list(got.timestamps) == language.keyframe_times(scene)
    for t, image in zip(got.timestamps, got.images):
        diff = np.abs(image.astype(int) - render.frame(scene, t).astype(int)).mean()
        assert diff < 6, diff  # H.264 at crf 18: close to the rendered frame


def test_write_dataset(tmp_path):
    path = write_dataset(tmp_path / "ds", 2, first_seed=5, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [5, 6]
    assert all((tmp_path / "ds" / r["video_path"]).is_file() for r in rows)


def test_synth_cli_writes_a_dataset(tmp_path, capsys):
    from videocap.cli import main

    assert main(["train", "synth", "--out", str(tmp_path / "d"), "--n", "2", "--seed", "9", "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "d" / "records.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [9, 10] and capsys.readouterr().out.strip().endswith("records.jsonl")
    with pytest.raises(SystemExit) as refused:
        main(["train", "synth", "--out", str(tmp_path / "e"), "--n", "0"])
    assert refused.value.code == 2 and "must be a positive integer" in capsys.readouterr().err
