"""The shipped videocap-tiny model: `--model tiny` loads it offline, and its fast caption of the bundled example
clip (a generator clip) states that clip's facts — checked with the parser, not against a fixed string."""

from __future__ import annotations

from pathlib import Path

import videocap
from videocap.train import facts, language
from videocap.train.scene import sample_scene
from videocap.train.synthetic import EXAMPLE_SEED
from videocap.weights import hub

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "videocap" / "assets" / "example.mp4"


def test_the_tiny_model_ships_in_the_package():
    folder = hub.resolve("tiny")
    assert folder.name == "videocap-tiny" and (folder / "model.safetensors").stat().st_size <= 16 * 2**20


def test_tiny_captions_the_example_clip_with_its_facts():
    captioner = videocap.load("tiny", device="cpu", progress=False)
    text = captioner.caption(EXAMPLE, "fast").caption
    truth = language.facts(sample_scene(EXAMPLE_SEED))
    score = facts.Score()
    score.add(facts.parse(text), truth)
    assert score.recall == 1.0 and score.precision >= 0.75, text
    assert facts.events(facts.parse(text)) == facts.events(truth), text
