"""What a container's index and packets say, without decoding: frame times, keyframes, where the data ends.

Owns reading the sample index (MP4/MOV sample tables, AVI idx1) and the demux-only scan over the packets that
formats without a complete index need (Matroska/WebM, MPEG-TS, GIF, AVI without idx1). Both skip what is never
shown: packets an MP4 edit list discards (the pre-roll of a file cut by stream copy).

Times here are seconds from the stream's start time; stamps are the container's own integers (the stream's
time base), as seeks take them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import av


@dataclass(frozen=True)
class Keyframes:
    """Where decoding can start: keyframes in seconds and in the stamps a seek takes.

    From an MP4 index the stamps are decode times, a frame or two ahead of presentation times when the stream
    has B-frames; from a packet scan they are presentation times. Either way they choose where to seek and
    which keyframe is nearest, never the reported time of a frame.
    """

    seconds: list[float] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)

    @classmethod
    def from_stamps(cls, stamps: list[int], time_base: Fraction, start: int) -> Keyframes:
        stamps = sorted(set(stamps))
        return cls([float((s - start) * time_base) for s in stamps], stamps)

    def __bool__(self) -> bool:
        return bool(self.seconds)

    def nearest(self, t: float) -> int:
        """Stamp of the keyframe nearest `t` (the earlier one on a tie)."""
        i = bisect.bisect_left(self.seconds, t)
        j = min(range(max(0, i - 1), min(i + 1, len(self.seconds))), key=lambda k: (abs(self.seconds[k] - t), k))
        return self.stamps[j]

    def up_to(self, seconds: float) -> Keyframes:
        keep = [k for k, s in enumerate(self.seconds) if s <= seconds]
        return Keyframes([self.seconds[k] for k in keep], [self.stamps[k] for k in keep])


class IndexEntry(NamedTuple):
    stamp: int
    keyframe: bool
    discard: bool
    end: int  # byte offset just past the sample's data (-1 when unknown)


def read_index(stream) -> list[IndexEntry]:
    """The container's sample index as read at open time (one pass over PyAV's entries)."""
    return [
        IndexEntry(e.timestamp, e.is_keyframe, e.is_discard, e.pos + e.size if e.pos >= 0 else -1)
        for e in stream.index_entries
    ]


def index_is_complete(index: list[IndexEntry], frames: int) -> bool:
    """Whether the index lists every sample the container counts (MP4/MOV, AVI with idx1)."""
    return frames > 0 and len(index) == frames


def index_past_end(index: list[IndexEntry], file_size: int) -> bool:
    """Whether the index places sample data beyond the end of the file: the file was cut off."""
    return file_size > 0 and any(e.end > file_size for e in index[-64:])


def index_times(index: list[IndexEntry], time_base: Fraction) -> list[float]:
    """Seconds of the shown samples of a complete index, from the first, sorted (decode times: they pace the
    frames like presentation times, shifted by the reorder delay)."""
    stamps = sorted(e.stamp for e in index if not e.discard)
    tb = float(time_base)  # float arithmetic: Fractions cost 2 us a frame, 20 ms on a 5-minute video
    return [(s - stamps[0]) * tb for s in stamps]


@dataclass(frozen=True)
class PacketScan:
    """One demux pass: shown frames' times (sorted seconds), keyframe stamps, and why the pass ended early."""

    times: list[float]
    key_stamps: list[int]
    error: str | None


def scan_packets(path: str, stream_index: int, by_decode_order: bool = False) -> PacketScan:
    """Demux the video stream of `path` from a fresh open, decoding nothing.

    `by_decode_order` times frames by their decode stamps (AVI, whose presentation stamps are unreliable and
    whose decode stamps are frame numbers). A read error or a damaged packet ends the pass early; the frames
    before it are returned with the error.
    """
    times, keys, error = [], [], None
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams[stream_index]
        tb = stream.time_base or Fraction(1, av.time_base)
        start = stream.start_time or 0
        try:
            for packet in container.demux(stream):
                first, second = (packet.dts, packet.pts) if by_decode_order else (packet.pts, packet.dts)
                ts = first if first is not None else second
                if ts is None or packet.size == 0 or packet.is_discard:
                    continue  # the flush packet at the end, or pre-roll an edit list hides
                if packet.is_corrupt:  # e.g. the last packet of a cut-off file, read short
                    error = f"damaged packet at {float((ts - start) * tb):.3f} s"
                    break
                times.append(float((ts - start) * tb))
                if packet.is_keyframe:
                    keys.append(ts)
        except av.error.FFmpegError as e:
            error = f"reading the stream failed after {len(times)} frames ({e})"
    times.sort()
    return PacketScan(times, keys, error)
