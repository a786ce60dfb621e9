"""Anyres tiling for ShareGPT4Video-8B (LLaVA-NeXT), following the seed's `llava/mm_utils.py` and `llava_arch.py`.

Owns the geometry and pixels of one image's anyres input: choosing the canvas among the grid pinpoints, the
aspect-keeping resize and black padding onto it, the 336 px tiles in row-major order after a whole-image base view,
CLIP normalisation, and the arithmetic of the `spatial_unpad` merge (how many rows and columns of the tiles'
feature map survive the unpad, and so how many image embeddings the prompt gets). It does not run the vision
tower, project features or place the learned `image_newline`: the model does that with `unpad` and these counts.

Sizes: image sizes are `(width, height)` as PIL and the seed give them; pinpoints are `(width, height)` too, as
the seed reads the checkpoint's `image_grid_pinpoints`. Feature-map shapes are `(height, width)` in patches, as
torch lays out a (C, H, W) map. transformers' port uses (height, width) throughout: see the tests for where the
two conventions part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP, as in the CLIP-336 preprocessor config
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESCALE = 1 / 255  # the preprocessor's rescale_factor (0.00392156862745098)
TILE = 336  # CLIP ViT-L/14-336 input side
PATCH = 14  # ViT patch side: a tile is 24 x 24 patches
# The checkpoint's `image_grid_pinpoints` (seed train.py: [1,2],[2,1],[2,2],[3,1],[1,3] tiles), as (width, height).
PINPOINTS: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# The seed resizes with PIL's default filter (no `resample` argument), which for RGB images is BICUBIC in every
# Pillow since 7.0. Naming it keeps the result independent of that default.
RESAMPLE = Image.Resampling.BICUBIC


def select_best_resolution(size: tuple[int, int], pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The pinpoint `(width, height)` an image of `size` `(width, height)` is tiled on (seed semantics).

    Maximises the image area kept after fitting the image inside the pinpoint (never counting more than the
    original area, so upscaling earns nothing), then minimises the canvas area left over. Ties keep the earlier
    pinpoint: for an image that fits inside 336 x 336 the checkpoint's list picks (336, 672), one column of two
    tiles, whatever the image's orientation.
    """
    width, height = _check_size(size)
    best: tuple[int, int] | None = None
    best_effective, best_wasted = 0, float("inf")
    for pin_w, pin_h in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (pin_w, pin_h), effective, wasted
    if best is None:
        raise ValueError("no grid pinpoints given")
    return best


def grid_shape(size: tuple[int, int], pinpoints: Sequence[tuple[int, int]], tile: int = TILE) -> tuple[int, int]:
    """(columns, rows) of tiles for an image of `size` `(width, height)` (seed `get_anyres_image_grid_shape`)."""
    pin_w, pin_h = select_best_resolution(size, pinpoints)
    return pin_w // tile, pin_h // tile


def resize_and_pad(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`image` resized to fit `target` `(width, height)` keeping its aspect, centred on a black RGB canvas.

    Seed `resize_and_pad_image`: the side with the smaller scale fills the target; the other side is
    `ceil(side * scale)` capped at the target; BICUBIC (PIL's default); the paste offset is floor((target - new) / 2),
    so an odd margin leaves its extra pixel on the right or bottom.
    """
    target_w, target_h = target
    width, height = _check_size(image.size)
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(height * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), target_w), target_h
    canvas = Image.new("RGB", (target_w, target_h), (0, 0, 0))
    canvas.paste(_rgb(image).resize((new_w, new_h), RESAMPLE), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def normalize(images: list[Image.Image]) -> torch.Tensor:
    """(N, 3, H, W) float32 pixels of same-sized images, as the seed's CLIPImageProcessor makes them.

    transformers 4.37 (the seed's pin) rescales uint8 by 1/255 in float64, rounds to float32, then computes
    (x - mean) / std in float32 with float32 mean and std; the same steps here give the same bits. (Fusing the two
    steps, as transformers' torchvision backend does, changes the last bit of some values.)
    """
    assert images, "normalize needs at least one image"
    pixels = torch.from_numpy(np.stack([np.asarray(_rgb(im)) for im in images]))  # (N, H, W, 3) uint8
    x = (pixels.permute(0, 3, 1, 2).to(torch.float64) * RESCALE).to(torch.float32)  # (N, 3, H, W)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def process_anyres(image: Image.Image, pinpoints: Sequence[tuple[int, int]], tile: int = TILE) -> torch.Tensor:
    """(1 + rows * cols, 3, tile, tile) pixels: the base view, then the tiles row by row, left to right.

    Seed `process_anyres_image`: the base view is the whole image squashed to tile x tile (aspect not kept,
    PIL's default BICUBIC); the tiles cut the `resize_and_pad` canvas of the best pinpoint. The CLIP processor's
    own resize and centre crop leave tile-sized images untouched, so only normalisation follows.
    """
    image = _rgb(image)
    best = select_best_resolution(image.size, pinpoints)
    if best[0] % tile or best[1] % tile:
        raise ValueError(f"grid pinpoint {best} is not a whole number of {tile} px tiles")
    canvas = resize_and_pad(image, best)
    tiles = [canvas.crop((x, y, x + tile, y + tile)) for y in range(0, best[1], tile) for x in range(0, best[0], tile)]
    return normalize([image.resize((tile, tile), RESAMPLE), *tiles])


def unpadded_size(grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a `grid` `(height, width)` feature map after the seed's unpad, for an image `(width, height)`.

    The side the image did not fill loses the padding's share: `int()` truncates the image's scaled extent (seed;
    transformers rounds to 7 decimals first), and the same `(current - new) // 2` is cut from both ends, so an odd
    margin keeps one padded row or column.
    """
    current_h, current_w = grid
    width, height = _check_size(size)
    if width / height > current_w / current_h:
        new_h = int(height * (current_w / width))
        return current_h - 2 * ((current_h - new_h) // 2), current_w
    new_w = int(width * (current_h / height))
    return current_h, current_w - 2 * ((current_w - new_w) // 2)


def unpad(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred (C, h, w) part of a (C, H, W) feature map that holds the image of `size` `(width, height)`."""
    assert features.dim() == 3, f"expected a (C, H, W) map, got {tuple(features.shape)}"
    current_h, current_w = features.shape[1:]
    keep_h, keep_w = unpadded_size((current_h, current_w), size)
    top, left = (current_h - keep_h) // 2, (current_w - keep_w) // 2
    return features[:, top : top + keep_h, left : left + keep_w]


def image_token_count(
    size: tuple[int, int], pinpoints: Sequence[tuple[int, int]], tile: int = TILE, patch: int = PATCH
) -> int:
    """Image embeddings the `spatial_unpad` merge yields for an image of `size` `(width, height)`.

    The base view's side x side features, then the unpadded map of the tiles row by row, each row closed by
    one `image_newline`.
    """
    side = tile // patch
    cols, rows = grid_shape(size, pinpoints, tile)
    keep_h, keep_w = unpadded_size((rows * side, cols * side), size)
    return side * side + keep_h * (keep_w + 1)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive (width, height), got {tuple(size)}")
    return width, height
