"""What the captioning modes return: `CaptionResult` (fast, slide), `CaptionFailure` (one video of several that
could not be captioned), `SummaryResult`, `RecaptionResult`.

Times are exact seconds from the start of the video (the sampled frames' presentation times); only prompts use
the trained whole-second form. `to_dict()` is the `--json` record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from videocap.errors import VideocapError


@dataclass(frozen=True)
class Segment:
    """A caption of the video between two frames (a lone frame: start == end)."""

    start: float  # seconds
    end: float  # seconds
    text: str


@dataclass(frozen=True)
class CaptionResult:
    video: str
    mode: str  # "fast" or "slide"
    caption: str  # fast: the answer; slide: the summary
    segments: tuple[Segment, ...]  # slide: the first frame's caption, then one per adjacent pair
    frame_timestamps: tuple[float, ...]  # seconds, the frames the model saw
    prompt_tokens: int  # over every request the caption took
    new_tokens: int
    requests: int
    finish_reason: str  # of the request that produced `caption`
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    summary_levels: int = 0  # slide: 1 = one summary; more = hierarchical (summaries of groups, then of those)
    peak_frames_held: int = 0  # decoded frames held at once (slide streams: at most 2)
    model: str = ""
    warnings: tuple[str, ...] = ()
    failed: ClassVar[bool] = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CaptionFailure:
    """A video of several that failed while it was being captioned (a decode error mid-stream, a summary that
    cannot fit the context); the other videos' results are unaffected. `error` is the reason in one line (the
    path is in `video`); `exception` is the typed error itself, to inspect or re-raise."""

    video: str
    mode: str  # "fast" or "slide"
    model: str
    error: str
    exception: VideocapError = field(compare=False, repr=False)
    failed: ClassVar[bool] = True

    @classmethod
    def of(cls, video: str, mode: str, model: str, exception: VideocapError) -> CaptionFailure:
        reason = " ".join(str(exception).split())  # one line
        return cls(video, mode, model, reason.removeprefix(f"{video}: "), exception)

    def to_dict(self) -> dict:
        return {"video": self.video, "mode": self.mode, "model": self.model, "error": self.error}


@dataclass(frozen=True)
class SummaryResult:
    source: str  # the file and record (or the video) the captions came from
    summary: str
    segments: tuple[Segment, ...]  # the captions summarized, with their times
    prompt_tokens: int
    new_tokens: int
    requests: int
    finish_reason: str
    levels: int  # 1 = one summary; more = hierarchical
    timings: dict[str, float] = field(default_factory=dict)
    reference: str | None = None  # a dataset record's own whole-video caption (idx "-1"), for comparison
    model: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RecaptionResult:
    prompt: str  # the short text-to-video prompt
    caption: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str
    timings: dict[str, float] = field(default_factory=dict)
    model: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
