"""Fast captioning: one request over a fixed number of frames composed in the family's layout.

The frames (uniform16 over the video or window by default, or keyframes) are decoded together, laid out as one
image (ShareGPT4Video-8B's grid, ShareCaptioner-Video's strip) and captioned with the family's fast prompt plus
the user's instruction. Its cost does not grow with the video's length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

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


def fast_task(plan: VideoPlan, family: Family, options: FastOptions) -> TaskGen:
    usage = Usage()
    t0 = time.perf_counter()
    with VideoReader(plan.path, allow_partial=plan.allow_partial) as reader:
        frames = reader.read(plan.timestamps, plan.seek, plan.max_side)
        warnings = (*plan.warnings, *reader.warnings)
    image = family.fast_layout([f.image for f in frames])
    timestamps = tuple(f.timestamp for f in frames)
    held = len({id(f.image) for f in frames})
    del frames
    usage.decode_video = time.perf_counter() - t0
    text = fast_text(family, options, timestamps)
    [reply] = yield [Ask(text, image, family.prompts.fast_preamble, options.sampling)]
    usage.add([reply])
    return CaptionResult(
        plan.path, "fast", reply.text, (), timestamps, usage.prompt_tokens, usage.new_tokens, usage.requests,
        reply.finish_reason, usage.timings(), 0, held, options.model, tuple(dict.fromkeys(warnings)),
    )
