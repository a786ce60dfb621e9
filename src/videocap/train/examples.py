"""Training examples: one (prompt, answer) of a captioning mode or a question, built through the inference path.

Each example is the request the task would send at inference — the same frames a mode samples (uniform16 for
the grid; the sliding mode's frame every 2 s), the same layouts (tasks/family.py), the same prompt wording
(tasks/prompts.py) and the family's processor (anyres pixels, the llava_llama_3 template, image positions) —
followed by the answer's tokens and `<|eot_id|>`, the only positions the loss counts.

Tasks and their share: fast caption (grid + preamble + the fast query), "Describe this video in detail." (the
`ask` default), questions from the facts, first frame (no preamble), frame pair with the previous caption,
summary of the per-frame captions (text only) and re-captioning of a short prompt (text only).

Sources: the synthetic generator (`SyntheticSource`, index → seed, rendered in memory) or ShareGPT4Video records with video files (`RecordSource`:
detailed captions, per-keyframe captions with their times, summaries and QA where the record has them). Frames
are drawn clean: what H.264 changes (4:2:0 chroma, blocking) vanishes in the grid's 3x downscale to the canvas.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from PIL import Image

from videocap.engine.request import SamplingParams
from videocap.models.llava_next.processor import LlavaNextProcessor
from videocap.models.llava_next.prompt import DEFAULT_QUERY, EOT_TOKEN, Turn
from videocap.tasks.family import family
from videocap.tasks.prompts import Step, render, summary_lines
from videocap.train import language, render as draw
from videocap.train.scene import Scene, sample_scene
from videocap.video.sampling import Uniform16

FAMILY = family("llava_next")


class Task(Enum):
    FAST = "fast"
    DESCRIBE = "describe"
    QA = "qa"
    FIRST = "first"
    PAIR = "pair"
    SUMMARY = "summary"
    RECAPTION = "recaption"


TASK_WEIGHTS = {Task.FAST: 0.26, Task.DESCRIBE: 0.06, Task.QA: 0.2, Task.FIRST: 0.1, Task.PAIR: 0.22,
                Task.SUMMARY: 0.1, Task.RECAPTION: 0.06}


@dataclass(frozen=True)
class Prompted:
    """What one example asks and answers, before tokenization."""

    text: str
    answer: str
    image: Image.Image | None = None
    preamble: bool = False


@dataclass
class Example:
    input_ids: torch.Tensor  # (T,) prompt + answer + eot
    labels: torch.Tensor  # (T,) the next token to predict at each position; -100 where nothing is learnt
    image_mask: torch.Tensor  # (T,) bool
    pixels: torch.Tensor | None  # (tiles, 3, S, S)
    size: tuple[int, int] | None  # the image's (width, height)


def frames_at(scene: Scene, times: list[float]) -> list[np.ndarray]:
    return [draw.frame(scene, t) for t in times]


def grid_times(scene: Scene) -> list[float]:
    """The uniform16 frames' times in the clip's MP4 (the fast mode and `ask` sample these)."""
    return [i / scene.fps for i in Uniform16().select(0, scene.num_frames, scene.fps)]


def synthetic_prompted(scene: Scene, task: Task, rng: random.Random) -> Prompted:
    variant = rng.randrange(3)
    if task in (Task.FAST, Task.DESCRIBE, Task.QA):
        image = FAMILY.fast_layout(frames_at(scene, grid_times(scene)))
        if task is Task.QA:
            qa = rng.choice(language.qa_pairs(scene))
            return Prompted(qa.question, qa.answer, image, True)
        text = render(FAMILY.prompts.fast, Step.FAST) if task is Task.FAST else DEFAULT_QUERY
        return Prompted(text, language.detailed_caption(scene, variant), image, True)
    if task is Task.FIRST:
        image = FAMILY.frame(frames_at(scene, [0.0])[0])
        return Prompted(render(FAMILY.prompts.first, Step.FIRST, t=0), language.first_frame_caption(scene, variant),
                        image, FAMILY.prompts.first_preamble)
    times = language.keyframe_times(scene)
    captions = [language.first_frame_caption(scene, rng.randrange(3))]
    captions += [language.pair_caption(scene, k, rng.randrange(3)) for k in range(len(scene.events))]
    if task is Task.PAIR:
        k = rng.randrange(len(scene.events))
        a, b = frames_at(scene, [times[k], times[k + 1]])
        text = render(FAMILY.prompts.pair, Step.PAIR, i=k, j=k + 1, t1=int(times[k]), t2=int(times[k + 1]),
                      previous=captions[k])
        return Prompted(text, captions[k + 1], FAMILY.pair_layout(a, b), FAMILY.prompts.pair_preamble)
    if task is Task.SUMMARY:
        text = render(FAMILY.prompts.summary, Step.SUMMARY, captions=summary_lines(list(zip(times, captions))))
        return Prompted(text, language.summary(scene, variant))
    text = render(FAMILY.prompts.recaption, Step.RECAPTION, text=language.t2v_prompt(scene, variant))
    return Prompted(text, language.detailed_caption(scene, variant))


def encode(processor: LlavaNextProcessor, p: Prompted) -> Example:
    """Tokenize `p` exactly as the engine's request would be, then append the answer and `<|eot_id|>`."""
    image = processor.prepare_image(p.image) if p.image is not None else None
    request = processor.request([Turn(p.text)], SamplingParams(), image=image, preamble=p.preamble)
    tokenizer = processor.tokenizer
    answer = tokenizer.encode(p.answer, add_special_tokens=False).ids + [tokenizer.token_to_id(EOT_TOKEN)]
    ids = list(request.token_ids) + answer
    n = len(request.token_ids)
    labels = [-100] * (n - 1) + answer + [-100]  # position i predicts token i + 1
    mask = list(request.image_mask or [False] * n) + [False] * len(answer)
    return Example(torch.tensor(ids), torch.tensor(labels), torch.tensor(mask),
                   image.input.pixels if image is not None else None,
                   image.input.sizes[0] if image is not None else None)


class SyntheticSource:
    """Example `index` → a fresh scene (seed = index) and a task drawn by TASK_WEIGHTS: the same on every run."""

    def __init__(self, processor: LlavaNextProcessor, weights: dict[Task, float] | None = None):
        self.processor = processor
        self.weights = weights or TASK_WEIGHTS

    def __call__(self, index: int) -> Example:
        rng = random.Random(f"example/{index}")
        task = rng.choices(list(self.weights), list(self.weights.values()))[0]
        return encode(self.processor, synthetic_prompted(sample_scene(index), task, rng))
