"""IXC2-4KHD's dynamic high-resolution input: `HD_transform`, its tile grid, token count and pixel tensor.

Owns the image side of InternLM-XComposer2-4KHD (ShareCaptioner-Video), as the seed's captioner demo and the
4KHD vision tower do it (docs/xcomposer2.md lists the sources):

- `hd_transform`: a portrait image is transposed (x <-> y) to landscape; the width becomes `scale * 336` for the
  largest `scale` with `scale * ceil(scale / ratio) <= hd_num`, the height `int(width / ratio)`, resized with PIL's
  bilinear filter (torchvision's default on PIL images); the height is padded with white to a multiple of 336, the
  top pad `(total pad) // 2`; a transposed image is transposed back.
- `prepare`: the transformed image as float32 pixels, `ToTensor` (x / 255 in float32) then CLIP mean/std; tile 0 is
  the global view (the whole normalised image squashed to 336 x 336 by torch's bicubic `interpolate`), then the
  336 px sub-tiles in row-major order.

Tiles are always 336 px (24 x 24 patches of CLIP ViT-L/14-336, 12 x 12 tokens after the 2 x 2 merge); IXC-2.5's
560 px tiles are a different model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from videocap.errors import LayoutError

TILE = 336
MERGED_SIDE = 12  # tokens per tile side after the 2x2 merge: 336 / 14 / 2
RESAMPLE = Image.Resampling.BILINEAR  # torchvision.transforms.functional.resize's default for PIL images
PAD_FILL = (255, 255, 255)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _scale(ratio: float, hd_num: int) -> int:
    """The largest scale with scale * ceil(scale / ratio) <= hd_num (ratio = width / height >= 1)."""
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    return scale - 1


def _resized(size_wh: tuple[int, int], hd_num: int) -> tuple[bool, int, int]:
    """(transposed, width, height) of the image after the resize, before the padding, in landscape orientation."""
    if hd_num < 1:
        raise ValueError(f"hd_num must be at least 1, got {hd_num}")
    width, height = size_wh
    if width < 1 or height < 1:
        raise LayoutError(f"an image of {width}x{height} pixels has nothing to tile")
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    new_w = _scale(ratio, hd_num) * TILE
    new_h = int(new_w / ratio)
    if new_h < 1:
        raise LayoutError(
            f"an image of {size_wh[0]}x{size_wh[1]} pixels is too elongated for HD tiling at hd_num {hd_num} "
            f"(it would be {new_w} px long and under 1 px thin); crop it closer to {new_w}:1 or less"
        )
    return transposed, new_w, new_h


def grid_of(size_wh: tuple[int, int], hd_num: int) -> tuple[int, int]:
    """(cols, rows) of 336 px sub-tiles `hd_transform` makes of an image of (width, height), without pixels."""
    transposed, new_w, new_h = _resized(size_wh, hd_num)
    long_tiles, short_tiles = new_w // TILE, -(-new_h // TILE)
    return (short_tiles, long_tiles) if transposed else (long_tiles, short_tiles)


def num_image_tokens(cols: int, rows: int, side: int = MERGED_SIDE) -> int:
    """Embeddings an image of cols x rows sub-tiles yields: the global view's side x side tokens with a separator
    after each row, one global/sub separator, then the stitched sub-tiles with a separator after each row."""
    return (rows * cols + 1) * side * side + 1 + (rows + 1) * side


def hd_transform(image: Image.Image, hd_num: int) -> Image.Image:
    """The reference's HD_transform of an RGB image (see the module docstring); the result's sides are multiples of
    336 and it holds `grid_of(image.size, hd_num)` tiles."""
    transposed, new_w, new_h = _resized(image.size, hd_num)
    img = image.convert("RGB")
    if transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    img = img.resize((new_w, new_h), RESAMPLE)
    padded_h = -(-new_h // TILE) * TILE
    if padded_h != new_h:
        canvas = Image.new("RGB", (new_w, padded_h), PAD_FILL)
        canvas.paste(img, (0, (padded_h - new_h) // 2))
        img = canvas
    if transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    return img


def normalize(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 pixels as torchvision's ToTensor + Normalize(CLIP mean, std) make them: uint8 to float32,
    divided by 255 in float32, then (x - mean) / std in float32."""
    x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub(mean).div(std)[None].contiguous()


def tiles_of(pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, rows*336, cols*336) normalised HD pixels → ((1 + cols*rows, 3, 336, 336) global view then sub-tiles in
    row-major order, (cols, rows))."""
    _, channels, height, width = pixels.shape
    assert height % TILE == 0 and width % TILE == 0, f"HD pixels of {width}x{height} are not whole 336 px tiles"
    rows, cols = height // TILE, width // TILE
    sub = pixels.reshape(channels, rows, TILE, cols, TILE).permute(1, 3, 0, 2, 4).reshape(-1, channels, TILE, TILE)
    glb = F.interpolate(pixels.float(), size=(TILE, TILE), mode="bicubic", align_corners=False).to(pixels.dtype)
    return torch.cat([glb, sub], dim=0).contiguous(), (cols, rows)


def prepare(image: Image.Image, hd_num: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image → its float32 tiles (1 + cols*rows, 3, 336, 336) (global view first) and its (cols, rows) grid."""
    pixels, grid = tiles_of(normalize(hd_transform(image, hd_num)))
    assert grid == grid_of(image.size, hd_num), f"tiles {grid} != predicted grid {grid_of(image.size, hd_num)}"
    return pixels, grid
