"""Writing videos with PyAV: the bundled example clip, test fixtures, benchmark clips, synthetic datasets.

Owns encoding only. Frames are (H, W, 3) uint8 RGB arrays; `times` (seconds) gives a variable frame rate,
`rotation` writes a display matrix (as phones do) so readers must turn the picture, and `audio` adds a quiet
tone track. Codec options are FFmpeg's (`g`, `crf`, `preset`, ...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    times: Iterable[float] | None = None,
    rotation: int = 0,
    audio: bool = False,
) -> None:
    """Encode `frames` to `path`; the container follows the extension (.mp4, .mkv, .webm, .mov, .avi, .gif)."""
    rate = Fraction(fps).limit_denominator(1001)
    times = list(times) if times is not None else None
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with av.open(os.fspath(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {k: str(v) for k, v in (options or {}).items()}
        if times is not None:
            stream.time_base = Fraction(1, 1000) if codec == "gif" else Fraction(1, 90000)
            stream.codec_context.time_base = stream.time_base
        if rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        tone = _add_tone(container) if audio else None
        for i, image in enumerate(_chain(first, frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if times is not None:
                frame.pts = round(times[i] / stream.time_base)
                frame.time_base = stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if tone is not None:
            duration = (times[-1] + 1 / fps) if times is not None else (i + 1) / fps
            _write_tone(container, tone, duration)


def write_audio(path: str | os.PathLike, seconds: float = 1.0) -> None:
    """An audio-only file (a quiet tone), for testing what happens when a video is expected."""
    with av.open(os.fspath(path), "w") as container:
        _write_tone(container, _add_tone(container), seconds)


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]):
    yield first
    yield from rest


def _add_tone(container):
    codec = "libopus" if container.format.name in ("matroska", "webm", "ogg") else "aac"
    return container.add_stream(codec, rate=48000)


def _write_tone(container, stream, seconds: float) -> None:
    rate, block = 48000, 1024
    for start in range(0, int(seconds * rate), block):
        t = (np.arange(start, start + block) / rate).astype(np.float32)
        samples = (0.1 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
