"""Opening a video and finding out what it is: the facts `videocap info` prints and sampling needs.

Owns: path checks and FFmpeg's open errors turned into typed `VideoError`s, the video stream's facts
(`VideoInfo`), the frame timeline (count and, where needed, every frame's time), and truncation detection.
Does not own decoding to pixels (decode.py) or choosing frames (sampling.py).

Frame count, cheapest first: the container's own count (MP4/MOV/AVI); otherwise a demux-only pass over the
packets (no decoding), which also yields exact frame times; otherwise, when counting is declined, duration × fps.
Constant frame rate is verified from the container's sample index where it has one (MP4/MOV); a variable-rate
stream gets its exact frame times from the same demux-only pass.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from enum import Enum
from fractions import Fraction

import av

from videocap.errors import (
    CorruptVideoError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    VideoError,
    VideoNotFoundError,
)
from videocap.video.sampling import Timeline

av.logging.set_level(None)  # FFmpeg's own log lines would interleave with ours; errors reach us as exceptions.


UNKNOWN = "unknown"


class CountSource(str, Enum):
    """Where `VideoInfo.num_frames` came from."""

    CONTAINER = "container"  # the container's sample count
    COUNTED = "counted"  # one demux pass over the packets
    ESTIMATED = "estimated"  # duration × average fps


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video's first video stream. Width and height are as displayed (rotation applied)."""

    path: str
    format: str  # container format as FFmpeg names it, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    pix_fmt: str
    bit_depth: int
    width: int
    height: int
    rotation: int  # degrees clockwise the stored frames are turned for display: 0, 90, 180 or 270
    fps: float  # average frame rate
    duration: float  # seconds
    num_frames: int
    num_frames_source: CountSource
    variable_frame_rate: bool
    has_audio: bool
    size_bytes: int
    truncated: bool  # the container's index points past the end of the file, or its packets break off

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_frames_source"] = self.num_frames_source.value
        return d


def check_path(path: str) -> None:
    """Raise a typed error for a path that cannot be a video before FFmpeg sees it."""
    if not os.path.exists(path):
        raise VideoNotFoundError(path, "no such file")
    if os.path.isdir(path):
        raise NotAVideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise NotAVideoError(path, "empty file (0 bytes)")


def open_container(path: str, light: bool = False) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and return the container and its first real video stream, or raise a `VideoError`.

    `light` skips the decoding inside FFmpeg's stream-info probe, which decodes the first frame only to learn
    the pixel format (as costly as one more keyframe). The pixel format then stays unknown until a frame is
    decoded (`with_frame_facts`). Formats that need the probe to find their streams or size get a full open.
    """
    check_path(path)
    if light:
        opened = _open_light(path)
        if opened is not None:
            return opened
    try:
        container = av.open(path, metadata_errors="ignore")
    except PermissionError as e:
        raise VideoError(path, "permission denied") from e
    except av.error.FFmpegError as e:
        if _looks_like_mp4(path):
            raise TruncatedVideoError(
                path, "MP4 without its index (moov atom): the file was cut off or never finalised"
            ) from e
        raise NotAVideoError(path, f"not a video FFmpeg can read ({e.strerror or e})") from e
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        audio = bool(container.streams.audio)
        container.close()
        raise NoVideoStreamError(path, "no video stream (audio only)" if audio else "no video stream")
    return container, streams[0]


def _open_light(path: str):
    try:
        container = av.open(path, metadata_errors="ignore", stream_options=[{"skip_frame": "all"}] * 8)
    except (ValueError, av.error.FFmpegError):
        return None  # streams known only after probing (MPEG-TS), or a bad file: the full open reports it
    video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not video or not (video[0].codec_context.width and video[0].codec_context.height):
        container.close()
        return None
    return container, video[0]


def probe(path: str | os.PathLike, count_frames: bool = True) -> VideoInfo:
    """Describe the video at `path`. `count_frames=False` estimates the frame count where the container lacks one."""
    path = os.fspath(path)
    container, stream = open_container(path)
    try:
        return describe(path, container, stream, count_frames)[0]
    finally:
        container.close()


def describe(
    path: str, container, stream, count_frames: bool = True, rotation: int | None = None
) -> tuple[VideoInfo, Timeline]:
    """Facts and frame timeline of an open container.

    The display rotation is read off the first frame (decoding it) unless the caller gives it; readers pass 0
    and correct it from the first frame they decode anyway (`with_frame_facts`).
    """
    tb = stream.time_base or Fraction(1, av.time_base)
    fps = _average_fps(stream)
    if rotation is None:
        rotation = _display_rotation(path, container, stream)
    truncated = _index_past_end(stream, container.size)

    count, source, times = stream.frames, CountSource.CONTAINER, None
    variable = False
    if count > 0 and not _index_says_constant_rate(stream, count):
        variable = True  # the sample index shows unequal frame durations: time every frame
        times, _ = count_packets(path, stream.index, allow_errors=True)
        times = times or None
    if count <= 0:
        if count_frames:
            times, error = count_packets(path, stream.index, allow_errors=True)
            count, source = len(times), CountSource.COUNTED
            truncated = truncated or error is not None or _ends_early(container, stream, tb, times, fps)
        else:
            count, source = max(1, round(_duration(container, stream, tb) * fps)), CountSource.ESTIMATED
    if times:
        fps = fps or _fps_from_times(times)
        variable = variable or _uneven(times, fps)
        if not variable:
            times = None  # constant rate: frame i at i / fps, as the reference readers assume
    if count <= 0 or not fps:
        raise NotAVideoError(path, "the video stream holds no frames")

    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    pix = stream.codec_context.format
    timeline = Timeline(count, fps, tuple(times) if times is not None and len(times) == count else None)
    info = VideoInfo(
        path=path,
        format=container.format.name,
        codec=stream.codec_context.name,
        **_format_facts(pix),
        width=width,
        height=height,
        rotation=rotation,
        fps=float(fps),
        duration=_duration(container, stream, tb) or timeline.duration,
        num_frames=count,
        num_frames_source=source,
        variable_frame_rate=variable,
        has_audio=bool(container.streams.audio),
        size_bytes=container.size,
        truncated=truncated,
    )
    return info, timeline


def count_packets(path: str, stream_index: int, allow_errors: bool) -> tuple[list[float], str | None]:
    """Demux (no decoding) the video stream from a fresh open; return sorted frame times and any read error.

    Times are seconds from the stream's start. A read error ends the pass: it is returned when `allow_errors`,
    raised as `TruncatedVideoError` otherwise.
    """
    times, error = [], None
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams[stream_index]
        tb = stream.time_base or Fraction(1, av.time_base)
        start = stream.start_time or 0
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue  # the flush packet at the end of the stream
                if packet.is_corrupt:
                    error = error or f"damaged packet at {float((ts - start) * tb):.3f} s"
                    continue  # e.g. the last packet of a cut-off file, read short
                times.append(float((ts - start) * tb))
        except av.error.FFmpegError as e:
            if not allow_errors:
                raise TruncatedVideoError(path, f"the stream breaks off after {len(times)} frames ({e})") from e
            error = str(e)
    times.sort()
    return times, error


def _ends_early(container, stream, tb: Fraction, times: list[float], fps: float) -> bool:
    """Whether counted packets stop well before the video stream's own stated duration (a cut-off Matroska
    file ends its demuxing cleanly; only the duration written in its header tells)."""
    stated = _video_duration(container, stream, tb)
    if stated is None or not times or not fps:
        return False
    return times[-1] + 1 / fps < stated - max(0.5, 2 / fps)


def _video_duration(container, stream, tb: Fraction) -> float | None:
    """The video stream's own duration: its header field, Matroska's per-track DURATION tag, or the container's
    duration when the video is the only stream. None when unknown (another stream may be longer)."""
    if stream.duration:
        return float(stream.duration * tb)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            pass
    if len(container.streams) == 1 and container.duration:
        return container.duration / av.time_base
    return None


def _average_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _fps_from_times(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _uneven(times: list[float], fps: float) -> bool:
    """Whether frame k sits more than half a frame away from k / fps."""
    half = 0.5 / fps
    return any(abs(t - k / fps) > half for k, t in enumerate(times))


def _duration(container, stream, tb: Fraction) -> float:
    if stream.duration:
        return float(stream.duration * tb)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _index_says_constant_rate(stream, count: int) -> bool:
    """True unless a complete sample index (MP4/MOV) shows frames of unequal duration."""
    entries = stream.index_entries
    if len(entries) != count or count < 3:
        return True  # no complete index to judge by: trust the container's rate, as decord does
    stamps = sorted(e.timestamp for e in entries)
    steps = {b - a for a, b in zip(stamps, stamps[1:])}
    return max(steps) - min(steps) <= 1


def _index_past_end(stream, file_size: int) -> bool:
    """Whether the container's index places packets beyond the end of the file (a cut-off file)."""
    entries = stream.index_entries
    if not len(entries) or file_size <= 0:
        return False
    last = entries[len(entries) - 1]
    return last.pos >= 0 and last.pos + last.size > file_size


def with_frame_facts(info: VideoInfo, frame) -> VideoInfo:
    """`info` completed from a decoded frame: its display rotation (width and height swapped as needed) and,
    after a light open, its pixel format."""
    rotation = frame_rotation(frame)
    unknown_format = info.pix_fmt == UNKNOWN
    if rotation == info.rotation and not unknown_format:
        return info
    turned = (rotation - info.rotation) % 180 == 90
    width, height = (info.height, info.width) if turned else (info.width, info.height)
    formats = _format_facts(frame.format) if unknown_format else {}
    return replace(info, rotation=rotation, width=width, height=height, **formats)


def _format_facts(pix) -> dict:
    if pix is None:
        return {"pix_fmt": UNKNOWN, "bit_depth": 8}
    return {"pix_fmt": pix.name, "bit_depth": max((c.bits for c in pix.components), default=8)}


def frame_rotation(frame) -> int:
    """Clockwise display rotation of a decoded frame (FFmpeg reports it counter-clockwise, in -180..180)."""
    return (-round(frame.rotation / 90) * 90) % 360


def _display_rotation(path: str, container, stream) -> int:
    """Clockwise display rotation from the stream's display matrix, read off the first decoded frame.

    PyAV exposes the display matrix only on frames. This leaves the container past its first frame.
    """
    try:
        for frame in container.decode(stream):
            return frame_rotation(frame)
    except av.error.FFmpegError as e:
        raise CorruptVideoError(path, f"decoding failed at the first frame ({e})") from e
    raise NotAVideoError(path, "the video stream holds no decodable frame")


def _looks_like_mp4(path: str) -> bool:
    """An ISO-BMFF file (MP4/MOV) starts with an `ftyp` box: if FFmpeg then cannot open it, its index is missing."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp"
