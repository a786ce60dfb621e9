"""One FFmpeg decoder over one open file: seeking, decoding forward to a frame, single keyframes, damage.

Owns the state of a single decode position (container, codec, frames produced ahead of need). Knows nothing of
RGB, sampling or threads across decoders: `decode.VideoReader` runs one of these per worker and converts what
they return. All times are seconds from the video stream's start.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

import av

from videocap.errors import CorruptVideoError, TruncatedVideoError
from videocap.video.packets import Keyframes
from videocap.video.probe import open_container
from videocap.video.sampling import Timeline

# Without keyframe positions we cannot tell whether a keyframe lies ahead: decode forward up to this far
# rather than seek (a seek could land on the keyframe we started from and redo the same work).
FORWARD_WITHOUT_INDEX_S = 5.0
# How far before its target a seek is retried when it lands after it: some demuxers seek by decode time
# (MPEG-TS), others coarsely. After the last, decoding starts again from the beginning of the file.
SEEK_BACKOFF_S = (0.0, 0.25, 1.0, 4.0, 16.0)
SAME_TIME_S = 1e-6
_OVERSHOT = object()


class SeekMode(str, Enum):
    EXACT = "exact"
    KEYFRAME = "keyframe"


@dataclass(frozen=True)
class StreamFacts:
    """What every decoder of one file shares: fixed once the reader has described the file.

    `dts_timed`: frames are timed by the decode stamp of the packet that released them, and `start` is that
    stamp for the first frame (AVI: its packets carry frame numbers in decode order and its presentation
    stamps are unreliable; a frame leaves the decoder a fixed reorder delay after its packet, so the released
    stamp less the first frame's is the frame's number). `keyframes_are_exact`: keyframe mode decodes exact
    frames (GIF, where only the first frame is a keyframe and every frame is cheap).
    """

    path: str
    timeline: Timeline
    keys: Keyframes
    time_base: Fraction
    start: int
    allow_partial: bool
    dts_timed: bool = False
    keyframes_are_exact: bool = False

    @property
    def half_frame(self) -> float:
        return 0.5 / self.timeline.fps

    @property
    def reach(self) -> float:
        """How close a frame's time must be to a target's to be that target's frame."""
        return SAME_TIME_S if self.timeline.times is not None else self.half_frame

    def seconds(self, stamp: int) -> float:
        return float((stamp - self.start) * self.time_base)

    def stamp(self, seconds: float) -> int:
        return self.start + round(seconds / self.time_base)

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

    def __init__(self, facts: StreamFacts, mode: SeekMode, threads: int, warnings: list[str], opened=None,
                 hwaccel=None):
        self.facts, self.mode, self.threads, self.warnings = facts, mode, threads, warnings
        self.hwaccel = hwaccel  # decode on a GPU (`hardware.hwaccel`); frames then stay there until converted
        self._container, self._stream = opened if opened is not None else self._open()
        self._configure()
        self._seek_failures = 0
        # The decode position: frames the decoder produces from here, the last one taken, one taken ahead.
        self._frames: Iterator | None = None
        self._prev = None
        self._pending = None
        self._drained = False  # the decoder was flushed after a target: nothing more without a seek
        # After a packet fails to decode, the frames shown before the next keyframe are error-concealed
        # guesswork: none is returned until a frame at or after this time (inf until that keyframe is seen).
        self._clean_from: float | None = None
        self._drain_at: float | None = None  # flush once the packet shown at this time is in
        self._target: float | None = None  # the time exact mode is decoding towards
        self._last_key: tuple[int, object] | None = None  # (stamp, frame) of the last keyframe decoded
        # One converter per decoder: it keeps its SwsContext between frames (5x cheaper than a new one each).
        self.reformatter = av.video.reformatter.VideoReformatter()

    def close(self) -> None:
        self._container.close()

    def time(self, frame) -> float:
        first, second = (frame.dts, frame.pts) if self.facts.dts_timed else (frame.pts, frame.dts)
        ts = first if first is not None else second
        return self.facts.seconds(ts) if ts is not None else 0.0

    # -- exact mode ----------------------------------------------------------------------------------------

    def exact(self, t: float, after: float | None = None):
        """The frame nearest `t`. `after`, the next target if any, decides whether to keep decoding past `t`."""
        # When the next target needs a seek anyway, flush the decoder as soon as the target's packet is in:
        # the target comes out without decoding the frames a threaded or reordering decoder keeps in flight.
        drain = not self.facts.dts_timed and (after is None or self._seek_saves_work(t, after))
        self._drain_at, self._target = (t if drain else None), t
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
        return self._seek_failures < 2 and self.facts.seek_saves_work(now, t)

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
        """Position the decoder at or before `t`, retrying further back when a seek lands after it."""
        for back in SEEK_BACKOFF_S if self._seek_failures < 2 else ():
            if self._seek_to(self.facts.stamp(t - back)) and self._landed_before(t):
                return
        self._restart()
        self._landed_before(t)

    def _landed_before(self, t: float) -> bool:
        first = self._next_frame()
        self._pending, self._prev = first, None
        return first is not None and self.time(first) <= t + self.facts.half_frame

    def _nearest(self, t: float):
        """Decode forward to the frame whose presentation time is nearest `t` (the earlier one on a tie)."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return self._prev
            ft = self.time(frame)
            if ft <= t + SAME_TIME_S:
                self._prev = frame
                # At a constant rate a frame within half a frame of t is nearer than the next one; at a
                # variable rate only the next frame's time tells.
                if t - ft < self.facts.reach:
                    return frame
                continue
            if self._prev is not None and t - self.time(self._prev) <= ft - t:
                self._pending = frame  # keep it for the next target
                return self._prev
            self._prev = frame
            return frame

    # -- keyframe mode -------------------------------------------------------------------------------------

    def keyframe(self, t: float):
        """The keyframe nearest `t`; without keyframe positions, the keyframe a backward seek lands on."""
        if self.facts.keyframes_are_exact or self._seek_failures >= 2:
            return self.exact(t)
        if not self.facts.keys:
            if self._seek_to(self.facts.stamp(t)):
                frame = self._first_keyframe(None)
                if frame is not _OVERSHOT and frame is not None:
                    return frame
            return self.exact(t)
        stamp = self.facts.keys.nearest(t)
        if self._last_key is not None and self._last_key[0] == stamp:
            return self._last_key[1]  # several targets share this keyframe
        frame = None
        for back in SEEK_BACKOFF_S:
            if self._seek_to(stamp - round(back / self.facts.time_base)):
                frame = self._first_keyframe(stamp)
                if frame is not _OVERSHOT:
                    break
        if frame is None or frame is _OVERSHOT:
            self._restart()
            frame = self._first_keyframe(stamp)
        if frame is None or frame is _OVERSHOT:
            raise TruncatedVideoError(self.facts.path, f"no keyframe could be decoded near {t:.3f} s")
        self._last_key = (stamp, frame)
        return frame

    def _first_keyframe(self, stamp: int | None):
        """Decode the keyframe with index stamp `stamp` (None: the first keyframe from here) and drain the
        decoder. `_OVERSHOT` when the seek landed after it; None at the end of the stream."""
        self._frames = None  # the decoder is drained below: the next read seeks again
        cc = self._stream.codec_context
        cc.skip_frame = "DEFAULT"
        for packet in self._packets():
            if packet.size and not packet.is_keyframe:
                continue  # a coarse seek landed mid-GOP
            if packet.size and stamp is not None:
                if _highest(packet) < stamp:
                    continue  # an earlier keyframe (MP4 seeks by presentation time, its index by decode time)
                if _lowest(packet) > stamp:
                    return _OVERSHOT
            if self.facts.dts_timed:  # the frame must leave the decoder in order to carry its time
                return self._first_shown_after(packet)
            # Flushing right after the keyframe returns it without decoding the frames that follow it.
            frames = self._decode(packet) + (self._decode(None) if packet.size else [])
            cc.flush_buffers()
            if frames:
                return frames[0]
            if packet.size:  # hidden (the pre-roll of a cut file) or undecodable: decode on to the first shown frame
                return self._first_shown_after(packet)
        return None

    def _first_shown_after(self, keyframe_packet):
        self._seek_to(_highest(keyframe_packet))
        frame = self._next_frame()
        self._frames = None
        self._stream.codec_context.flush_buffers()
        return frame

    # -- machinery -----------------------------------------------------------------------------------------

    def _configure(self) -> None:
        cc = self._stream.codec_context
        cc.thread_type = "AUTO" if self.mode is SeekMode.EXACT else "SLICE"
        cc.thread_count = self.threads

    def _open(self):
        return open_container(self.facts.path, light=True, hwaccel=self.hwaccel)

    def _seek_to(self, stamp: int) -> bool:
        """Seek to the keyframe at or before `stamp`; False (and back at the file's start) if the seek fails."""
        try:
            self._container.seek(stamp, stream=self._stream, backward=True)
        except av.error.FFmpegError:
            self._seek_failures += 1  # e.g. before the first keyframe, or a format that cannot seek
            self._restart()
            return False
        self._reset()
        return True

    def _restart(self) -> None:
        """Decode from the beginning of the file (a fresh open: seeking to the start is not always possible)."""
        self._container.close()
        self._container, self._stream = self._open()
        self._configure()
        self._reset()

    def _reset(self) -> None:
        self._frames, self._prev, self._pending = self._produce(), None, None
        self._drained, self._clean_from = False, None

    def _produce(self) -> Iterator:
        cc = self._stream.codec_context
        released = 0  # dts-timed streams: the stamp that released the last frame, or the last packet's
        for packet in self._packets():
            if packet.dts is not None:
                released = max(released, packet.dts)
            if packet.is_keyframe and self._clean_from == float("inf") and packet.pts is not None:
                self._clean_from = self.facts.seconds(packet.pts)
            skip = "NONREF" if self._skippable(packet) else "DEFAULT"
            if cc.skip_frame != skip:
                cc.skip_frame = skip
            for frame in self._decode(packet):
                if self.facts.dts_timed:  # frames drained at the end of the stream carry no stamp: count on
                    frame.dts = released = frame.dts if frame.dts is not None else released + 1
                if self._clean(frame):
                    yield frame
            draining = self._drain_at is not None and self._clean_from is None  # never with damage in flight
            if draining and packet.pts is not None and self._is_target(packet.pts):
                self._drained = True
                yield from (f for f in self._decode(None) if self._clean(f))
                return

    def _skippable(self, packet) -> bool:
        """Whether the decoder may drop this packet's frame if no other frame references it.

        Frames more than a frame before the target are never returned, and those nothing references (most
        B-frames) need not be decoded at all. Not at a variable rate (the frame before the target may be far)
        nor where frames are timed by the packets that release them (a dropped frame would shift the timing).
        """
        if self._target is None or packet.pts is None or self.facts.timeline.times is not None or self.facts.dts_timed:
            return False
        return self.facts.seconds(packet.pts) < self._target - 2 * self.facts.half_frame

    def _is_target(self, pts: int) -> bool:
        return abs(self.facts.seconds(pts) - self._drain_at) <= self.facts.reach

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
            where = f" at {self.facts.seconds(at):.3f} s" if at is not None else ""
            self._damaged(f"decoding failed{where} ({e})", e)
            self._clean_from = float("inf")
            return []
        clean = []
        for frame in frames:
            if frame.is_corrupt:
                self._damaged(f"corrupt frame at {self.time(frame):.3f} s", None)
            else:
                clean.append(frame)
        return clean

    def _clean(self, frame) -> bool:
        if self._clean_from is None:
            return True
        if self.time(frame) < self._clean_from:
            return False
        self._clean_from = None
        return True

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


def _highest(packet) -> int:
    return max(s for s in (packet.dts, packet.pts, -(2**62)) if s is not None)


def _lowest(packet) -> int:
    return min(s for s in (packet.dts, packet.pts, 2**62) if s is not None)
