"""Sliding captioning: the first frame, then what changed between each adjacent pair, then a summary.

Frames (one every N seconds, or keyframes) are decoded as the steps need them and released as soon as the next
pair is composed: a task holds at most two decoded frames, however long the video (`peak_frames_held`). A frame
that decodes as the one before it (`--seek keyframe` between sparse keyframes, a damaged span read with
allow_partial) is skipped with a warning rather than captioned as a "change" against itself. Each
pair's request carries the previous caption, so one video's requests run one after another; many videos run
side by side through the driver. Prompts write each frame's actual time in whole seconds ("12.00"), frames
numbered from 0 as the captioner demo does; segments keep exact seconds. The summary is summarize.py's,
hierarchical when the captions outgrow the context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from videocap.engine.request import SamplingParams
from videocap.errors import CorruptVideoError
from videocap.tasks.driver import Ask, TaskGen, Usage
from videocap.tasks.family import Family
from videocap.tasks.plan import VideoPlan
from videocap.tasks.prompts import Step, check_template, render, whole_seconds
from videocap.tasks.results import CaptionResult, Segment
from videocap.tasks.summarize import SummaryOptions, summary_steps
from videocap.video import DecodedFrame, VideoReader


@dataclass(frozen=True)
class SlideOptions:
    sampling: SamplingParams  # per-frame and pair captions
    summary: SummaryOptions  # the final summary (its instruction and prompt are the mode's)
    first_prompt: str | None = None  # placeholders: prompts.PLACEHOLDERS[Step.FIRST]
    pair_prompt: str | None = None  # placeholders: prompts.PLACEHOLDERS[Step.PAIR]
    model: str = ""

    def __post_init__(self):
        if self.first_prompt is not None:
            check_template(self.first_prompt, Step.FIRST, "--first-prompt")
        if self.pair_prompt is not None:
            check_template(self.pair_prompt, Step.PAIR, "--prompt")


class FrameCount:
    """Decoded frames a task holds right now, and the most it ever held."""

    def __init__(self):
        self.now = self.peak = 0

    def take(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def drop(self) -> None:
        self.now -= 1


def first_text(family: Family, options: SlideOptions, t: float) -> str:
    template = options.first_prompt if options.first_prompt is not None else family.prompts.first
    return render(template, Step.FIRST, t=whole_seconds(t))


def pair_text(family: Family, options: SlideOptions, i: int, t1: float, t2: float, previous: str) -> str:
    template = options.pair_prompt if options.pair_prompt is not None else family.prompts.pair
    return render(template, Step.PAIR, i=i, j=i + 1, t1=whole_seconds(t1), t2=whole_seconds(t2), previous=previous)


def slide_task(plan: VideoPlan, family: Family, options: SlideOptions) -> TaskGen:
    usage = Usage()
    held = FrameCount()
    reader = VideoReader(plan.path, allow_partial=plan.allow_partial, device=plan.decode_device)
    try:
        frames = reader.iter_frames(plan.timestamps, plan.seek, plan.max_side)
        prev = _next(frames, held, usage)
        if prev is None:  # a damaged file read with allow_partial can lose every planned frame
            raise CorruptVideoError(plan.path, "no frame of the plan could be decoded")
        image = family.frame(prev.image)
        [reply] = yield [Ask(first_text(family, options, prev.timestamp), image, family.prompts.first_preamble,
                             options.sampling, family.hd_num.get(Step.FIRST))]
        usage.add([reply])
        segments = [Segment(prev.timestamp, prev.timestamp, reply.text)]
        timestamps = [prev.timestamp]
        i = repeated = 0
        while (cur := _next(frames, held, usage)) is not None:
            if cur.timestamp <= prev.timestamp:  # the frame before again (keyframe seek, a damaged span): no pair
                del cur
                held.drop()
                repeated += 1
                continue
            t0 = time.perf_counter()
            image = family.pair_layout(prev.image, cur.image)
            usage.decode_video += time.perf_counter() - t0
            text = pair_text(family, options, i, prev.timestamp, cur.timestamp, segments[-1].text)
            prev = cur
            held.drop()  # the earlier frame lives on only inside the composed pair image
            [reply] = yield [Ask(text, image, family.prompts.pair_preamble, options.sampling,
                                 family.hd_num.get(Step.PAIR))]
            usage.add([reply])
            segments.append(Segment(segments[-1].end, cur.timestamp, reply.text))
            timestamps.append(cur.timestamp)
            i += 1
        del prev
        held.drop()
        warnings = (*plan.warnings, *reader.warnings)
        if repeated:
            warnings += (f"{repeated} sampled frame(s) decoded as the frame before (keyframe seek or a damaged span) "
                         "were skipped: a pair of one frame shows no change",)
    finally:
        reader.close()
    items = [(s.end, s.text) for s in segments]
    reply, levels = yield from summary_steps(family, items, options.summary, usage)
    return CaptionResult(
        plan.path, "slide", reply.text, tuple(segments), tuple(timestamps), usage.prompt_tokens, usage.new_tokens,
        usage.requests, reply.finish_reason, usage.timings(), levels, held.peak, options.model,
        tuple(dict.fromkeys(warnings)),
    )


def _next(frames, held: FrameCount, usage: Usage) -> DecodedFrame | None:
    t0 = time.perf_counter()
    frame = next(frames, None)
    usage.decode_video += time.perf_counter() - t0
    if frame is not None:
        held.take()
    return frame
