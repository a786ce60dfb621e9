"""One FFmpeg decoder over one open file: seeking, decoding forward to a frame, single keyframes, damage.

Owns the state of a single decode position (container, codec, frames produced ahead of need). Knows nothing of
RGB, sampling or threads across decoders: `decode.VideoReader` runs one of these per worker and converts what
they return. All times are seconds from the video stream's first frame.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction

import av

from videocap.errors import CorruptVideoError, TruncatedVideoError
from videocap.video.probe import open_container
from videocap.video.sampling import Timeline

# Without a container index we cannot tell whether a keyframe lies ahead: decode forward up to this far
# rather than seek (a seek could land on the keyframe we started from and redo the same work).
FORWARD_WITHOUT_INDEX_S = 5.0
# How far back to retry when a seek lands after its target (coarse seeks in some formats).
SEEK_BACKOFF_S = (0.0, 0.25, 1.0, 4.0, 16.0, None)
SAME_TIME_S = 1e-6


class SeekMode(str, Enum):
    EXACT = "exact"
    KEYFRAME = "keyframe"


@dataclass(frozen=True)
class Keyframes:
    """Keyframes from the container's index, in the index's own stamps (decode time in MP4) and in seconds.

    MP4 index stamps are decode times, a frame or two ahead of presentation times when the stream has
    B-frames: they choose where to seek and which keyframe is nearest, never the reported time of a frame.
    """

    seconds: list[float] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    @classmethod
    def from_index(cls, stream, time_base: Fraction, start: int) -> Keyframes:
        stamps = sorted({e.timestamp for e in stream.index_entries if e.is_keyframe})
        return cls([float((s - start) * time_base) for s in stamps], stamps)

    def __bool__(self) -> bool:
        return bool(self.seconds)

    def nearest(self, t: float) -> int:
        """Index stamp of the keyframe nearest `t` (the earlier one on a tie)."""
        i = bisect.bisect_left(self.seconds, t)
        j = min(range(max(0, i - 1), min(i + 1, len(self.seconds))), key=lambda k: (abs(self.seconds[k] - t), k))
        return self.stamps[j]

    def up_to(self, seconds: float) -> Keyframes:
        keep = [k for k, s in enumerate(self.seconds) if s <= seconds]
        return Keyframes([self.seconds[k] for k in keep], [self.stamps[k] for k in keep])


@dataclass(frozen=True)
class StreamFacts:
    """What every decoder of one file shares: fixed once the reader has described the file."""

    path: str
    stream_index: int
    timeline: Timeline
    keys: Keyframes
    time_base: Fraction
    start: int
    allow_partial: bool

    @property
    def half_frame(self) -> float:
        return 0.5 / self.timeline.fps

    def seek_saves_work(self, now: float, t: float) -> bool:
        """Whether going from `now` to `t` is better done by seeking: a keyframe lies after `now`, at or before `t`."""
        if not self.keys:
            return t - now > FORWARD_WITHOUT_INDEX_S
        k = bisect.bisect_right(self.keys.seconds, now + self.half_frame)
        return k < len(self.keys.seconds) and self.keys.seconds[k] <= t

    def missing(self, t: float, got: float) -> bool:
        """Whether the timeline has a frame nearer to `t` than the one decoded (so the decoder skipped it)."""
        tl = self.timeline
        if tl.times is None:
            expected = min(max(round(t * tl.fps), 0), tl.num_frames - 1) / tl.fps
        else:
            i = bisect.bisect_left(tl.times, t)
            expected = min(tl.times[max(0, i - 1) : i + 1], key=lambda c: abs(c - t))
        return abs(got - t) > abs(expected - t) + 0.25 / tl.fps


class Decoder:
    """A decode position in one file. `exact(t)` and `keyframe(t)` return av.VideoFrames.

    Threading is chosen for the mode at construction: exact mode decodes runs of frames and uses frame and slice
    threads; keyframe mode decodes single frames and drains the decoder after each, which frame threading
    makes several times slower, so slices only.
    """

    def __init__(self, facts: StreamFacts, mode: SeekMode, threads: int, warnings: list[str], opened=None):
        self.facts, self.mode, self.threads, self.warnings = facts, mode, threads, warnings
        self._container, self._stream = opened if opened is not None else open_container(facts.path, light=True)
        self._configure()
        self._seekable = True
        self._frames: Iterator | None = None  # what the decoder produces from the current position
        self._prev = None  # last frame taken from the decoder
        self._pending = None  # a frame decoded past the last target, not yet taken
        self._drained = False  # the decoder was flushed after a target: nothing more without a seek
        self._drain_at: float | None = None  # flush once the packet shown at this time is in
        self._target: float | None = None  # the time exact mode is decoding towards
        self._last_key: tuple[int, object] | None = None  # (index stamp, frame) of the last keyframe decoded
        # One converter per decoder: it keeps its SwsContext between frames (5x cheaper than a new one each).
        self.reformatter = av.video.reformatter.VideoReformatter()

    def close(self) -> None:
        self._container.close()

    def time(self, frame) -> float:
        ts = frame.pts if frame.pts is not None else frame.dts
        return float((ts - self.facts.start) * self.facts.time_base) if ts is not None else 0.0

    # -- exact mode ----------------------------------------------------------------------------------------

    def exact(self, t: float, after: float | None = None):
        """The frame nearest `t`. `after`, the next target if any, decides whether to keep decoding past `t`."""
        # When the next target needs a seek anyway, flush the decoder as soon as the target's packet is in:
        # the target comes out without decoding the frames a threaded or reordering decoder keeps in flight.
        self._drain_at = t if after is None or self._seek_saves_work(t, after) else None
        self._target = t
        try:
            if self._should_seek(t):
                self._seek(t)
            frame = self._nearest(t)
        finally:
            self._drain_at = self._target = None
        if frame is None:  # the stream ended before the first frame we needed
            raise TruncatedVideoError(self.facts.path, f"the stream ends before {t:.3f} s")
        if self.facts.missing(t, self.time(frame)):
            # A frame the timeline has did not come out: frame-threaded decoders drop undecodable frames silently.
            self._damaged(f"the frame at {t:.3f} s could not be decoded (nearest: {self.time(frame):.3f} s)", None)
        return frame

    def _seek_saves_work(self, now: float, t: float) -> bool:
        return self._seekable and self.facts.seek_saves_work(now, t)

    def _should_seek(self, t: float) -> bool:
        here = self._prev if self._prev is not None else self._pending
        if self._frames is None or here is None:
            return True
        now = self.time(here)
        if t < now - self.facts.half_frame:
            return True  # behind us: only a seek goes back
        if self._drained and (self._pending is None or self.time(self._pending) < t):
            return True
        return self._seek_saves_work(now, t)

    def _seek(self, t: float) -> None:
        """Position the decoder at or before `t`, retrying further back when a seek overshoots."""
        for back in SEEK_BACKOFF_S if self._seekable else (None,):
            self._seek_to(None if back is None else self._stamp(max(0.0, t - back)))
            first = self._next_frame()
            if first is None and back is not None:
                continue
            self._pending, self._prev = first, None
            if first is None or self.time(first) <= t + self.facts.half_frame:
                return

    def _nearest(self, t: float):
        """Decode forward to the frame whose presentation time is nearest `t` (the earlier one on a tie)."""
        # At a constant rate a frame that covers t is nearer than the next one once t is within half a frame
        # of it; at a variable rate only the next frame's time tells.
        reach = SAME_TIME_S if self.facts.timeline.times is not None else self.facts.half_frame
        while True:
            frame = self._next_frame()
            if frame is None:
                return self._prev
            ft = self.time(frame)
            if ft <= t + SAME_TIME_S:
                self._prev = frame
                if t - ft < reach:
                    return frame
                continue
            if self._prev is not None and t - self.time(self._prev) <= ft - t:
                self._pending = frame  # keep it for the next target
                return self._prev
            self._prev = frame
            return frame

    # -- keyframe mode -------------------------------------------------------------------------------------

    def keyframe(self, t: float):
        """The keyframe nearest `t` from the index; without one, the keyframe a backward seek lands on."""
        if not self._seekable:
            return self.exact(t)  # formats without seeking (GIF) are read forward anyway
        if not self.facts.keys:
            self._seek_to(self._stamp(t))
            return self.exact(t) if not self._seekable else self._first_keyframe(None)
        stamp = self.facts.keys.nearest(t)
        if self._last_key is not None and self._last_key[0] == stamp:
            return self._last_key[1]  # several targets share this keyframe
        self._seek_to(stamp)
        frame = self._first_keyframe(stamp)
        self._last_key = (stamp, frame)
        return frame

    def _first_keyframe(self, stamp: int | None):
        """Decode just the first keyframe from here (at or after index stamp `stamp`), then drain the decoder."""
        self._frames = None  # the decoder is drained below: the next read seeks again
        for packet in self._packets():
            if packet.size and not packet.is_keyframe:
                continue  # a coarse seek landed mid-GOP
            if packet.size and stamp is not None and max(_or(packet.dts), _or(packet.pts)) < stamp:
                continue  # the seek landed on an earlier keyframe (MP4 seeks by presentation time)
            # Flushing right after the keyframe returns it without decoding the frames that follow it.
            frames = self._decode(packet) + (self._decode(None) if packet.size else [])
            if frames:
                return frames[0]
        at = float(((stamp if stamp is not None else self.facts.start) - self.facts.start) * self.facts.time_base)
        raise TruncatedVideoError(self.facts.path, f"no keyframe could be decoded at {at:.3f} s")

    # -- machinery -----------------------------------------------------------------------------------------

    def _configure(self) -> None:
        cc = self._stream.codec_context
        cc.thread_type = "AUTO" if self.mode is SeekMode.EXACT else "SLICE"
        cc.thread_count = self.threads

    def _seek_to(self, stamp: int | None) -> None:
        """Seek to the keyframe at or before `stamp` (stream time base; None: the start)."""
        if self._seekable:
            try:
                target = self.facts.start if stamp is None else stamp
                self._container.seek(target, stream=self._stream, backward=True)
            except av.error.FFmpegError:
                self._seekable = False  # e.g. GIF: read forward from the start instead
        if not self._seekable:
            self._container.close()
            self._container, self._stream = open_container(self.facts.path, light=True)
            self._configure()
        self._frames, self._prev, self._pending, self._drained = self._produce(), None, None, False

    def _produce(self) -> Iterator:
        cc = self._stream.codec_context
        for packet in self._packets():
            skip = "NONREF" if self._skippable(packet) else "DEFAULT"
            if cc.skip_frame != skip:
                cc.skip_frame = skip
            yield from self._decode(packet)
            if self._drain_at is not None and packet.pts is not None and self._is_target(packet.pts):
                self._drained = True
                yield from self._decode(None)
                return

    def _skippable(self, packet) -> bool:
        """Whether the decoder may drop this packet's frame if no other frame references it.

        Frames more than a frame before the target are never returned, and those nothing references (most
        B-frames) need not be decoded at all. At a variable rate the frame before the target may be far, so
        nothing is skipped there.
        """
        if self._target is None or packet.pts is None or self.facts.timeline.times is not None:
            return False
        return float((packet.pts - self.facts.start) * self.facts.time_base) < self._target - 2 * self.facts.half_frame

    def _is_target(self, pts: int) -> bool:
        reach = SAME_TIME_S if self.facts.timeline.times is not None else self.facts.half_frame
        return abs(float((pts - self.facts.start) * self.facts.time_base) - self._drain_at) <= reach

    def _packets(self) -> Iterator:
        try:
            yield from self._container.demux(self._stream)
        except av.error.FFmpegError as e:
            self._damaged(f"reading the stream failed ({e})", e)

    def _decode(self, packet) -> list:
        try:
            frames = self._stream.codec_context.decode(packet)
        except av.error.FFmpegError as e:
            at = packet.pts if packet is not None and packet.pts is not None else None
            where = f" at {float((at - self.facts.start) * self.facts.time_base):.3f} s" if at is not None else ""
            self._damaged(f"decoding failed{where} ({e})", e)
            return []
        for frame in frames:
            if frame.is_corrupt:
                self._damaged(f"corrupt frame at {self.time(frame):.3f} s", None)
        return frames

    def _next_frame(self):
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return next(self._frames, None) if self._frames is not None else None

    def _damaged(self, reason: str, cause: Exception | None) -> None:
        if not self.facts.allow_partial:
            raise CorruptVideoError(self.facts.path, f"{reason}; pass --allow-partial to skip damaged parts") from cause
        if reason not in self.warnings:
            self.warnings.append(reason)

    def _stamp(self, seconds: float) -> int:
        return self.facts.start + round(seconds / self.facts.time_base)


def _or(value: int | None) -> int:
    return value if value is not None else -(2**62)
