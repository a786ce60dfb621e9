"""Frame sampling: which frames of a video to look at.

Pure index arithmetic over a `Timeline` (frame count, average fps and, for variable-frame-rate files, the exact
time of every frame). Nothing here decodes: `decode.py` turns the chosen frames' timestamps into pixels. Each
strategy reproduces the formula of the reference code it names, including its integer truncations and numpy's
round-half-to-even, because ShareGPT4Video's models were trained and evaluated on exactly those frames.

Windows are [start, end] in seconds and follow the captioner demo's conversion: first frame `int(start*fps)`,
end frame (exclusive) `min(int(end*fps), N)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from videocap.errors import WindowError


@dataclass(frozen=True)
class Timeline:
    """Where the frames of a video are in time. Frame i is shown at `time_of(i)` seconds from the first frame.

    `times` holds the exact presentation time of every frame (display order) when the rate is variable or the
    times were counted; `None` means constant rate, frame i at i / fps.
    """

    num_frames: int
    fps: float
    times: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.num_frames < 1:
            raise ValueError(f"a timeline needs at least one frame, got {self.num_frames}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive and finite, got {self.fps}")
        if self.times is not None and len(self.times) != self.num_frames:
            raise ValueError(f"{len(self.times)} frame times for {self.num_frames} frames")

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last one."""
        if self.times is None:
            return self.num_frames / self.fps
        return self.times[-1] + 1.0 / self.fps

    def time_of(self, index: int) -> float:
        assert 0 <= index < self.num_frames, (index, self.num_frames)
        return self.times[index] if self.times is not None else index / self.fps

    def index_at(self, seconds: float) -> int:
        """The last frame shown at or before `seconds` (the reference's `int(seconds * fps)` at constant rate)."""
        if self.times is None:
            return int(seconds * self.fps)
        return int(np.searchsorted(np.asarray(self.times), seconds, side="right")) - 1


@dataclass(frozen=True)
class Uniform16:
    """ShareGPT4Video-8B's `run.py`: seg = (N-1)/n, frame k = int(seg/2) + round(seg*k) (half to even)."""

    n: int = 16

    def __post_init__(self):
        _check_count(self.n)

    def select(self, first: int, end: int, fps: float) -> list[int]:
        seg = float(end - first - 1) / self.n
        start = int(seg / 2)
        return [first + start + int(np.round(seg * k)) for k in range(self.n)]


@dataclass(frozen=True)
class Uniform:
    """n frames spread evenly, first and last frame included: the captioner demo's `get_seq_frames`.

    n = 1 gives the first frame and n = 2 the first and the last (the reference divides by n - 2 there).
    """

    n: int

    def __post_init__(self):
        _check_count(self.n)

    def select(self, first: int, end: int, fps: float) -> list[int]:
        if self.n == 1:
            return [first]
        inner = self.n - 2
        seg = float(end - first) / inner if inner else 0.0
        middle = []
        for k in range(inner):
            lo, hi = int(np.round(seg * k)), int(np.round(seg * (k + 1)))
            middle.append(min(first + (lo + hi) // 2, end - 1))
        return [first, *middle, end - 1]


@dataclass(frozen=True)
class Every:
    """ShareCaptioner-Video's demo: one frame every `int(seconds * fps)` frames (at least 1) from the window's start."""

    seconds: float = 2.0

    def __post_init__(self):
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"the interval must be a positive number of seconds, got {self.seconds}")

    def select(self, first: int, end: int, fps: float) -> list[int]:
        step = max(1, int(self.seconds * fps))
        return list(range(first, end, step))


@dataclass(frozen=True)
class Fps:
    """`rate` frames per second, each at the centre of its 1/rate interval (LLaVA's `fps` sampling).

    When that would exceed `max_frames`, the interval widens so that `max_frames` frames cover the whole window
    instead of truncating its tail.
    """

    rate: float
    max_frames: int | None = None

    def __post_init__(self):
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"the sampling rate must be a positive number of frames per second, got {self.rate}")
        if self.max_frames is not None:
            _check_count(self.max_frames)

    def select(self, first: int, end: int, fps: float) -> list[int]:
        duration = (end - first) / fps
        delta = 1.0 / self.rate
        if self.max_frames is not None and duration / delta > self.max_frames:
            delta = duration / self.max_frames
        seconds = np.arange(delta / 2, duration + delta / 2, delta)
        picked = [first + int(i) for i in np.around(seconds * fps).astype(int) if first + i < end]
        if self.max_frames is not None:
            picked = picked[: self.max_frames]
        return picked or [first]


Strategy = Uniform16 | Uniform | Every | Fps


@dataclass(frozen=True)
class SamplePlan:
    """The frames a strategy picked: indices into the timeline and their presentation times in seconds."""

    indices: tuple[int, ...]
    timestamps: tuple[float, ...]


def plan(
    strategy: Strategy, timeline: Timeline, start: float | None = None, end: float | None = None
) -> SamplePlan:
    """Pick frames of `timeline` with `strategy`, inside the [start, end] window (seconds) when one is given.

    Raises `WindowError` (without a path; the caller adds it) for a window outside the video or an empty one.
    """
    first, stop = frame_range(timeline, start, end)
    indices = strategy.select(first, stop, timeline.fps)
    assert indices and all(first <= i < stop for i in indices), (indices, first, stop)
    return SamplePlan(tuple(indices), tuple(timeline.time_of(i) for i in indices))


def frame_range(timeline: Timeline, start: float | None, end: float | None) -> tuple[int, int]:
    """The frames [first, stop) inside the window; the whole video without one."""
    n, length = timeline.num_frames, timeline.duration
    if start is not None and (start < 0 or not math.isfinite(start)):
        raise WindowError(None, f"window start {start} s is before the start of the video")
    if end is not None and not math.isfinite(end):
        raise WindowError(None, f"window end {end} s is not a number of seconds")
    if start is not None and end is not None and end <= start:
        raise WindowError(None, f"window [{start}, {end}] s is empty: its end must come after its start")
    if start is not None and start >= length:
        raise WindowError(None, f"window starts at {start} s but the video is only {length:.3f} s long")
    if end is not None and end <= 0:
        raise WindowError(None, f"window ends at {end} s, before the start of the video")
    first = max(0, timeline.index_at(start)) if start is not None else 0
    stop = min(timeline.index_at(end), n) if end is not None else n
    if stop <= first:
        raise WindowError(None, f"window [{start}, {end}] s holds no frame of the video")
    return first, stop


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of frames must be a positive integer, got {n!r}")
