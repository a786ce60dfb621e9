"""IXC2-4KHD's HD_transform, tile grid, token count and pixel tiles against a direct statement of the reference
(the seed's captioner HD_transform / padding_336 with torchvision on PIL images, and the 4KHD vision tower's tiling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from videocap.errors import LayoutError
from videocap.models.xcomposer2 import hd

# (width, height): landscape, portrait, square, near-square, 16:9 both ways, and extreme ratios.
SIZES = [
    (640, 480), (480, 640), (500, 500), (337, 336), (1920, 1080), (1080, 1920), (1, 20), (20, 1), (336, 4000),
    (4000, 336), (3000, 40), (7, 7),
]
HD_NUMS = [9, 16, 25]


def reference_size(width: int, height: int, hd_num: int) -> tuple[int, int]:
    """The (width, height) the reference's HD_transform produces, stated as its code computes it."""
    trans = width < height
    if trans:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    tar = int(np.ceil(new_h / 336) * 336)
    return (tar, new_w) if trans else (new_w, tar)


def reference_tokens(width: int, height: int) -> int:
    h, w = height // 336, width // 336  # the tower's shapes.append([H // 336, W // 336])
    return int((h * w + 1) * 144 + 1 + (h + 1) * 12)


def reference_transform(img: Image.Image, hd_num: int) -> Image.Image:
    """HD_transform with torchvision's PIL paths spelled out: resize = PIL BILINEAR, pad = ImageOps.expand."""
    width, height = img.size
    trans = width < height
    if trans:
        img = img.transpose(Image.Transpose.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    tar = int(np.ceil(new_h / 336) * 336)
    top = int((tar - new_h) / 2)
    img = ImageOps.expand(img, border=(0, top, 0, tar - new_h - top), fill=(255, 255, 255))
    if trans:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    return img


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("hd_num", HD_NUMS)
@pytest.mark.parametrize("size", SIZES)
def test_sizes_grids_and_token_counts_follow_the_reference_formula(size, hd_num):
    expected = reference_size(*size, hd_num)
    cols, rows = hd.grid_of(size, hd_num)
    assert (cols * 336, rows * 336) == expected
    assert hd.num_image_tokens(cols, rows) == reference_tokens(*expected)
    assert cols * rows <= hd_num
    assert hd.hd_transform(noise_image(size), hd_num).size == expected


@pytest.mark.parametrize(
    "size, hd_num, grid, tokens",
    [
        ((640, 480), 9, (3, 3), 1489),  # scale 3: 3*ceil(3/1.33) = 9; 1008x756 padded to 1008x1008
        ((1920, 1080), 16, (5, 3), 2353),  # scale 5: 5*ceil(5/1.78) = 15; 1680x945 padded to 1680x1008
        ((1080, 1920), 16, (3, 5), 2377),  # the same, transposed: the separators follow rows
        ((500, 500), 25, (5, 5), 26 * 144 + 1 + 6 * 12),
        ((336, 4000), 25, (2, 12), 25 * 144 + 1 + 13 * 12),  # 4032 long, int(4032/11.9) = 338 px thin → 2 tiles
    ],
)
def test_worked_examples(size, hd_num, grid, tokens):
    assert hd.grid_of(size, hd_num) == grid
    assert hd.num_image_tokens(*grid) == tokens


@pytest.mark.parametrize("size, hd_num", [((640, 401), 9), ((401, 640), 16), ((1, 20), 9), ((1280, 720), 25)])
def test_pixels_equal_the_reference_transform(size, hd_num):
    img = noise_image(size, seed=size[0])
    ours, theirs = hd.hd_transform(img, hd_num), reference_transform(img, hd_num)
    assert ours.mode == "RGB" and ours.size == theirs.size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_padding_is_white_and_centred_with_the_odd_row_below():
    # 640x401 at hd 9: scale 3, 1008 x int(1008 / (640/401)) = 631 rows, padded to 672: 20 rows above, 21 below.
    out = np.asarray(hd.hd_transform(Image.new("RGB", (640, 401), (255, 0, 0)), 9))
    assert out.shape == (672, 1008, 3)
    green = out[:, :, 1]
    assert (green[:20] == 255).all() and (green[651:] == 255).all()  # white bands
    assert (green[20:651] <= 2).all() and (out[20:651, :, 0] >= 253).all()  # the red image in between


def test_portrait_images_are_padded_at_the_sides_and_keep_their_orientation():
    # Quadrants: red top-left, blue top-right, green bottom-left, black bottom-right.
    arr = np.zeros((640, 400, 3), dtype=np.uint8)
    arr[:320, :200] = (255, 0, 0)
    arr[:320, 200:] = (0, 0, 255)
    arr[320:, :200] = (0, 255, 0)
    out = np.asarray(hd.hd_transform(Image.fromarray(arr), 9))
    # Transposed it is 640x400 → scale 3 → 1008 x 630 → padded to 672; back: 672 wide, 1008 tall, 21 px each side.
    assert out.shape == (1008, 672, 3)
    assert (out[:, :21] == 255).all() and (out[:, 651:] == 255).all()
    h, left, right = out.shape[0], 21 + 150, 651 - 150
    assert tuple(out[h // 4, left]) == (255, 0, 0)
    assert tuple(out[h // 4, right]) == (0, 0, 255)
    assert tuple(out[3 * h // 4, left]) == (0, 255, 0)
    assert tuple(out[3 * h // 4, right]) == (0, 0, 0)


def test_prepare_gives_the_global_view_then_row_major_tiles():
    img = noise_image((1000, 500), seed=3)
    pixels, (cols, rows) = hd.prepare(img, 9)
    assert (cols, rows) == hd.grid_of(img.size, 9) == (4, 2)
    assert pixels.shape == (1 + cols * rows, 3, 336, 336) and pixels.dtype == torch.float32
    # ToTensor + Normalize, stated in numpy float32.
    arr = np.asarray(hd.hd_transform(img, 9)).astype(np.float32) / np.float32(255)
    mean = np.array(hd.CLIP_MEAN, dtype=np.float32)
    std = np.array(hd.CLIP_STD, dtype=np.float32)
    full = torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())[None]
    glb = F.interpolate(full, size=(336, 336), mode="bicubic")
    torch.testing.assert_close(pixels[0], glb[0], rtol=0, atol=1e-6)
    for r in range(rows):
        for c in range(cols):
            tile = full[0, :, r * 336 : (r + 1) * 336, c * 336 : (c + 1) * 336]
            torch.testing.assert_close(pixels[1 + r * cols + c], tile, rtol=0, atol=1e-6)


def test_degenerate_inputs_fail_with_a_typed_error():
    with pytest.raises(LayoutError, match="too elongated"):
        hd.grid_of((5000, 1), 9)  # 3024 px long and int(3024/5000) = 0 px thin
    with pytest.raises(ValueError, match="hd_num"):
        hd.grid_of((640, 480), 0)
