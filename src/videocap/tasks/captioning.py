"""The captioning modes as calls on a loaded model: `caption` (fast, slide), `summarize`, `recaption`.

Turns user arguments into plans, options and tasks, runs them all through one driver (so several videos, records
or prompts share the engine), and returns typed results. `videocap.api.Captioner` and the CLI call these.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from videocap.engine.request import SamplingParams
from videocap.errors import VideocapError
from videocap.tasks import driver
from videocap.tasks.family import Family, family
from videocap.tasks.fast import FastInput, FastOptions, fast_task
from videocap.tasks.plan import KeyframeOptions, VideoPlan, plan_video
from videocap.tasks.recaption import RecaptionOptions, recaption_task, recaption_text
from videocap.tasks.records import CaptionSet, from_record, read_captions
from videocap.tasks.results import CaptionFailure, CaptionResult, RecaptionResult, Segment, SummaryResult
from videocap.tasks.slide import SlideOptions, slide_task
from videocap.tasks.summarize import SummaryOptions, summary_task
from videocap.video import SeekMode

if TYPE_CHECKING:
    from videocap.api import Captioner

MODES = ("fast", "slide")
MAX_ACTIVE_VIDEOS = 16  # videos decoded and captioned at once (each holds a reader and up to 2 frames, or a grid)


def session_of(captioner: Captioner, context_limit: int | None = None) -> driver.Session:
    """The driver's view of `captioner`; `context_limit` lowers the tokens one request may hold (tests)."""
    limit = min(captioner.model.max_context(), getattr(captioner.engine, "max_len", None) or 1 << 62)
    if context_limit is not None:
        limit = min(limit, context_limit)
    return driver.Session(captioner.processor, captioner.engine, limit)


def family_of(captioner: Captioner) -> Family:
    return family(getattr(captioner, "family", "llava_next"))


def sampling_of(fam: Family, **generation) -> SamplingParams:
    """The family's generation defaults (its reference's answer budget and beam width) with the caller's changes:
    max_new_tokens, num_beams, temperature, top_p, top_k, seed, repetition_penalty."""
    return fam.sampling(**generation)


def plan_videos(videos: Sequence[str | os.PathLike | VideoPlan], mode: str, **plan_args) -> list[VideoPlan]:
    """Plan every video (probe, window, timestamps, keyframes) before any model work; paths or ready plans."""
    if mode not in MODES:
        raise VideocapError(f"unknown captioning mode {mode!r} (use {' or '.join(MODES)})")
    return [v if isinstance(v, VideoPlan) else plan_video(v, mode, **plan_args) for v in videos]


def caption(
    captioner: Captioner,
    videos: str | os.PathLike | VideoPlan | Sequence[str | os.PathLike | VideoPlan],
    mode: str = "fast",
    *,
    frames: int | str | None = None,
    seconds: float = 2.0,
    start: float | None = None,
    end: float | None = None,
    seek: SeekMode = SeekMode.EXACT,
    max_side: int | None = None,
    allow_partial: bool = False,
    keyframes: KeyframeOptions | None = None,
    instruction: str | None = None,
    prompt: str | None = None,
    first_prompt: str | None = None,
    summary_prompt: str | None = None,
    context_limit: int | None = None,
    progress: bool = False,
    on_result: Callable[[CaptionResult | CaptionFailure], None] | None = None,
    **generation,
) -> CaptionResult | list[CaptionResult | CaptionFailure]:
    """Caption one video (a result; a failure raises) or several (a list, in order, where a video that fails
    once captioning has started is a `CaptionFailure` and the others go on). See `videocap.api.Captioner.caption`.
    """
    single = isinstance(videos, (str, os.PathLike, VideoPlan))
    items = [videos] if single else list(videos)
    plans = plan_videos(items, mode, frames=frames, seconds=seconds, start=start, end=end, seek=seek,
                        max_side=max_side, allow_partial=allow_partial, keyframes=keyframes)
    session = session_of(captioner, context_limit)
    name = captioner.name
    make = task_maker(captioner, session, mode, instruction=instruction, prompt=prompt, first_prompt=first_prompt,
                      summary_prompt=summary_prompt, **generation)
    expected = [1] * len(plans) if mode == "fast" else [len(p.timestamps) + 1 for p in plans]

    def typed(index: int, result: CaptionResult | VideocapError) -> CaptionResult | CaptionFailure:
        if isinstance(result, VideocapError):
            return CaptionFailure.of(plans[index].path, mode, name, result)
        return result

    # One video alone raises its error as it is; of several, a failing one ends alone (a programming error still
    # stops them all).
    contain = () if single else (VideocapError,)
    results = _run(session, [make(p, None) for p in plans], expected, progress, f"captioning ({mode})", on_result,
                   contain=contain, typed=typed)
    return results[0] if single else results


def task_maker(captioner: Captioner, session: driver.Session, mode: str, *, instruction: str | None = None,
               prompt: str | None = None, first_prompt: str | None = None, summary_prompt: str | None = None,
               **generation) -> Callable[[VideoPlan, FastInput | None], driver.TaskGen]:
    """`make(plan, ready)`: the captioning task of `mode` for one planned video (`ready`: the fast mode's input
    decoded ahead, or None to decode in the task). Options are checked here, once."""
    fam = family_of(captioner)
    sampling = sampling_of(fam, **generation)
    name = captioner.name
    if mode == "fast":
        if first_prompt is not None or summary_prompt is not None:
            raise VideocapError("--first-prompt and --summary-prompt belong to the slide mode")
        options = FastOptions(sampling, instruction, prompt, name)
        return lambda plan, ready: fast_task(plan, fam, options, ready)
    if mode != "slide":
        raise VideocapError(f"unknown captioning mode {mode!r} (use {' or '.join(MODES)})")
    summary = SummaryOptions(sampling, session.limit, session.count, instruction, summary_prompt, name)
    slide = SlideOptions(sampling, summary, first_prompt, prompt, name)

    def make_slide(plan: VideoPlan, ready: FastInput | None) -> driver.TaskGen:
        assert ready is None, "the slide mode decodes its frames as its steps need them"
        return slide_task(plan, fam, slide)

    return make_slide


def summarize(
    captioner: Captioner,
    source: str | os.PathLike | dict | CaptionSet | Sequence[CaptionSet | dict | Segment | tuple[float, str]],
    *,
    interval: float | None = None,
    instruction: str | None = None,
    prompt: str | None = None,
    context_limit: int | None = None,
    progress: bool = False,
    on_result: Callable[[SummaryResult], None] | None = None,
    **generation,
) -> SummaryResult | list[SummaryResult]:
    """Summarize timed captions. See `videocap.api.Captioner.summarize`."""
    sets, single = caption_sets(source, interval)
    fam, session = family_of(captioner), session_of(captioner, context_limit)
    options = SummaryOptions(sampling_of(fam, **generation), session.limit, session.count, instruction, prompt,
                             captioner.name)
    results = _run(session, [summary_task(s, fam, options) for s in sets], [1] * len(sets), progress,
                   "summarizing", on_result)
    return results[0] if single else results


def caption_sets(source, interval: float | None = None) -> tuple[list[CaptionSet], bool]:
    """`source` as caption sets, and whether it was one set (a single result is returned then)."""
    if isinstance(source, (str, os.PathLike)):
        sets = read_captions(source, interval=interval)
        return sets, len(sets) == 1
    if isinstance(source, CaptionSet):
        return [source], True
    if isinstance(source, dict):
        return [from_record(source, "record", interval=interval)], True
    items = list(source)
    if items and all(isinstance(x, CaptionSet) for x in items):
        return items, False
    if items and all(isinstance(x, dict) for x in items):
        return [from_record(r, f"record {n}", interval=interval) for n, r in enumerate(items, 1)], False
    segments = []
    for x in items:
        if isinstance(x, Segment):
            segments.append(x)
        elif isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str):
            segments.append(Segment(float(x[0]), float(x[0]), x[1]))
        else:
            raise VideocapError(f"cannot summarize {x!r}: give Segments, (seconds, text) pairs, records or a file")
    if not segments:
        raise VideocapError("nothing to summarize: no captions given")
    return [CaptionSet("captions", tuple(segments))], True


def recaption(
    captioner: Captioner,
    texts: str | Sequence[str],
    *,
    instruction: str | None = None,
    prompt: str | None = None,
    progress: bool = False,
    on_result: Callable[[RecaptionResult], None] | None = None,
    **generation,
) -> RecaptionResult | list[RecaptionResult]:
    """Expand short text-to-video prompts into detailed captions. See `videocap.api.Captioner.recaption`."""
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    fam, session = family_of(captioner), session_of(captioner)
    options = RecaptionOptions(sampling_of(fam, **generation), instruction, prompt, captioner.name)
    for text in items:
        recaption_text(fam, options, text)  # refuse bad input before any request runs
    results = _run(session, [recaption_task(t, fam, options) for t in items], [1] * len(items), progress,
                   "re-captioning", on_result)
    return results[0] if single else results


def _run(session: driver.Session, tasks: list, expected: list[int], progress: bool, desc: str,
         on_result: Callable[[Any], None] | None, *, contain: tuple[type[Exception], ...] = (),
         typed: Callable[[int, Any], Any] = lambda _, result: result) -> list[Any]:
    """`tasks` through the driver with a progress bar; `typed(index, result)` turns what the driver gives (a
    result, or an exception of `contain`) into what the caller returns."""
    with tqdm(total=sum(expected), desc=desc, unit="req", file=sys.stderr, disable=not progress) as bar:
        def advance() -> None:
            if bar.n + 1 > bar.total:  # a hierarchical summary asks more than expected
                bar.total = bar.n + 1
            bar.update(1)

        results: list[Any] = [None] * len(tasks)

        def done(index: int, result: Any) -> None:
            results[index] = typed(index, result)
            if on_result is not None:
                on_result(results[index])

        driver.run(session, tasks, on_request=advance, max_active=MAX_ACTIVE_VIDEOS, on_result=done, contain=contain)
        return results
