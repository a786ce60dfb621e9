"""Composing sampled frames into the single images the models were trained on.

- `grid`: ShareGPT4Video-8B's keyframe grid (seed `run.py`): a ceil(sqrt(n)) square of cells separated by 50 px
  white bands, empty cells white, then resized (bilinear, sizes truncated to integers) so that its longest side
  is at most 1920 px.
- `strip`: ShareCaptioner-Video's fast-captioning image (captioner demo `img_process`): frames stacked vertically
  with 20 px gaps, a left margin of max(w//4, 100) px holding an `<IMAGE k>` label beside each frame, and a 2 px
  black line between frames.
- `pair`: the sliding captioner's frame pair, two frames stacked with a 50 px white gap.

Geometry follows the reference formulas to the pixel. Frames are (H, W, 3) uint8 RGB arrays or PIL images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from videocap.errors import LayoutError

GRID_BAND = 50
GRID_MAX_SIDE = 1920
STRIP_GAP = 20
PAIR_GAP = 50
MAX_CANVAS_BYTES = 2 << 30  # the grid is built full size before the reference's downscale

FrameLike = np.ndarray | Image.Image


def grid_shape(n: int) -> int:
    """Cells per side of the square grid holding n frames."""
    if n < 1:
        raise LayoutError("a grid needs at least one frame")
    return int(np.ceil(np.sqrt(n)))


def grid_cells(n: int, width: int, height: int, band: int = GRID_BAND) -> list[tuple[int, int]]:
    """Top-left (x, y) of each frame's cell in the grid before resizing, row by row."""
    side = grid_shape(n)
    return [((k % side) * (width + band), (k // side) * (height + band)) for k in range(n)]


def grid_size(n: int, width: int, height: int, band: int = GRID_BAND, max_side: int = GRID_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of the final grid image, after the reference's downscale."""
    side = grid_shape(n)
    full_w, full_h = side * width + (side - 1) * band, side * height + (side - 1) * band
    return _fit(full_w, full_h, max_side)


def grid(frames: Sequence[FrameLike] | np.ndarray, band: int = GRID_BAND, max_side: int = GRID_MAX_SIDE) -> Image.Image:
    """ShareGPT4Video-8B's grid image of `frames` (all the same size)."""
    arrays = [_as_array(f) for f in frames]
    height, width = arrays[0].shape[:2]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise LayoutError("grid frames must all have the same size")
    side = grid_shape(len(arrays))
    _check_canvas(side * width + (side - 1) * band, side * height + (side - 1) * band, len(arrays))
    canvas = np.full((side * height + (side - 1) * band, side * width + (side - 1) * band, 3), 255, np.uint8)
    for (x, y), a in zip(grid_cells(len(arrays), width, height, band), arrays):
        canvas[y : y + height, x : x + width] = a
    image = Image.fromarray(canvas)
    size = _fit(image.width, image.height, max_side)
    return image if size == image.size else image.resize(size, Image.BILINEAR)


def strip(frames: Sequence[FrameLike] | np.ndarray) -> Image.Image:
    """ShareCaptioner-Video's labelled vertical strip of `frames`."""
    images = [_as_pil(f) for f in frames]
    if not images:
        raise LayoutError("a strip needs at least one frame")
    inner_w = max(im.width for im in images)
    margin = max(inner_w // 4, 100)
    width = inner_w + STRIP_GAP + margin
    height = sum(im.height + STRIP_GAP for im in images) + STRIP_GAP
    _check_canvas(width, height, len(images))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = label_font(margin // 5)
    y = STRIP_GAP // 2
    for k, im in enumerate(images):
        canvas.paste(im, (margin, y))
        draw.text((0, y + im.height // 2), f"<IMAGE {k}>", font=font, fill="black")
        if k + 1 < len(images):
            line_y = y + im.height + STRIP_GAP // 2
            draw.line([(0, line_y), (width, line_y)], fill="black", width=2)
        y += im.height + STRIP_GAP
    return canvas


def pair(first: FrameLike, second: FrameLike, gap: int = PAIR_GAP) -> Image.Image:
    """The sliding captioner's pair: `first` above `second`, a white gap between (canvas sized by `first`)."""
    a, b = _as_pil(first), _as_pil(second)
    canvas = Image.new("RGB", (a.width, 2 * a.height + gap), "white")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (0, a.height + gap))
    return canvas


@lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font, scaled so labels are as wide as the reference's SimHei labels.

    The captioner drew labels in SimHei, whose Latin glyphs are half an em wide; `<IMAGE 10>` at size
    margin/5 then just fills the margin. Pillow's font is wider per em, so it is scaled down to the same width,
    keeping the labels inside the margin as in the images the model was trained on.
    """
    if not features.check("freetype2"):
        raise RuntimeError("Pillow was built without FreeType; the strip layout needs its bundled TrueType font")
    size = max(1, size)
    sample = "<IMAGE 10>"
    font = ImageFont.load_default(size=size)
    target = len(sample) * size / 2
    scaled = max(1, math.floor(size * target / font.getlength(sample)))
    return ImageFont.load_default(size=min(size, scaled))


def _check_canvas(width: int, height: int, count: int) -> None:
    if width * height * 3 > MAX_CANVAS_BYTES:
        raise LayoutError(
            f"a layout of {count} frames would be a {width}x{height} canvas ({width * height * 3 / 2**30:.1f} GiB); "
            "use fewer frames or smaller ones (--max-side)"
        )


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The reference's resize rule: longest side to max_side, the other scaled, both truncated to integers."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / width if width > height else max_side / height
    return int(width * scale), int(height * scale)


def _as_array(frame: FrameLike) -> np.ndarray:
    array = np.asarray(frame.convert("RGB")) if isinstance(frame, Image.Image) else np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise LayoutError(f"expected an (H, W, 3) uint8 RGB frame, got {array.shape} {array.dtype}")
    return array


def _as_pil(frame: FrameLike) -> Image.Image:
    return frame.convert("RGB") if isinstance(frame, Image.Image) else Image.fromarray(_as_array(frame))
