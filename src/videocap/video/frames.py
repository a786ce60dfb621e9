"""`sample()`: the video side of the data flow in one call — probe, choose frames, decode them.

Owns the `Frames` result every later stage consumes (models' processors, layouts, tasks). Decoding lives in
decode.py and the choice of frames in sampling.py; this file only joins them and attaches the path to errors
raised where it was not known.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from videocap.errors import WindowError
from videocap.video.decode import SeekMode, VideoReader
from videocap.video.probe import VideoInfo
from videocap.video.sampling import SamplePlan, Strategy, Uniform16, plan


@dataclass(frozen=True)
class Frames:
    """Sampled frames of one video, in time order, with where they came from."""

    images: list[np.ndarray]  # n arrays (H, W, 3) uint8 RGB, rotated for display; repeated frames share one array
    timestamps: tuple[float, ...]  # presentation time of each frame returned (seconds from the first frame)
    requested: tuple[float, ...]  # the times the strategy asked for
    indices: tuple[int, ...]  # the frame indices the strategy chose
    info: VideoInfo
    mode: SeekMode
    partial: bool = False  # sampled from the decodable part of a damaged file
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.timestamps)

    def pil(self) -> list[Image.Image]:
        return [Image.fromarray(image) for image in self.images]


def sample(
    path: str | os.PathLike,
    strategy: Strategy = Uniform16(),
    *,
    start: float | None = None,
    end: float | None = None,
    mode: SeekMode = SeekMode.EXACT,
    max_side: int | None = None,
    allow_partial: bool = False,
    threads: int = 0,
) -> Frames:
    """Sample the frames `strategy` picks inside [start, end] (seconds) and decode them to RGB.

    Raises a `VideoError` subclass naming the file for any input that cannot be used.
    """
    path = os.fspath(path)
    with VideoReader(path, allow_partial=allow_partial, threads=threads) as reader:
        chosen = choose(reader, strategy, start, end)
        decoded = reader.read(chosen.timestamps, mode, max_side)
        return Frames(
            images=[f.image for f in decoded],  # no np.stack: a 100 MB copy per 16 1080p frames
            timestamps=tuple(f.timestamp for f in decoded),
            requested=chosen.timestamps,
            indices=chosen.indices,
            info=reader.info,
            mode=mode,
            partial=reader.partial or bool(reader.warnings),
            warnings=tuple(reader.warnings),
        )


def choose(reader: VideoReader, strategy: Strategy, start: float | None = None, end: float | None = None) -> SamplePlan:
    """The frames `strategy` picks from `reader`'s timeline inside [start, end]; a bad window names the file."""
    try:
        return plan(strategy, reader.timeline, start, end)
    except WindowError as e:
        raise e.with_path(reader.path) from e
