"""Reading frames at requested timestamps without decoding the whole stream.

Owns `VideoReader`: the file's facts, the plan of which decoder visits which targets, decoding on several cores,
conversion to 8-bit RGB (any bit depth, the stream's colour matrix and range, an optional downscale in the same
pass), rotation for display, and truncated files. One decode position lives in decoder.py; choosing the frames
in sampling.py; describing the file in probe.py.

Two modes (`SeekMode`):
- exact: seek to the keyframe before the target and decode forward to the frame nearest it. Targets are
  visited in time order; where no keyframe lies between two targets, decoding continues instead of seeking.
- keyframe: decode only the keyframe nearest each target (from the container's index; without one, the keyframe
  a backward seek lands on, at or before the target). Much cheaper, but the frames are where the keyframes
  are: a clip with fewer keyframes than targets gives the same frame for several targets.

`read()` splits the targets into runs that each start with a seek and decodes the runs concurrently, one
decoder per worker thread (FFmpeg releases the GIL): on many cores this beats one frame-threaded decoder,
whose threads idle at every seek. `iter_frames()` streams with a single decoder.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from videocap.errors import TruncatedVideoError
from videocap.video import hardware
from videocap.video.decoder import Decoder, SeekMode, StreamFacts
from videocap.video.packets import Keyframes, scan_packets
from videocap.video.probe import (
    describe,
    first_frame_dts,
    frame_rotation,
    frames_are_numbered,
    light_open_keeps_timing,
    open_container,
    with_frame_facts,
)
from videocap.video.sampling import Timeline

__all__ = ["DecodedFrame", "SeekMode", "VideoReader"]


@dataclass(frozen=True)
class DecodedFrame:
    requested: float  # the time asked for
    timestamp: float  # the presentation time of the frame returned
    image: np.ndarray  # (H, W, 3) uint8 RGB, rotated for display


class VideoReader:
    """An open video: its facts (`info`), its frame timeline, and frames at timestamps.

    `allow_partial` turns damage into warnings: a truncated file is sampled over its decodable part (the
    timeline is recounted from the packets that are whole), and undecodable packets are skipped.
    `threads` bounds the decoding threads (0: one per core). `device`: "cuda" or "cuda:N" decodes on that GPU's
    video engines with the CPU decoder's pixels (`hardware`); None or "cpu", FFmpeg's CPU decoders.
    `info.rotation` is read off the first frame decoded (PyAV shows the display matrix only on frames), so it is
    final once a frame has been read.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        allow_partial: bool = False,
        threads: int = 0,
        count_frames: bool = True,
        device: str | None = None,
    ):
        self.path = os.fspath(path)
        self.device = hardware.parse_device(device)
        hardware.check_device(self.device)
        self._hwaccel = hardware.hwaccel(self.device)
        self.gpu_frames = 0  # frames converted that the GPU decoded (FFmpeg falls back to the CPU where it must)
        self.allow_partial = allow_partial
        self.threads = threads if threads > 0 else (os.cpu_count() or 1)
        self.warnings: list[str] = []
        self.partial = False
        container, stream = open_container(self.path, light=True)
        if not light_open_keeps_timing(container):
            container.close()
            container, stream = open_container(self.path)
        try:
            # rotation=0 spares a decode here: the first frame converted corrects it (`_rgb`).
            described = describe(self.path, container, stream, count_frames, rotation=0)
        except BaseException:
            container.close()
            raise
        self.info, self.timeline = described.info, described.timeline
        self._size = (stream.codec_context.width, stream.codec_context.height)
        self._opened = (container, stream)  # handed to the first decoder, so the file is not opened twice
        self._idle: dict[tuple[SeekMode, int], list[Decoder]] = {}
        self._all: list[Decoder] = []
        self._lock = threading.Lock()  # guards the pool of idle decoders and the first container
        keys = described.keyframes
        tb = stream.time_base or Fraction(1, av.time_base)
        start = stream.start_time or 0
        dts_timed = frames_are_numbered(container)
        if dts_timed:
            start = first_frame_dts(self.path, stream.index) or start
        if self.info.truncated:
            keys = self._use_decodable_part(stream.index, keys, described.scanned, dts_timed)
        self.facts = StreamFacts(
            self.path, self.timeline, keys, tb, start, allow_partial,
            dts_timed=dts_timed, keyframes_are_exact=container.format.name == "gif",
        )

    # -- public --------------------------------------------------------------------------------------------

    def read(
        self, timestamps: Sequence[float], mode: SeekMode = SeekMode.EXACT, max_side: int | None = None
    ) -> list[DecodedFrame]:
        """Frames at `timestamps` (any order, repeats allowed), returned in the order asked."""
        size = self.output_size(max_side)
        runs = self._runs(sorted(set(timestamps)), mode)
        workers = min(len(runs), self.threads)
        per_decoder = max(1, self.threads // workers)
        if workers == 1:
            done = [self._decode_run([t for run in runs for t in run], mode, per_decoder, size)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(lambda run: self._decode_run(run, mode, per_decoder, size), runs))
        got = {f.requested: f for frames in done for f in frames}
        return [got[t] for t in timestamps]

    def iter_frames(
        self, timestamps: Sequence[float], mode: SeekMode = SeekMode.EXACT, max_side: int | None = None
    ) -> Iterator[DecodedFrame]:
        """Frames at ascending `timestamps`, one at a time, from one decoder: memory stays flat."""
        if any(b < a for a, b in zip(timestamps, timestamps[1:])):
            raise ValueError("iter_frames needs ascending timestamps; use read() for any order")
        size = self.output_size(max_side)
        decoder = self._decoder(mode, self.threads)
        try:
            yield from self._convert(decoder, timestamps, mode, size)
        finally:
            self._release(decoder)

    def close(self) -> None:
        for decoder in self._all:
            decoder.close()
        self._all.clear()
        if self._opened is not None:
            self._opened[0].close()
            self._opened = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- planning and workers ------------------------------------------------------------------------------

    def _runs(self, targets: list[float], mode: SeekMode) -> list[list[float]]:
        """Split ascending targets where the next one starts with a seek: each run is one decoder's work."""
        runs: list[list[float]] = []
        for t in targets:
            if runs and not self._starts_run(runs[-1][-1], t, mode):
                runs[-1].append(t)
            else:
                runs.append([t])
        return runs or [[]]

    def _starts_run(self, prev: float, t: float, mode: SeekMode) -> bool:
        keys = self.facts.keys
        if mode is SeekMode.KEYFRAME:
            return not keys or keys.nearest(prev) != keys.nearest(t)
        return self.facts.seek_saves_work(prev, t)

    def _decode_run(self, run: list[float], mode: SeekMode, threads: int, size: tuple[int, int]) -> list[DecodedFrame]:
        decoder = self._decoder(mode, threads)
        try:
            return list(self._convert(decoder, run, mode, size))
        finally:
            self._release(decoder)

    def _convert(self, decoder: Decoder, targets: Sequence[float], mode: SeekMode, size) -> Iterator[DecodedFrame]:
        last: DecodedFrame | None = None  # targets sharing a frame are adjacent: convert it once
        for k, t in enumerate(targets):
            if mode is SeekMode.EXACT:
                frame = decoder.exact(t, targets[k + 1] if k + 1 < len(targets) else None)
            else:
                frame = decoder.keyframe(t)
            ts = decoder.time(frame)
            if last is None or last.timestamp != ts:
                last = DecodedFrame(t, ts, self._rgb(decoder, frame, size))
            yield DecodedFrame(t, ts, last.image)

    def _decoder(self, mode: SeekMode, threads: int) -> Decoder:
        """An idle decoder for (mode, threads), or a new one: the first takes over the container opened to
        describe the file."""
        with self._lock:
            idle = self._idle.get((mode, threads))
            if idle:
                return idle.pop()
            opened, self._opened = self._opened, None
        if opened is not None and self._hwaccel is not None:
            opened[0].close()  # opened for the CPU: a GPU decoder opens the file with its hwaccel
            opened = None
        decoder = Decoder(self.facts, mode, threads, self.warnings, opened, self._hwaccel)
        with self._lock:
            self._all.append(decoder)
        return decoder

    def _release(self, decoder: Decoder) -> None:
        """Return `decoder` to the pool; beyond one per core, close it (reads with other run counts would
        otherwise pile up decoders, each an open file)."""
        with self._lock:
            idle = self._idle.setdefault((decoder.mode, decoder.threads), [])
            if sum(len(v) for v in self._idle.values()) < self.threads:
                idle.append(decoder)
                return
            self._all.remove(decoder)
        decoder.close()

    # -- damage --------------------------------------------------------------------------------------------

    def _use_decodable_part(self, stream_index: int, keys: Keyframes, scanned: bool, numbered: bool) -> Keyframes:
        """Narrow the timeline to the frames whose packets are whole, or refuse the truncated file."""
        if not self.allow_partial:
            self.close()
            raise TruncatedVideoError(
                self.path,
                f"the file is cut off or damaged: its data ends before the {self.info.duration:.2f} s its "
                "container promises; pass --allow-partial to sample the decodable part",
            )
        if scanned:  # the packet scan that found the damage already timed the decodable frames
            times = list(self.timeline.times or (k / self.timeline.fps for k in range(self.timeline.num_frames)))
        else:  # the index promised more than the file holds: count the packets that are whole
            times = scan_packets(self.path, stream_index, numbered).times
        if not times:
            self.close()
            raise TruncatedVideoError(self.path, "the file is cut off before its first whole frame")
        fps = self.timeline.fps
        self.timeline = Timeline(len(times), fps, tuple(times))
        self.partial = True
        self.warnings.append(
            f"truncated file: sampled the decodable part, {len(times)} frames (0-{times[-1] + 1 / fps:.2f} s) "
            f"of the {self.info.duration:.2f} s its container promises"
        )
        return keys.up_to(times[-1])

    # -- conversion ----------------------------------------------------------------------------------------

    def output_size(self, max_side: int | None) -> tuple[int, int]:
        """(width, height) of the stored (unrotated) picture after the optional `max_side` downscale
        (swap them for a display rotation of 90 or 270 degrees)."""
        w, h = self._size
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
        if max_side is None or max(w, h) <= max_side:
            return w, h
        scale = max_side / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))

    def _rgb(self, decoder: Decoder, frame, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        shown = frame  # its metadata (range, rotation, pixel format) is what the stream declares
        if hardware.is_hardware(frame):
            self.gpu_frames += 1
            frame = hardware.to_software(frame)
        resize = (w, h) != (frame.width, frame.height)
        options = {}
        if shown.color_range == av.video.reformatter.ColorRange.JPEG:
            options["src_color_range"] = av.video.reformatter.ColorRange.JPEG
        # Same-size conversion uses bicubic chroma upsampling like FFmpeg's scale filter (what decord runs);
        # a downscale uses area averaging, the right filter for large reductions.
        interpolation = "AREA" if resize else "BICUBIC"
        rgb = decoder.reformatter.reformat(
            frame, width=w, height=h, format="rgb24", interpolation=interpolation, threads=1, **options
        )
        image = rgb.to_ndarray()
        rotation = frame_rotation(shown)
        self.info = with_frame_facts(self.info, frame, rotation)
        turns = rotation // 90
        if turns:
            image = np.ascontiguousarray(np.rot90(image, k=-turns))  # rot90 turns counter-clockwise
        return image
