"""Semantic keyframes: the frames where a video's content changes, picked as ShareGPT4Video's keyframe script does.

Owns the selection rule and running it over a video as a stream. It does not decode (decode.py) or know CLIP's
internals (models/clip_vision.py): any function from RGB frames to feature vectors can drive it.

The rule (the seed's `keyframe_extraction_example.py`), over the frames of the video or of the [start, end] window:
- leading solid-colour frames are skipped, at most one interval's worth: the first frame is the first one that is
  not a single colour, or the last frame of the first interval when all of them are;
- candidates are every `ceil(fps * interval)`-th frame after that first frame;
- the first frame is always a keyframe; a candidate becomes one when the cosine similarity of its feature to the
  last keyframe's feature is below `threshold` (not to the previous candidate: slow drifts add up to a keyframe);
- the last frame is a keyframe when at least one interval of frames separates it from the last keyframe
  (frames to the end, counted from that keyframe, >= the interval), or when no candidate was kept.
The feature is CLIP's CLS token from the last encoder layer, before the post-layernorm (the script's
`CLIPVisionModel(...).hidden_states[-1][:, 0]`), of the frame after CLIP's image processor.

Where videocap departs from the script (documented in the README):
- frames are RGB, as CLIP was trained; the script hands OpenCV's BGR arrays to the RGB processor;
- times are the frames' presentation times (the script prints index / int(fps), counted after the skipped frames)
  and the interval uses the true average frame rate (the script truncates it: 29.97 fps gives 58 frames, not 60);
- "solid colour" is any single colour within a small tolerance for codec rounding (the script: all values equal,
  so exact greys only);
- the script's dataset rules (clips under 10 s skipped, clips cut at 120 s) are off unless `min_duration` and
  `max_duration` are given.

Memory is flat in the video's length: frames are decoded one at a time and embedded `batch_size` at a time, and
only the last keyframe's feature is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from videocap.errors import DeviceError, KeyframeSettingsError, UnsafeCheckpointError, VideoTooShortError, WindowError
from videocap.video.decode import DecodedFrame, SeekMode, VideoReader
from videocap.video.sampling import frame_range

if TYPE_CHECKING:  # torch is imported on first use: the video package (and `videocap info`) stays torch-free
    import torch

DEFAULT_MODEL = "openai/clip-vit-large-patch14-336"
DEFAULT_THRESHOLD = 0.93
DEFAULT_INTERVAL = 2.0
SOLID_TOLERANCE = 2  # levels of 255 each channel may vary and still count as one colour (codec rounding)

T = TypeVar("T")
Embed = Callable[[Sequence[np.ndarray]], "torch.Tensor"]  # n (H, W, 3) uint8 RGB frames -> (n, C) features


@dataclass(frozen=True)
class Keyframes:
    """The keyframes of one video, in time order, and how they were found."""

    timestamps: tuple[float, ...]  # presentation times (seconds) of the keyframes
    indices: tuple[int, ...]  # their frame indices in the video's timeline
    similarities: tuple[float | None, ...]  # each keyframe's similarity to the one before (None: first, last)
    interval_frames: int  # frames between candidates
    candidates: int  # frames embedded, the first frame included
    skipped_solid: int  # leading single-colour frames skipped
    partial: bool = False  # selected from the decodable part of a damaged file
    warnings: tuple[str, ...] = ()


class ClipFeatures:
    """The script's feature: CLS token of the CLIP vision tower's last encoder layer, before the post-layernorm."""

    def __init__(self, model, preprocessing):
        self.model, self.preprocessing = model, preprocessing

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        import torch

        from videocap.models.clip_vision import preprocess

        weight = self.model.embeddings.patch_embedding.weight
        pixels = preprocess(images, self.preprocessing).to(weight.device, weight.dtype)  # (n, 3, 336, 336)
        with torch.inference_mode():
            return self.model.features(pixels, -1)[:, 0].float().cpu()  # (n, C)


class KeyframeSelector:
    """Selects keyframes with a feature function: `KeyframeSelector.load()` for CLIP, or any `embed` (tests)."""

    def __init__(self, embed: Embed, *, batch_size: int = 8, progress: bool = True, name: str = "custom"):
        if batch_size < 1:
            raise KeyframeSettingsError(f"batch_size must be at least 1, got {batch_size}")
        self.embed, self.batch_size, self.progress, self.name = embed, batch_size, progress, name

    @classmethod
    def load(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool = True,
        *,
        allow_pickle: bool = False,
        batch_size: int = 8,
    ) -> KeyframeSelector:
        """A selector on the CLIP checkpoint `model` (Hub id[@revision] or local directory), through videocap's Hub
        cache. `dtype` defaults to float32 on every device, as the script runs: near the threshold, bf16 features
        would flip decisions. OpenAI's checkpoint ships only pickled weights: it needs `allow_pickle=True`."""
        import torch

        from videocap.api import DTYPES, pick_device  # on first use: the API module pulls in the engine
        from videocap.models.clip_vision import load_clip_vision
        from videocap.weights import hub

        dev = device if isinstance(device, torch.device) else pick_device(device)
        if dtype is None or isinstance(dtype, torch.dtype):
            dt = dtype or torch.float32
        elif dtype in DTYPES:
            dt = DTYPES[dtype]
        else:
            raise DeviceError(f"unknown dtype {dtype!r} for the keyframe model (use {', '.join(DTYPES)})")
        spec = os.fspath(model)
        try:
            folder = hub.resolve(spec, allow_pickle=allow_pickle, progress=progress)
            net, preprocessing = load_clip_vision(folder, device=dev, dtype=dt, allow_pickle=allow_pickle)
        except UnsafeCheckpointError as e:
            raise UnsafeCheckpointError(
                f"keyframe model {e}, or give --keyframe-model a CLIP checkpoint saved as safetensors"
            ) from e
        return cls(ClipFeatures(net, preprocessing), batch_size=batch_size, progress=progress, name=spec)

    def select(
        self,
        path: str | os.PathLike,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        interval: float = DEFAULT_INTERVAL,
        start: float | None = None,
        end: float | None = None,
        seek: SeekMode = SeekMode.EXACT,
        max_side: int | None = None,
        allow_partial: bool = False,
        min_duration: float | None = None,
        max_duration: float | None = None,
    ) -> list[float]:
        """Keyframe timestamps (seconds) of the video at `path`, inside [start, end] when given. See `scan`."""
        return list(self.scan(
            path, threshold=threshold, interval=interval, start=start, end=end, seek=seek, max_side=max_side,
            allow_partial=allow_partial, min_duration=min_duration, max_duration=max_duration,
        ).timestamps)

    def scan(
        self,
        video: str | os.PathLike | VideoReader,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        interval: float = DEFAULT_INTERVAL,
        start: float | None = None,
        end: float | None = None,
        seek: SeekMode = SeekMode.EXACT,
        max_side: int | None = None,
        allow_partial: bool = False,
        min_duration: float | None = None,
        max_duration: float | None = None,
    ) -> Keyframes:
        """Keyframes of `video` (a path, or an open reader, whose `allow_partial` then applies) with how they
        were found.

        `threshold`: keep a candidate whose similarity to the last keyframe is below this (cosine, in [-1, 1]).
        `interval`: seconds between candidates. `seek`/`max_side`: how candidates are decoded (a downscale changes
        the pixels CLIP sees slightly). `min_duration`: raise VideoTooShortError unless more than this many
        seconds of frames remain after the leading solid frames; `max_duration`: consider only this many seconds
        from the first frame (the script's dataset rules, 10 and 120; off by default).
        """
        _check_settings(threshold, interval, min_duration, max_duration)
        seek = SeekMode(seek)
        if isinstance(video, VideoReader):
            return self._scan(video, threshold, interval, start, end, seek, max_side, min_duration, max_duration)
        with VideoReader(video, allow_partial=allow_partial) as reader:
            return self._scan(reader, threshold, interval, start, end, seek, max_side, min_duration, max_duration)

    # -- the rule ------------------------------------------------------------------------------------------

    def _scan(self, reader: VideoReader, threshold: float, interval: float, start: float | None, end: float | None,
              seek: SeekMode, max_side: int | None, min_duration: float | None,
              max_duration: float | None) -> Keyframes:
        import torch.nn.functional as F

        timeline = reader.timeline
        try:
            first, stop = frame_range(timeline, start, end)
        except WindowError as e:
            raise e.with_path(reader.path) from e
        step = interval_frames(timeline.fps, interval)
        head, skipped = first_content_frame(reader, range(first, min(first + step, stop)), seek, max_side)
        first += skipped
        if max_duration is not None:  # the script stops reading once frame / fps > max_duration
            stop = min(stop, first + int(_round(max_duration * timeline.fps)) + 1)
        if min_duration is not None and stop - first <= math.ceil(_round(min_duration * timeline.fps)):
            raise VideoTooShortError(
                reader.path, f"{(stop - first) / timeline.fps:.2f} s of frames"
                f"{' after the leading solid frames' if skipped else ''}, not more than the {min_duration:g} s "
                "minimum (min_duration / --keyframe-min-duration)"
            )
        candidates = range(first + step, stop, step)
        kept_index, kept_time, sims = [first], [head.timestamp], [None]
        with tqdm(total=1 + len(candidates), unit="frame", desc="keyframes", disable=not self.progress) as bar:
            reference = self.embed([head.image])[0]  # (C,): the last keyframe's feature, all that is kept
            bar.update(1)
            frames = reader.iter_frames([timeline.time_of(i) for i in candidates], seek, max_side)
            for batch in _batches(zip(candidates, frames), self.batch_size):
                features = self.embed([frame.image for _, frame in batch])  # (n, C)
                for (index, frame), feature in zip(batch, features):
                    similarity = F.cosine_similarity(reference[None], feature[None], dim=1).item()
                    if similarity < threshold:
                        kept_index.append(index), kept_time.append(frame.timestamp), sims.append(similarity)
                        reference = feature
                bar.update(len(batch))
        last = stop - 1
        if last > kept_index[-1] and (len(kept_index) == 1 or stop - kept_index[-1] >= step):
            kept_index.append(last), kept_time.append(timeline.time_of(last)), sims.append(None)
        return Keyframes(
            tuple(kept_time), tuple(kept_index), tuple(sims), step, 1 + len(candidates), skipped,
            partial=reader.partial or bool(reader.warnings), warnings=tuple(reader.warnings),
        )


def interval_frames(fps: float, seconds: float) -> int:
    """Frames between candidates: ceil(fps * seconds), at least 1."""
    return max(1, math.ceil(_round(fps * seconds)))


def is_solid(image: np.ndarray, tolerance: int = SOLID_TOLERANCE) -> bool:
    """Whether every pixel of `image` (H, W, 3) has one colour, each channel within `tolerance` levels."""
    pixels = image.reshape(-1, image.shape[-1])
    return bool((pixels.max(axis=0).astype(np.int16) - pixels.min(axis=0) <= tolerance).all())


def first_content_frame(reader: VideoReader, indices: range, seek: SeekMode,
                        max_side: int | None) -> tuple[DecodedFrame, int]:
    """The first frame among `indices` that is not a single colour (the last one if all are), and how many
    frames before it were skipped. Decodes only as far as it has to."""
    frames = reader.iter_frames([reader.timeline.time_of(i) for i in indices], seek, max_side)
    try:
        for k, frame in enumerate(frames):
            if k == len(indices) - 1 or not is_solid(frame.image):
                return frame, k
    finally:
        frames.close()
    raise AssertionError("a window always holds a frame")  # frame_range guarantees indices is not empty


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_settings(threshold: float, interval: float, min_duration: float | None, max_duration: float | None) -> None:
    if not (isinstance(threshold, (int, float)) and -1 <= threshold <= 1):
        raise KeyframeSettingsError(f"keyframe threshold must be a cosine similarity in [-1, 1], got {threshold}")
    if not (isinstance(interval, (int, float)) and 0 < interval < math.inf):
        raise KeyframeSettingsError(f"keyframe interval must be a positive number of seconds, got {interval}")
    for name, value in (("min_duration", min_duration), ("max_duration", max_duration)):
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise KeyframeSettingsError(f"keyframe {name} must be a positive number of seconds, got {value}")


def _round(x: float) -> float:
    """Round away float noise before ceil/int (30000/1001 * 2 must not become 60.00000000001 -> 61)."""
    return round(x, 6)
