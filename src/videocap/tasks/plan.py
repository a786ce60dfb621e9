"""Which frames of a video a captioning mode will look at, decided before any model is loaded.

Planning opens the video (probe), checks the window and picks the timestamps: uniform16 for the fast mode,
one frame every N seconds for the sliding mode, or semantic keyframes (CLIP, video/keyframes.py) for either.
A bad video or window fails here, before gigabytes of weights are read. Frames themselves are decoded later,
by the task that needs them (the sliding mode streams them two at a time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from videocap.errors import VideocapError
from videocap.video import Every, SeekMode, Uniform16, VideoReader
from videocap.video.frames import choose

DEFAULT_KEYFRAME_MODEL = "openai/clip-vit-large-patch14-336"
KEYFRAMES = "keyframes"
FAST_KEYFRAME_CAP = 16  # the fast mode's grid shows at most this many keyframes (spread evenly among them)


@dataclass(frozen=True)
class KeyframeOptions:
    """Semantic keyframe selection (REFERENCE.md, keyframe_extraction_example.py)."""

    model: str = DEFAULT_KEYFRAME_MODEL
    threshold: float = 0.93  # keep a candidate whose similarity to the last keyframe is below this
    interval: float = 2.0  # seconds between candidates
    device: str | None = None
    dtype: str | None = None
    allow_pickle: bool = False  # OpenAI's CLIP checkpoint ships only pickled weights
    progress: bool = True


@dataclass(frozen=True)
class VideoPlan:
    """A video and the times (seconds, ascending) of the frames a mode will decode."""

    path: str
    timestamps: tuple[float, ...]
    seek: SeekMode = SeekMode.EXACT
    max_side: int | None = None
    allow_partial: bool = False
    strategy: str = "uniform16"  # uniform16 | every | keyframes
    warnings: tuple[str, ...] = ()
    decode_device: str | None = None  # where the frames are decoded: None (the CPU) or "cuda[:N]" (video/hardware.py)


def plan_video(
    video: str | os.PathLike,
    mode: str,
    *,
    frames: int | str | None = None,
    seconds: float = 2.0,
    start: float | None = None,
    end: float | None = None,
    seek: SeekMode = SeekMode.EXACT,
    max_side: int | None = None,
    allow_partial: bool = False,
    keyframes: KeyframeOptions | None = None,
    decode_device: str | None = None,
) -> VideoPlan:
    """Plan `video` for `mode` ("fast" or "slide").

    `frames`: the fast mode's frame count (uniform16, default 16), or "keyframes" for either mode. The sliding
    mode samples one frame every `seconds` otherwise. `decode_device`: where the planned frames will be decoded
    ("cuda[:N]": the GPU's video engines, same pixels); planning itself reads the file on the CPU.
    """
    path = os.fspath(video)
    if frames == KEYFRAMES:
        times = select_keyframes(path, keyframes or KeyframeOptions(), start=start, end=end, seek=seek,
                                 max_side=max_side, allow_partial=allow_partial)
        if mode == "fast" and len(times) > FAST_KEYFRAME_CAP:
            times = [times[round(k * (len(times) - 1) / (FAST_KEYFRAME_CAP - 1))] for k in range(FAST_KEYFRAME_CAP)]
        return VideoPlan(path, tuple(times), seek, max_side, allow_partial, KEYFRAMES, decode_device=decode_device)
    if mode == "fast":
        frames = 16 if frames is None else frames
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise VideocapError(f"frames must be a positive number or {KEYFRAMES!r}, got {frames!r}")
        strategy, name = Uniform16(frames), "uniform16"
    elif mode == "slide":
        if frames is not None:
            raise VideocapError(f"the slide mode samples a frame every `seconds` (--seconds S) or keyframes (--frames "
                                f"keyframes), not {frames!r} frames: a frame count is for the fast mode")
        if not seconds > 0:
            raise VideocapError(f"seconds must be positive, got {seconds!r}")
        strategy, name = Every(seconds), "every"
    else:
        raise VideocapError(f"unknown captioning mode {mode!r} (use fast or slide)")
    with VideoReader(path, allow_partial=allow_partial) as reader:
        chosen = choose(reader, strategy, start, end)
        warnings = tuple(reader.warnings)
    return VideoPlan(path, chosen.timestamps, seek, max_side, allow_partial, name, warnings, decode_device)


def select_keyframes(path: str, options: KeyframeOptions, **window) -> list[float]:
    """Keyframe timestamps of `path` (seconds, ascending), by video/keyframes.py's selector."""
    selector = keyframe_selector(options.model, options.device, options.dtype, options.allow_pickle,
                                 options.progress)
    times = selector.select(path, threshold=options.threshold, interval=options.interval, **window)
    if not times:
        raise VideocapError(f"{path}: keyframe selection found no frame")
    return sorted(float(t) for t in times)


@lru_cache(maxsize=2)
def keyframe_selector(model: str, device: str | None, dtype: str | None, allow_pickle: bool = False,
                      progress: bool = True):
    """The CLIP keyframe selector for `model`, loaded once per process (several videos share it)."""
    try:
        from videocap.video.keyframes import KeyframeSelector
    except ImportError as e:
        raise VideocapError(f"keyframe selection is not available in this installation ({e})") from e
    extra = {"allow_pickle": True} if allow_pickle else {}
    if not progress:
        extra["progress"] = False
    return KeyframeSelector.load(model=model, device=device, dtype=dtype, **extra)
