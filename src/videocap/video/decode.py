"""Decoding frames at requested timestamps without decoding the whole stream.

Owns: seeking, decoding forward to a frame, conversion to 8-bit RGB (any bit depth, the stream's colour matrix
and range, optional downscale in the same pass), rotation for display, and damage handling (truncated files,
undecodable packets). Does not choose which frames to read (sampling.py) or describe the file (probe.py).

Two modes:
- exact: seek to the keyframe before the target and decode forward to the frame nearest the target. Targets
  are visited in time order; when no keyframe lies between the current position and the next target, decoding
  simply continues instead of seeking back to a keyframe already passed.
- keyframe: decode only the keyframe nearest each target (from the container's index; without one, the keyframe
  a backward seek lands on, i.e. the one at or before the target). Much cheaper, but the frames are where the
  keyframes are: a clip with fewer keyframes than targets gives the same frame for several targets.

Formats FFmpeg cannot seek in (GIF) are read forward from the start; going back reopens the file.
All times are seconds from the video stream's first frame.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction

import av
import numpy as np

from videocap.errors import CorruptVideoError, TruncatedVideoError
from videocap.video.probe import count_packets, describe, frame_rotation, open_container, with_rotation
from videocap.video.sampling import Timeline

# Without a container index we cannot tell whether a keyframe lies ahead: decode forward up to this far
# rather than seek (a seek could land on the keyframe we started from and redo the same work).
FORWARD_WITHOUT_INDEX_S = 5.0
# How far back to retry when a seek lands after its target (coarse seeks in some formats).
SEEK_BACKOFF_S = (0.0, 0.25, 1.0, 4.0, 16.0, None)
_SAME_TIME_S = 1e-6


class SeekMode(str, Enum):
    EXACT = "exact"
    KEYFRAME = "keyframe"


@dataclass(frozen=True)
class DecodedFrame:
    requested: float  # the time asked for
    timestamp: float  # the presentation time of the frame returned
    image: np.ndarray  # (H, W, 3) uint8 RGB, rotated for display


@dataclass
class _Position:
    """Where the decoder is: the frames it produces, the last one taken, and one produced ahead of need."""

    frames: Iterator | None = None
    prev: object | None = None  # av.VideoFrame
    pending: object | None = None  # av.VideoFrame
    drained: bool = False  # the decoder was flushed after a target: nothing more comes without a seek


@dataclass(frozen=True)
class _Keyframes:
    """Keyframes from the container's index, in the index's own time stamps (decode time in MP4)."""

    seconds: list[float] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.seconds)


class VideoReader:
    """An open video: its facts (`info`), its frame timeline, and frames at timestamps.

    `allow_partial` turns damage into warnings: a truncated file is sampled over its decodable part (the
    timeline is recounted from the packets that are whole), and undecodable packets are skipped.
    `threads` is FFmpeg's decoder thread count (0: one per core).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        allow_partial: bool = False,
        threads: int = 0,
        count_frames: bool = True,
    ):
        self.path = os.fspath(path)
        self.allow_partial = allow_partial
        self.threads = threads
        self._open()
        try:
            # rotation=0 spares a decode here: the first frame we decode corrects it (`_rgb`).
            self.info, self.timeline = describe(self.path, self._container, self._stream, count_frames, rotation=0)
        except BaseException:
            self._container.close()
            raise
        self._tb = self._stream.time_base or Fraction(1, av.time_base)
        self._start = self._stream.start_time or 0
        self._keys = _index_keyframes(self._stream, self._tb, self._start)
        self._seekable = True
        self._mode = SeekMode.EXACT  # the mode decoder threading was chosen for
        self._drain_at: float | None = None  # flush the decoder once the packet shown at this time is in
        self._target: float | None = None  # the time exact mode is decoding towards
        self._last_key: tuple[int, object] | None = None  # (index stamp, frame) of the last keyframe decoded
        self.warnings: list[str] = []
        self.partial = False
        if self.info.truncated:
            self._use_decodable_part()

    # -- public --------------------------------------------------------------------------------------------

    def read(
        self, timestamps: Sequence[float], mode: SeekMode = SeekMode.EXACT, max_side: int | None = None
    ) -> list[DecodedFrame]:
        """Frames at `timestamps` (any order, repeats allowed), returned in the order asked."""
        got = {f.requested: f for f in self.iter_frames(sorted(set(timestamps)), mode, max_side)}
        return [got[t] for t in timestamps]

    def iter_frames(
        self, timestamps: Sequence[float], mode: SeekMode = SeekMode.EXACT, max_side: int | None = None
    ) -> Iterator[DecodedFrame]:
        """Frames at ascending `timestamps`, one at a time: memory stays flat however many there are."""
        if any(b < a for a, b in zip(timestamps, timestamps[1:])):
            raise ValueError("iter_frames needs ascending timestamps; use read() for any order")
        size = self._output_size(max_side)
        self._threading(mode)
        last: DecodedFrame | None = None  # targets sharing a frame are adjacent: convert it once
        for k, t in enumerate(timestamps):
            if mode is SeekMode.EXACT:
                frame = self._exact(t, timestamps[k + 1] if k + 1 < len(timestamps) else None)
            else:
                frame = self._keyframe(t)
            ts = self._time(frame)
            if last is None or last.timestamp != ts:
                last = DecodedFrame(t, ts, self._rgb(frame, size))
            yield DecodedFrame(t, ts, last.image)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- exact mode ----------------------------------------------------------------------------------------

    def _exact(self, t: float, after: float | None):
        """The frame nearest `t`; `after` is the next target, if any, which decides whether to keep decoding."""
        # When the next target needs a seek anyway, flush the decoder as soon as the target's packet is in:
        # the target comes out without decoding the frames that a threaded or reordering decoder keeps
        # in flight behind it.
        self._drain_at = t if after is None or self._keyframe_between(t, after) else None
        self._target = t
        try:
            if self._should_seek(t):
                self._seek(t)
            frame = self._nearest(t)
        finally:
            self._drain_at = self._target = None
        if frame is None:  # the stream ended before the first frame we needed
            raise self._truncated(t)
        if self._missing(t, self._time(frame)):
            # A frame the timeline has did not come out of the decoder: FFmpeg's frame-threaded decoders
            # drop undecodable frames without reporting an error.
            self._damaged(f"the frame at {t:.3f} s could not be decoded (nearest decoded: {self._time(frame):.3f} s)",
                          None)
        return frame

    def _missing(self, t: float, got: float) -> bool:
        """Whether the timeline has a frame nearer to `t` than the one decoded (so the decoder skipped it)."""
        tl = self.timeline
        if tl.times is None:
            expected = min(max(round(t * tl.fps), 0), tl.num_frames - 1) / tl.fps
        else:
            i = bisect.bisect_left(tl.times, t)
            expected = min(tl.times[max(0, i - 1) : i + 1], key=lambda c: abs(c - t))
        return abs(got - t) > abs(expected - t) + 0.25 / tl.fps

    def _should_seek(self, t: float) -> bool:
        pos = self._pos
        here = pos.prev if pos.prev is not None else pos.pending
        if pos.frames is None or here is None:
            return True
        now = self._time(here)
        if t < now - self._half_frame():
            return True  # behind us: only a seek goes back
        if pos.drained and (pos.pending is None or self._time(pos.pending) < t):
            return True
        return self._keyframe_between(now, t)

    def _keyframe_between(self, now: float, t: float) -> bool:
        """Whether seeking to `t` from `now` skips decoding work (a keyframe lies after `now`, at or before `t`)."""
        if not self._seekable:
            return False
        if not self._keys:
            return t - now > FORWARD_WITHOUT_INDEX_S
        k = bisect.bisect_right(self._keys.seconds, now + self._half_frame())
        return k < len(self._keys.seconds) and self._keys.seconds[k] <= t

    def _seek(self, t: float) -> None:
        """Position the decoder at or before `t`, retrying further back when a seek overshoots."""
        for back in SEEK_BACKOFF_S if self._seekable else (None,):
            self._seek_to(None if back is None else self._stamp(max(0.0, t - back)))
            first = self._next_frame()
            if first is None and back is not None:
                continue
            self._pos.pending, self._pos.prev = first, None
            if first is None or self._time(first) <= t + self._half_frame():
                return

    def _nearest(self, t: float):
        """Decode forward to the frame whose presentation time is nearest `t` (the earlier one on a tie)."""
        pos = self._pos
        # At a constant rate a frame that covers t is nearer than the next one once t is within half a frame
        # of it; at a variable rate only the next frame's time tells.
        reach = _SAME_TIME_S if self.timeline.times is not None else self._half_frame()
        while True:
            frame = self._next_frame()
            if frame is None:
                return pos.prev
            ft = self._time(frame)
            if ft <= t + _SAME_TIME_S:
                pos.prev = frame
                if t - ft < reach:
                    return frame
                continue
            if pos.prev is not None and t - self._time(pos.prev) <= ft - t:
                pos.pending = frame  # keep it for the next target
                return pos.prev
            pos.prev = frame
            return frame

    # -- keyframe mode -------------------------------------------------------------------------------------

    def _keyframe(self, t: float):
        if not self._keys:  # no index: the keyframe a backward seek lands on, at or before t
            if self._seekable:
                self._seek_to(self._stamp(t))
            if not self._seekable:
                return self._exact(t)  # formats without seeking (GIF) are read forward anyway
            return self._first_keyframe(None)
        seconds = self._keys.seconds
        i = bisect.bisect_left(seconds, t)
        j = min(range(max(0, i - 1), min(i + 1, len(seconds))), key=lambda k: (abs(seconds[k] - t), k))
        stamp = self._keys.stamps[j]
        if self._last_key is not None and self._last_key[0] == stamp:
            return self._last_key[1]  # several targets share this keyframe
        self._seek_to(stamp)
        frame = self._first_keyframe(stamp)
        self._last_key = (stamp, frame)
        return frame

    def _first_keyframe(self, stamp: int | None):
        """Decode just the first keyframe from here (at or after index stamp `stamp`), then drain the decoder."""
        self._pos = _Position()  # the decoder is drained below: the next read seeks again
        for packet in self._packets():
            if packet.size and not packet.is_keyframe:
                continue  # a coarse seek landed mid-GOP
            if packet.size and stamp is not None and max(_or(packet.dts), _or(packet.pts)) < stamp:
                continue  # the seek landed on an earlier keyframe (MP4 seeks by presentation time)
            # Flushing right after the keyframe returns it without decoding the frames that follow it.
            frames = self._decode(packet) + (self._decode(None) if packet.size else [])
            if frames:
                return frames[0]
        raise self._truncated(float((stamp or 0) - self._start) * float(self._tb))

    # -- decoding machinery --------------------------------------------------------------------------------

    def _open(self) -> None:
        self._container, self._stream = open_container(self.path)
        self._pos = _Position()

    def _threading(self, mode: SeekMode) -> None:
        """Choose decoder threading before the codec opens (on the first read; the first mode decides).

        Exact mode decodes runs of frames: frame threading overlaps them. Keyframe mode decodes single frames
        and drains the decoder after each, which frame threading makes several times slower: slices only.
        """
        cc = self._stream.codec_context
        if not cc.is_open:
            self._mode = mode
            cc.thread_type = "AUTO" if mode is SeekMode.EXACT else "SLICE"
            cc.thread_count = self.threads

    def _seek_to(self, stamp: int | None) -> None:
        """Seek to the keyframe at or before `stamp` (stream time base; None: the start)."""
        if self._seekable:
            try:
                self._container.seek(self._start if stamp is None else stamp, stream=self._stream, backward=True)
            except av.error.FFmpegError:
                self._seekable = False  # e.g. GIF: fall back to reading forward from the start
        if not self._seekable:
            self._container.close()
            self._open()
            self._threading(self._mode)
        self._pos = _Position(frames=self._frames())

    def _packets(self) -> Iterator:
        try:
            yield from self._container.demux(self._stream)
        except av.error.FFmpegError as e:
            self._damaged(f"reading the stream failed ({e})", e)

    def _frames(self) -> Iterator:
        cc = self._stream.codec_context
        for packet in self._packets():
            skip = "NONREF" if self._skippable(packet) else "DEFAULT"
            if cc.skip_frame != skip:
                cc.skip_frame = skip
            yield from self._decode(packet)
            if self._drain_at is not None and packet.pts is not None and self._is_target(packet.pts):
                self._pos.drained = True
                yield from self._decode(None)
                return

    def _skippable(self, packet) -> bool:
        """Whether the decoder may drop this packet's frame if no other frame references it.

        Frames more than one frame before the target are never returned; the ones nothing references (most
        B-frames) need not be decoded at all. At a variable rate the frame before the target may be far, so
        nothing is skipped there.
        """
        if self._target is None or packet.pts is None or self.timeline.times is not None:
            return False
        return float((packet.pts - self._start) * self._tb) < self._target - 2 * self._half_frame()

    def _is_target(self, pts: int) -> bool:
        reach = _SAME_TIME_S if self.timeline.times is not None else self._half_frame()
        return abs(float((pts - self._start) * self._tb) - self._drain_at) <= reach

    def _decode(self, packet) -> list:
        try:
            frames = self._stream.codec_context.decode(packet)
        except av.error.FFmpegError as e:
            at = packet.pts if packet is not None and packet.pts is not None else None
            where = f" at {float((at - self._start) * self._tb):.3f} s" if at is not None else ""
            self._damaged(f"decoding failed{where} ({e})", e)
            return []
        for frame in frames:
            if frame.is_corrupt:
                self._damaged(f"corrupt frame at {self._time(frame):.3f} s", None)
        return frames

    def _next_frame(self):
        pos = self._pos
        if pos.pending is not None:
            frame, pos.pending = pos.pending, None
            return frame
        return next(pos.frames, None) if pos.frames is not None else None

    def _damaged(self, reason: str, cause: Exception | None) -> None:
        if not self.allow_partial:
            raise CorruptVideoError(self.path, f"{reason}; pass --allow-partial to skip damaged parts") from cause
        if reason not in self.warnings:
            self.warnings.append(reason)

    def _truncated(self, t: float) -> Exception:
        return TruncatedVideoError(self.path, f"the stream ends before {t:.3f} s")

    def _use_decodable_part(self) -> None:
        """Replace the index's timeline by the frames whose packets are whole, or refuse the truncated file."""
        whole = f"{self.info.num_frames} frames ({self.info.duration:.2f} s)"
        if not self.allow_partial:
            self.close()
            raise TruncatedVideoError(
                self.path,
                f"the file is cut off: its index promises {whole} but the data ends early; "
                "pass --allow-partial to sample the decodable part",
            )
        times, _ = count_packets(self.path, self._stream.index, allow_errors=True)
        if not times:
            self.close()
            raise TruncatedVideoError(self.path, "the file is cut off before its first whole frame")
        fps = self.timeline.fps
        self.timeline = Timeline(len(times), fps, tuple(times))
        keep = [k for k, s in enumerate(self._keys.seconds) if s <= times[-1]]
        self._keys = _Keyframes([self._keys.seconds[k] for k in keep], [self._keys.stamps[k] for k in keep])
        self.partial = True
        self.warnings.append(
            f"truncated file: sampled the decodable part, {len(times)} frames (0-{times[-1] + 1 / fps:.2f} s) "
            f"of {whole}"
        )

    # -- conversion ----------------------------------------------------------------------------------------

    def _output_size(self, max_side: int | None) -> tuple[int, int]:
        """(width, height) of the stored (unrotated) picture after the optional `max_side` downscale."""
        w, h = self._stream.codec_context.width, self._stream.codec_context.height
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
        if max_side is None or max(w, h) <= max_side:
            return w, h
        scale = max_side / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    def _rgb(self, frame, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        resize = (w, h) != (frame.width, frame.height)
        options = {}
        if frame.color_range == av.video.reformatter.ColorRange.JPEG:
            options["src_color_range"] = av.video.reformatter.ColorRange.JPEG
        # Same-size conversion uses bicubic chroma upsampling like FFmpeg's scale filter (what decord runs);
        # a downscale uses area averaging, the right filter for large reductions.
        interpolation = "AREA" if resize else "BICUBIC"
        image = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=interpolation, **options)
        rotation = frame_rotation(frame)
        self.info = with_rotation(self.info, rotation)
        turns = rotation // 90
        if turns:
            image = np.rot90(image, k=-turns)  # rot90 turns counter-clockwise; rotation is clockwise
        return np.ascontiguousarray(image)

    def _time(self, frame) -> float:
        ts = frame.pts if frame.pts is not None else frame.dts
        return float((ts - self._start) * self._tb) if ts is not None else 0.0

    def _stamp(self, seconds: float) -> int:
        return self._start + round(seconds / self._tb)

    def _half_frame(self) -> float:
        return 0.5 / self.timeline.fps


def _index_keyframes(stream, tb: Fraction, start: int) -> _Keyframes:
    """Keyframes of the container's index (MP4 sample table, Matroska cues); empty without one.

    MP4 index stamps are decode times, a frame or two ahead of presentation times when the stream has
    B-frames: they choose where to seek and which keyframe is nearest, never the reported time of a frame.
    """
    stamps = sorted({e.timestamp for e in stream.index_entries if e.is_keyframe})
    return _Keyframes([float((s - start) * tb) for s in stamps], stamps)


def _or(value: int | None) -> int:
    return value if value is not None else -(2**62)
