"""Opening a video and finding out what it is: the facts `videocap info` prints and sampling needs.

Owns: path checks and FFmpeg's open errors turned into typed `VideoError`s, the video stream's facts
(`VideoInfo`), the frame timeline (count and, where needed, every frame's time), the keyframes, and truncation
detection. Reads the index and packets through packets.py; does not decode pixels (decode.py) or choose frames
(sampling.py).

Frame count, cheapest first: a complete sample index (MP4/MOV, AVI with idx1), less the samples an edit list
hides; otherwise a demux-only pass over the packets (no decoding), which also yields exact frame times and the
keyframes; otherwise, when counting is declined, duration x fps. A variable-rate MP4 gets its exact frame
times from the same demux-only pass.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, replace
from enum import Enum
from fractions import Fraction

import av

from videocap.errors import (
    CorruptVideoError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    VideoAccessError,
    VideoNotFoundError,
)
from videocap.video.packets import (
    Keyframes,
    index_times,
    index_is_complete,
    index_past_end,
    read_index,
    scan_packets,
)
from videocap.video.sampling import Timeline

av.logging.set_level(None)  # FFmpeg's own log lines would interleave with ours; errors reach us as exceptions.

UNKNOWN = "unknown"


class CountSource(str, Enum):
    """Where `VideoInfo.num_frames` came from."""

    CONTAINER = "container"  # the container's sample index or count
    COUNTED = "counted"  # one demux pass over the packets
    ESTIMATED = "estimated"  # duration x average fps


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
    duration: float  # seconds of video (the video track's own length where the container says it)
    num_frames: int
    num_frames_source: CountSource
    variable_frame_rate: bool
    has_audio: bool
    size_bytes: int
    truncated: bool  # the data ends before what the container promises (cut off, or unreadable further on)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_frames_source"] = self.num_frames_source.value
        return d


@dataclass(frozen=True)
class Description:
    """Everything an open container says about its video stream, for readers.

    When `scanned`, the timeline was counted from the packets and covers exactly the decodable part.
    """

    info: VideoInfo
    timeline: Timeline
    keyframes: Keyframes
    scanned: bool


def check_path(path: str) -> None:
    """Raise a typed error for a path that cannot be a video before FFmpeg sees it."""
    if not os.path.exists(path):
        raise VideoNotFoundError(path, "no such file")
    if os.path.isdir(path):
        raise NotAVideoError(path, "is a directory, not a video file")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotAVideoError(path, "not a regular file (a pipe, socket or device)")
    if os.path.getsize(path) == 0:
        raise NotAVideoError(path, "empty file (0 bytes)")


def open_container(
    path: str, light: bool = False, hwaccel=None
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and return the container and its first real video stream, or raise a `VideoError`.

    `light` skips the decoding inside FFmpeg's stream-info probe, which decodes the first frame (as costly as a
    keyframe) only to learn the pixel format. The pixel format then stays unknown until a frame is decoded
    (`with_frame_facts`), and outside MP4/MOV the timing fields (start time, durations) come out wrong: use a
    light open there only for a file a full open has described (`light_open_keeps_timing`). `hwaccel`: decode on
    a GPU (`hardware.hwaccel`).
    """
    check_path(path)
    if light:
        opened = _open_light(path, hwaccel)
        if opened is not None:
            return opened
    try:
        container = av.open(path, metadata_errors="ignore", hwaccel=hwaccel)
    except PermissionError as e:
        raise VideoAccessError(path, "permission denied") from e
    except av.error.FFmpegError as e:
        if _looks_like_mp4(path):
            raise TruncatedVideoError(
                path, "MP4 without its index (moov atom): the file was cut off or never finalised"
            ) from e
        raise NotAVideoError(path, f"not a video FFmpeg can read ({e.strerror or e})") from e
    if _still_image(container.format.name):
        container.close()
        raise NotAVideoError(path, "a still image, not a video")
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        audio = bool(container.streams.audio)
        container.close()
        raise NoVideoStreamError(path, "no video stream (audio only)" if audio else "no video stream")
    return container, streams[0]


def light_open_keeps_timing(container: av.container.InputContainer) -> bool:
    """MP4/MOV take start time and durations from their sample tables, not from probing decoded frames."""
    return container.format.name.startswith("mov,mp4")


def _still_image(format_name: str) -> bool:
    """FFmpeg opens still images (PNG, JPEG, ... through its image2 demuxers) as one-frame videos."""
    return format_name == "image2" or (format_name.endswith("_pipe") and format_name != "gif_pipe")


def _open_light(path: str, hwaccel=None):
    try:
        container = av.open(path, metadata_errors="ignore", stream_options=[{"skip_frame": "all"}] * 8, hwaccel=hwaccel)
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
        return describe(path, container, stream, count_frames).info
    finally:
        container.close()


def frames_are_numbered(container: av.container.InputContainer) -> bool:
    """AVI stamps packets with frame numbers in decode order; their presentation stamps are unreliable (with
    B-frames, FFmpeg's output stamps are off by the reorder delay or out of order)."""
    return container.format.name == "avi"


def first_frame_dts(path: str, stream_index: int) -> int | None:
    """The decode stamp that releases the first frame from the decoder: the frame-number origin in AVI."""
    with av.open(path, metadata_errors="ignore") as container:
        try:
            for frame in container.decode(container.streams[stream_index]):
                return frame.dts
        except av.error.FFmpegError:
            return None
    return None


def describe(
    path: str,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    count_frames: bool = True,
    rotation: int | None = None,
) -> Description:
    """What an open container says about `stream`.

    The display rotation is read off the first frame (decoding it) unless the caller gives it; readers pass 0
    and correct it from the first frame they decode anyway (`with_frame_facts`).
    """
    tb = stream.time_base or Fraction(1, av.time_base)
    start = stream.start_time or 0
    fps = _average_fps(stream)
    if rotation is None:
        rotation = _display_rotation(path, container, stream)
    index = read_index(stream)
    numbered = frames_are_numbered(container)
    stated = _video_duration(container, stream, tb)

    scan = None
    variable = False
    if index_is_complete(index, stream.frames):
        count, source = sum(not e.discard for e in index), CountSource.CONTAINER
        keys = Keyframes.from_stamps([e.stamp for e in index if e.keyframe], tb, start)
        truncated = index_past_end(index, container.size)
        # Decode times pace the frames like presentation times unless an edit list hides some of them.
        hidden = count < len(index)
        variable = hidden or (bool(fps) and _uneven(index_times(index, tb), fps))
        if variable and not truncated:
            scan = scan_packets(path, stream.index, numbered)  # exact presentation times
    elif count_frames:
        # No complete index: count the packets (also how a cut-off AVI, Matroska or MPEG-TS file shows).
        scan = scan_packets(path, stream.index, numbered)
        count, source = len(scan.times), CountSource.COUNTED
        keys = Keyframes.from_stamps(scan.key_stamps, tb, start)
        truncated = scan.error is not None or count < stream.frames or _ends_early(scan.times, fps, stated)
    else:
        count = stream.frames or max(1, round((stated or _container_duration(container)) * fps))
        source = CountSource.CONTAINER if stream.frames else CountSource.ESTIMATED
        keys, truncated = Keyframes(), False

    times = scan.times if scan is not None and scan.times else None
    if times is not None:
        fps = fps or _fps_from_times(times)
        variable = _uneven(times, fps)
        if not variable:
            times = None  # constant rate: frame i at i / fps, as the reference readers assume
    if count <= 0 or not fps:
        raise NotAVideoError(path, "the video stream holds no frames")

    width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    timeline = Timeline(count, fps, tuple(times) if times is not None and len(times) == count else None)
    info = VideoInfo(
        path=path,
        format=container.format.name,
        codec=stream.codec_context.name,
        **_format_facts(stream.codec_context.format),
        width=width,
        height=height,
        rotation=rotation,
        fps=float(fps),
        duration=stated or timeline.duration,
        num_frames=count,
        num_frames_source=source,
        variable_frame_rate=variable,
        has_audio=bool(container.streams.audio),
        size_bytes=container.size,
        truncated=truncated,
    )
    return Description(info, timeline, keys, scanned=scan is not None and source is CountSource.COUNTED)


def with_frame_facts(info: VideoInfo, frame, rotation: int | None = None) -> VideoInfo:
    """`info` completed from a decoded frame: its display rotation (width and height swapped as needed; `rotation`
    where the frame given is a copy without its side data) and, when the open did not learn it, its pixel format."""
    rotation = frame_rotation(frame) if rotation is None else rotation
    unknown_format = info.pix_fmt == UNKNOWN
    if rotation == info.rotation and not unknown_format:
        return info
    turned = (rotation - info.rotation) % 180 == 90
    width, height = (info.height, info.width) if turned else (info.width, info.height)
    formats = _format_facts(frame.format) if unknown_format else {}
    return replace(info, rotation=rotation, width=width, height=height, **formats)


def frame_rotation(frame) -> int:
    """Clockwise display rotation of a decoded frame (FFmpeg reports it counter-clockwise, in -180..180)."""
    return (-round(frame.rotation / 90) * 90) % 360


def _format_facts(pix) -> dict:
    if pix is None:
        return {"pix_fmt": UNKNOWN, "bit_depth": 8}
    return {"pix_fmt": pix.name, "bit_depth": max((c.bits for c in pix.components), default=8)}


def _ends_early(times: list[float], fps: float, stated: float | None) -> bool:
    """Whether the packets stop well before the video track's stated length (a cut-off Matroska file ends
    its demuxing cleanly; only the length written in its header tells)."""
    if stated is None or not times or not fps:
        return False
    return times[-1] + 1 / fps < stated - max(0.5, 2 / fps)


def _video_duration(container, stream, tb: Fraction) -> float | None:
    """The video track's own length in seconds from its first frame, or None when the container does not say.

    Matroska writes it per track as a DURATION tag (the track's end time); MP4 and others in the stream header.
    The container's overall duration is used only when the video is its only stream: another stream, audio
    say, may run longer.
    """
    start = float((stream.start_time or 0) * tb)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return max(0.0, int(hours) * 3600 + int(minutes) * 60 + float(seconds) - start)
        except ValueError:
            pass
    if stream.duration:
        return float(stream.duration * tb)
    if len(container.streams) == 1 and container.duration:
        return max(0.0, container.duration / av.time_base - start)
    return None


def _container_duration(container) -> float:
    return container.duration / av.time_base if container.duration else 0.0


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
