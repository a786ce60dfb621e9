"""Fast captioning: one request over a fixed number of frames composed in the family's layout.

The frames (uniform16 over the video or window by default, or keyframes) are decoded together, laid out as one
image (ShareGPT4Video-8B's grid, ShareCaptioner-Video's strip) and captioned with the family's fast prompt plus
the user's instruction. Its cost does not grow with the video's length.

`fast_input` is the video half (decode + layout), `fast_task` the model half; batch captioning runs the first in
decode worker processes and hands the task a ready `FastInput` (its image already prepared by the processor).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from videocap.engine.request import SamplingParams
from videocap.tasks.driver import Ask, TaskGen, Usage
from videocap.tasks.family import Family
from videocap.tasks.plan import VideoPlan
from videocap.tasks.prompts import Step, check_template, render, whole_seconds, with_instruction
from videocap.tasks.results import CaptionResult
from videocap.video import VideoReader


@dataclass(frozen=True)
class FastOptions:
    sampling: SamplingParams
    instruction: str | None = None
    prompt: str | None = None  # replaces the family's fast prompt; placeholders: prompts.PLACEHOLDERS[Step.FAST]
    model: str = ""

    def __post_init__(self):
        if self.prompt is not None:
            check_template(self.prompt, Step.FAST)


def fast_text(family: Family, options: FastOptions, timestamps: tuple[float, ...]) -> str:
    template = options.prompt if options.prompt is not None else family.prompts.fast
    duration = whole_seconds(timestamps[-1] - timestamps[0]) if timestamps else 0
    return with_instruction(render(template, Step.FAST, frames=len(timestamps), duration=duration),
                            options.instruction)


@dataclass(frozen=True)
class FastInput:
    """A video's fast-mode input, decoded: its layout image, the times of the frames in it, and how it went."""

    image: Any  # a PIL image, or what the family's processor made of it (`prepare_image`) ahead of time
    timestamps: tuple[float, ...]
    warnings: tuple[str, ...]
    decode_seconds: float  # decoding and laying out (and preparing, when done ahead)
    held: int  # distinct decoded frames held at once
    stages: tuple[tuple[str, float], ...] = ()  # decode_seconds split: ("frames", s), ("layout", s), ("prepare", s)


def fast_input(plan: VideoPlan, family: Family, *, threads: int = 0, prepare=None) -> FastInput:
    """Decode `plan`'s frames and lay them out; `prepare` (a processor's `prepare_image`) turns the image into the
    model's input here too. `threads`: decoder threads (0: one per core)."""
    t0 = time.perf_counter()
    with VideoReader(plan.path, allow_partial=plan.allow_partial, threads=threads, device=plan.decode_device) as reader:
        frames = reader.read(plan.timestamps, plan.seek, plan.max_side)
        warnings = (*plan.warnings, *reader.warnings)
    t1 = time.perf_counter()
    image = family.fast_layout([f.image for f in frames])
    timestamps = tuple(f.timestamp for f in frames)
    held = len({id(f.image) for f in frames})
    del frames
    t2 = time.perf_counter()
    if prepare is not None:
        image = prepare(image)
    t3 = time.perf_counter()
    stages = (("frames", t1 - t0), ("layout", t2 - t1), ("prepare", t3 - t2))
    return FastInput(image, timestamps, tuple(warnings), t3 - t0, held, stages)


def fast_task(plan: VideoPlan, family: Family, options: FastOptions, ready: FastInput | None = None) -> TaskGen:
    """The fast mode for `plan`: decodes it when the task starts, unless `ready` holds it decoded already."""
    usage = Usage()
    if ready is None:
        ready = fast_input(plan, family)
    usage.decode_video = ready.decode_seconds
    text = fast_text(family, options, ready.timestamps)
    image, ready = ready.image, replace(ready, image=None)  # the task holds no second reference to the pixels
    [reply] = yield [Ask(text, image, family.prompts.fast_preamble, options.sampling, family.hd_num.get(Step.FAST))]
    usage.add([reply])
    return CaptionResult(
        plan.path, "fast", reply.text, (), ready.timestamps, usage.prompt_tokens, usage.new_tokens, usage.requests,
        reply.finish_reason, usage.timings(), 0, ready.held, options.model, tuple(dict.fromkeys(ready.warnings)),
    )
