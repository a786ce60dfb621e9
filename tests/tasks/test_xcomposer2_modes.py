"""The four captioning modes and `ask` on ShareCaptioner-Video: the exact ids each mode feeds the model (real
InternLM2 vocabulary, a scripted engine), each image at its hd_num, the family's generation defaults, and the CLI
end to end on a tiny random checkpoint in the real layout (the real engine, beam search included)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fakes import FakeEngine
from helpers import needs_shared
from xcomposer2_tiny import INTERNLM2_MODEL, TINY, tiny_checkpoint

from videocap.cli import main
from videocap.engine.request import SamplingParams
from videocap.models.xcomposer2 import hd
from videocap.models.xcomposer2.processor import XComposer2Processor
from videocap.models.xcomposer2.prompt import InternLM2Tokenizer
from videocap.tasks import driver, prompts
from videocap.tasks.captioning import sampling_of
from videocap.tasks.family import family
from videocap.tasks.fast import FastOptions, fast_task
from videocap.tasks.plan import plan_video
from videocap.tasks.recaption import RecaptionOptions, recaption_task
from videocap.tasks.slide import SlideOptions, slide_task
from videocap.tasks.summarize import SummaryOptions, summary_task
from videocap.tasks.records import CaptionSet
from videocap.tasks.results import Segment
from videocap.video import layout

XC = family("xcomposer2")
BOS, UNK = 1, 0
HEAD = [92543, 1008, 364]  # [UNUSED_TOKEN_146]user\n
TAIL = [92542, 364, 92543, 525, 11353, 364]  # [UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n
FRAME = (240, 320)  # the test videos' frames (helpers.H, helpers.W)


@pytest.fixture(scope="module")
def tok() -> InternLM2Tokenizer:
    return InternLM2Tokenizer(needs_shared(INTERNLM2_MODEL))


class Adapter:
    """The scripted engine speaks the `tokenizers` API; the InternLM2 tokenizer is sentencepiece."""

    def __init__(self, tok: InternLM2Tokenizer):
        self.tok = tok

    def encode(self, text: str, add_special_tokens: bool = False):
        return SimpleNamespace(ids=self.tok.encode(text))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(ids)


def session(tok, answer) -> driver.Session:
    return driver.Session(XComposer2Processor(TINY, tok), FakeEngine(Adapter(tok), answer), 32768)


def expected(tok, text: str, image_size: tuple[int, int] | None = None, hd_num: int = 0):
    """[BOS] + image positions + ids of the chat text, and the image mask."""
    body = HEAD + tok.encode(text) + TAIL
    if image_size is None:
        return [BOS] + body, [False] * (1 + len(body))
    n = hd.num_image_tokens(*hd.grid_of(image_size, hd_num))
    return [BOS] + [UNK] * n + body, [False] + [True] * n + [False] * len(body)


def answers(prompt: str, request) -> str:
    if "first frame" in prompt:
        return "A red square."
    if "happend between" in prompt:
        return "It moved."
    return "The summary."


def blank(n: int) -> list[np.ndarray]:
    return [np.zeros((*FRAME, 3), np.uint8)] * n


def test_the_family_defaults_are_the_captioner_demos():
    s = sampling_of(XC)
    assert (s.num_beams, s.max_new_tokens, s.temperature) == (3, 2048, 0.0)
    assert sampling_of(XC, num_beams=1).num_beams == 1  # greedy on request
    sampled = sampling_of(XC, temperature=0.7, top_p=0.9)
    assert sampled.num_beams == 1 and sampled.temperature == 0.7  # sampling: one sequence
    assert sampling_of(family("llava_next")).num_beams == 1 and sampling_of(family("llava_next")).max_new_tokens == 512
    assert XC.hd_num == {prompts.Step.FAST: 16, prompts.Step.FIRST: 9, prompts.Step.PAIR: 9}


def test_fast_ids(tok, h264):
    s = session(tok, answers)
    [result] = driver.run(s, [fast_task(plan_video(h264, "fast"), XC, FastOptions(sampling_of(XC), "Be brief."))])
    [request] = s.engine.requests
    strip = layout.strip(blank(16)).size
    ids, mask = expected(tok, prompts.FAST_QUERY + " Be brief.", strip, 16)
    assert request.token_ids == ids and request.image_mask == mask
    assert request.images.sizes == (hd.grid_of(strip, 16),)
    assert request.sampling.num_beams == 3 and request.sampling.max_new_tokens == 2048
    assert result.caption == "The summary."


def test_slide_ids(tok, h264):
    s = session(tok, answers)
    sampling = sampling_of(XC)
    summary = SummaryOptions(sampling, s.limit, s.count)
    [result] = driver.run(s, [slide_task(plan_video(h264, "slide", seconds=1.5), XC, SlideOptions(sampling, summary))])
    first, pair1, pair2, final = s.engine.requests
    assert (first.token_ids, first.image_mask) == expected(tok, prompts.FIRST_QUERY, (FRAME[1], FRAME[0]), 9)
    pair_size = layout.pair(*blank(2)).size
    pair = ("Here are the Video frame {} at {}.00 Second(s) and Video frame {} at {}.00 Second(s) of a video, describe "
            "what happend between them. What happend before is: {}")
    assert (pair1.token_ids, pair1.image_mask) == expected(tok, pair.format(0, 0, 1, 2, "A red square."), pair_size, 9)
    assert (pair2.token_ids, pair2.image_mask) == expected(tok, pair.format(1, 2, 2, 3, "It moved."), pair_size, 9)
    summary_text = ("Summarize the following per frame descriptions:\n"
                    "Video frame 1 at 0.00 Second(s) description: A red square.\n"
                    "Video frame 2 at 2.00 Second(s) description: It moved.\n"
                    "Video frame 3 at 3.00 Second(s) description: It moved.\n")
    assert final.token_ids == expected(tok, summary_text)[0] and final.images is None
    assert result.caption == "The summary." and result.requests == 4


def test_summarize_ids(tok):
    s = session(tok, answers)
    captions = CaptionSet("record", (Segment(0.0, 0.0, "A dog."), Segment(0.0, 2.0, "It runs.")))
    options = SummaryOptions(sampling_of(XC), s.limit, s.count, "One sentence.")
    [result] = driver.run(s, [summary_task(captions, XC, options)])
    [request] = s.engine.requests
    text = ("Summarize the following per frame descriptions:\nVideo frame 1 at 0.00 Second(s) description: A dog.\n"
            "Video frame 2 at 2.00 Second(s) description: It runs.\nOne sentence.")
    assert request.token_ids == expected(tok, text)[0] and result.summary == "The summary."


def test_recaption_ids(tok):
    s = session(tok, lambda p, r: "A corgi runs along a beach.")
    [result] = driver.run(s, [recaption_task("a corgi on a beach", XC, RecaptionOptions(sampling_of(XC)))])
    [request] = s.engine.requests
    ids, _ = expected(tok, "Translate this brief generation prompt into a detailed caption: a corgi on a beach")
    assert request.token_ids == ids and request.images is None and request.sampling.num_beams == 3
    assert result.caption == "A corgi runs along a beach."


# --- end to end through the CLI, the real engine, a tiny checkpoint --------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    needs_shared(INTERNLM2_MODEL)
    return tiny_checkpoint(tmp_path_factory.mktemp("xc") / "tiny", seed=3, head_scale=4.0)


def cli_json(capsys, *argv) -> list[dict]:
    assert main([*argv, "--device", "cpu", "--quiet", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_cli_ask(ckpt, h264, capsys):
    [answer] = cli_json(capsys, "ask", str(h264), "What is shown?", "--model", str(ckpt), "--frames", "4",
                        "--max-new-tokens", "5")
    strip = layout.strip(blank(4)).size
    assert answer["image_tokens"] == hd.num_image_tokens(*hd.grid_of(strip, 16))
    assert 1 <= answer["new_tokens"] <= 5 and len(answer["frame_timestamps"]) == 4
    assert answer["prompt_tokens"] == 1 + answer["image_tokens"] + len(HEAD + TAIL) + 4  # "What is shown?"


def test_cli_caption_fast_and_slide_with_beam_search(ckpt, h264, capsys):
    [fast] = cli_json(capsys, "caption", str(h264), "--model", str(ckpt), "--frames", "4", "--max-new-tokens", "4")
    assert fast["mode"] == "fast" and fast["requests"] == 1 and 1 <= fast["new_tokens"] <= 4
    [slide] = cli_json(capsys, "caption", str(h264), "--model", str(ckpt), "--mode", "slide", "--seconds", "2",
                       "--max-new-tokens", "3", "--num-beams", "2")
    assert slide["requests"] == 3 and len(slide["segments"]) == 2  # first frame, one pair, the summary


def test_cli_summarize_and_recaption(ckpt, tmp_path, capsys):
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"segments": [{"start": 0, "end": 0, "text": "A dog."},
                                               {"start": 0, "end": 2, "text": "It runs."}]}))
    [summary] = cli_json(capsys, "summarize", str(record), "--model", str(ckpt), "--max-new-tokens", "3")
    assert summary["requests"] == 1 and isinstance(summary["summary"], str)
    [recap] = cli_json(capsys, "recaption", "a corgi on a beach", "--model", str(ckpt), "--max-new-tokens", "3",
                       "--temperature", "0.8", "--seed", "1")
    assert recap["prompt"] == "a corgi on a beach" and isinstance(recap["caption"], str)
