"""Anyres tiling against hand-computed geometry, the seed's formulas, and transformers 5.17 (the oracle).

Seed = ShareGPT4Video's `llava/mm_utils.py` + `llava_arch.py` (transformers 4.37.2 CLIPImageProcessor). transformers'
PIL backends (`*Pil`) reproduce the 4.37 pixel pipeline; the torchvision backends, the default classes when
torchvision is installed, resize and normalise differently.
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil
from transformers.image_processing_utils import get_patch_output_size
from transformers.image_processing_utils import select_best_resolution as hf_select
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel, get_anyres_image_grid_shape
from transformers.models.llava_next.modeling_llava_next import unpad_image as hf_unpad
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

from videocap.models.llava_next.anyres import (
    CLIP_MEAN, CLIP_STD, PATCH, PINPOINTS, TILE, grid_shape, image_token_count, normalize, process_anyres,
    resize_and_pad, select_best_resolution, unpad, unpadded_size,
)
from videocap.video.layout import grid_size

HF_PINPOINTS = [list(p) for p in PINPOINTS]  # the checkpoint's list, which transformers reads as (height, width)
CLIP_336 = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})  # clip-vit-large-patch14-336
# ShareGPT4Video grid images (16 frames, 4 x 4 cells, 50 px bands, longest side <= 1920) per source size.
GRID_IMAGES = {src: grid_size(16, *src) for src in [(1920, 1080), (1080, 1920), (640, 480), (1280, 720)]}


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def hf_token_count(width: int, height: int) -> int:
    """transformers' own count (LlavaNextProcessor._get_number_of_features, no CLS), fed (height, width)."""
    proc = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=HF_PINPOINTS), patch_size=PATCH,
                           num_additional_image_tokens=0)
    proc._get_unpadded_features = partial(LlavaNextProcessor._get_unpadded_features, proc)
    return LlavaNextProcessor._get_number_of_features(proc, height, width, TILE, TILE)


def seed_merge(features: torch.Tensor, size: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
    """The seed's spatial_unpad merge of (1 + rows*cols, 576, C) features, written out as the model must do it."""
    side = TILE // PATCH
    cols, rows = grid_shape(size, PINPOINTS)
    base, tiles = features[0], features[1:]
    fmap = tiles.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).reshape(-1, rows * side, cols * side)
    fmap = unpad(fmap, size)  # (C, h, w)
    fmap = torch.cat([fmap, newline[:, None, None].expand(-1, fmap.shape[1], 1)], dim=-1)  # (C, h, w + 1)
    return torch.cat([base, fmap.flatten(1, 2).T])  # (576 + h * (w + 1), C)


def test_grid_image_sizes_come_from_the_layout():
    assert GRID_IMAGES == {(1920, 1080): (1920, 1096), (1080, 1920): (1096, 1920), (640, 480): (1919, 1466),
                           (1280, 720): (1920, 1103)}


@pytest.mark.parametrize("size, best", [
    ((1920, 1130), (672, 672)),   # 2x2 keeps 672x395; 672x336 and 1008x336 keep 570x336; 1x2, 1x3 keep 336x197
    ((1920, 1096), (672, 672)),   # 16:9 grid of 1920x1080 frames
    ((1096, 1920), (672, 672)),   # portrait grid
    ((1919, 1466), (672, 672)),   # 4:3 grid of 640x480 frames
    ((1000, 1000), (672, 672)),
    ((600, 300), (672, 336)),     # every canvas keeps all 180000 px (1x2 keeps 336x168): least waste wins
    ((3000, 1000), (1008, 336)),  # fits 1008x336 exactly
    ((1000, 3000), (336, 1008)),
    ((100, 100), (336, 672)),     # tiny: 1x2 and 2x1 tie on kept and wasted area; the first pinpoint wins
    ((300, 200), (336, 672)),     # tiny landscape goes on the portrait canvas too (tie)
])
def test_select_best_resolution(size, best):
    assert select_best_resolution(size, PINPOINTS) == best
    assert grid_shape(size, PINPOINTS) == (best[0] // TILE, best[1] // TILE)


def test_degenerate_sizes_are_rejected():
    with pytest.raises(ValueError):
        select_best_resolution((0, 10), PINPOINTS)
    with pytest.raises(ValueError):
        select_best_resolution((10, 10), [])


@pytest.mark.parametrize("size, box", [
    ((1920, 1096), (0, 144, 672, 528)),  # ceil(1096 * 0.35) = ceil(383.6) = 384 rows, 144 above and below
    ((1920, 1103), (0, 142, 672, 529)),  # ceil(386.05) = 387 (int would give 386); odd margin: 142 above, 143 below
    ((1096, 1920), (144, 0, 528, 672)),
    ((300, 200), (0, 223, 336, 448)),    # on the 336x672 canvas: ceil(200 * 1.12) = ceil(224.00000000000003) = 225
    ((672, 672), (0, 0, 672, 672)),
])
def test_resize_and_pad_size_and_offset(size, box):
    target = select_best_resolution(size, PINPOINTS)
    canvas = resize_and_pad(Image.new("RGB", size, (200, 100, 50)), target)
    assert canvas.size == target and canvas.mode == "RGB"
    assert canvas.getbbox() == box  # the black (0, 0, 0) padding surrounds exactly this box
    inside = (box[2] - box[0]) * (box[3] - box[1])
    counts = {colour: n for n, colour in canvas.getcolors()}
    assert counts == {(200, 100, 50): inside, (0, 0, 0): target[0] * target[1] - inside} if inside < 672 * 672 else {
        (200, 100, 50): inside}


def test_resize_and_pad_uses_pils_default_filter():
    image = noise(1920, 1103)
    resized = image.resize((672, 387))  # the seed's call: no resample argument
    expected = Image.new("RGB", (672, 672))
    expected.paste(resized, (0, 142))
    assert np.array_equal(np.asarray(resize_and_pad(image, (672, 672))), np.asarray(expected))


def test_normalize_matches_clip_processor_bit_for_bit():
    images = [noise(336, 336, seed) for seed in range(3)]
    expected = CLIPImageProcessorPil(**CLIP_336)(images, return_tensors="pt")["pixel_values"]
    got = normalize(images)
    assert got.dtype == torch.float32 and got.shape == (3, 3, 336, 336)
    assert torch.equal(got, expected)
    black = normalize([Image.new("RGB", (2, 2))])[0, :, 0, 0]
    mean, std = torch.tensor(CLIP_MEAN, dtype=torch.float32), torch.tensor(CLIP_STD, dtype=torch.float32)
    assert torch.equal(black, -mean / std)


@pytest.mark.parametrize("size", sorted(set(GRID_IMAGES.values())) + [(700, 500), (1000, 1000), (1500, 400)])
def test_process_anyres_matches_transformers_pil_processor(size):
    image = noise(*size)
    got = process_anyres(image, PINPOINTS)
    cols, rows = grid_shape(size, PINPOINTS)
    assert got.shape == (1 + rows * cols, 3, TILE, TILE)
    hf = LlavaNextImageProcessorPil(**CLIP_336, image_grid_pinpoints=HF_PINPOINTS)(image, return_tensors="pt")
    assert torch.equal(got, hf["pixel_values"][0])
    assert hf["image_sizes"][0].tolist() == [size[1], size[0]]  # transformers records (height, width)


def test_tiles_run_row_by_row_after_the_base_view():
    image = Image.new("RGB", (672, 672))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # top-left, top-right, bottom-left, bottom-right
    for k, colour in enumerate(colours):
        image.paste(colour, ((k % 2) * 336, (k // 2) * 336, (k % 2) * 336 + 336, (k // 2) * 336 + 336))
    tiles = process_anyres(image, PINPOINTS)[1:]
    assert torch.equal(tiles, normalize([Image.new("RGB", (336, 336), c) for c in colours]))


def test_base_view_is_the_whole_image_squashed_with_pils_default_filter():
    """Difference (4). Ours equals the seed's formula written independently (PIL `resize((336, 336))` without a
    filter, then 4.37's float64 rescale and float32 normalise). transformers 5.17's PIL backend does the same, so
    there is no difference there; its torchvision backend differs (next test)."""
    image = noise(1919, 1466)
    squashed = np.asarray(image.resize((336, 336)), dtype=np.uint8)
    x = (squashed.astype(np.float64) * (1 / 255)).astype(np.float32)
    seed = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    got = process_anyres(image, PINPOINTS)[0]
    assert torch.equal(got, torch.from_numpy(seed).permute(2, 0, 1))
    hf = LlavaNextImageProcessorPil(**CLIP_336, image_grid_pinpoints=HF_PINPOINTS)(image, return_tensors="pt")
    assert torch.equal(got, hf["pixel_values"][0, 0])


def test_torchvision_backend_differs_from_the_seed():
    """Difference (4), where it exists: with torchvision installed, transformers' default LlavaNextImageProcessor
    resizes (base view and tiles) with torch's antialiased bicubic and fuses rescale into normalise: pixels move by up
    to one uint8 level. Skipped where torchvision is absent (transformers then falls back to the PIL backend)."""
    pytest.importorskip("torchvision")
    from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor

    image = noise(1920, 1096)
    hf = LlavaNextImageProcessor(**CLIP_336, image_grid_pinpoints=HF_PINPOINTS)(image, return_tensors="pt")
    diff = (process_anyres(image, PINPOINTS) - hf["pixel_values"][0]).abs()
    assert diff[0].max() > 0  # the base view
    assert diff.max() <= 1 / 255 / min(CLIP_STD) + 1e-5


@pytest.mark.parametrize("grid, size, kept", [
    ((48, 48), (1920, 1096), (28, 48)),  # int(1096 * 48/1920) = int(27.4) = 27; pad 10 each side leaves 28 (odd margin)
    ((48, 48), (1096, 1920), (48, 28)),
    ((48, 48), (1919, 1466), (36, 48)),  # int(36.67) = 36, pad 6
    ((48, 48), (1920, 1103), (28, 48)),  # int(27.58) = 27
    ((48, 48), (1000, 1000), (48, 48)),
    ((48, 24), (300, 200), (16, 24)),    # int(200 * 24/300) = 16, pad 16
    ((48, 48), (1408, 792), (26, 48)),   # 792 * (48/1408) = 26.999999999999996 -> 26, pad 11
])
def test_unpadded_size(grid, size, kept):
    assert unpadded_size(grid, size) == kept
    features = torch.arange(grid[0] * grid[1], dtype=torch.float32).view(1, *grid)
    out = unpad(features, size)
    top, left = (grid[0] - kept[0]) // 2, (grid[1] - kept[1]) // 2
    assert torch.equal(out, features[:, top : top + kept[0], left : left + kept[1]])


@pytest.mark.parametrize("src, tokens", [
    ((1920, 1080), 576 + 28 * 49),  # grid 1920x1096: 2x2 tiles, 28 rows of 48 + newline
    ((1080, 1920), 576 + 48 * 29),  # grid 1096x1920: 48 rows of 28 + newline
    ((640, 480), 576 + 36 * 49),    # grid 1919x1466
    ((1280, 720), 576 + 28 * 49),   # grid 1920x1103
])
def test_token_counts_of_sharegpt4video_grids(src, tokens):
    size = GRID_IMAGES[src]
    assert image_token_count(size, PINPOINTS) == tokens
    assert hf_token_count(*size) == tokens
    assert seed_merge(torch.zeros(5, 576, 2), size, torch.ones(2)).shape[0] == tokens


@pytest.mark.parametrize("size", [(1920, 1096), (1096, 1920), (1919, 1466), (700, 500), (1500, 400), (400, 1500)])
def test_seed_merge_equals_transformers_pack_where_they_agree(size):
    """The merge the model implements: tiles -> (rows*24, cols*24) map, unpad, a newline after each row, base first."""
    cols, rows = grid_shape(size, PINPOINTS)
    features = torch.randn(1 + rows * cols, 576, 8, generator=torch.Generator().manual_seed(0))
    newline = torch.randn(8)
    ours = seed_merge(features, size, newline)
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=TILE, patch_size=PATCH),
                             image_grid_pinpoints=HF_PINPOINTS)
    (theirs,), _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), [features],
                                                      torch.tensor([[size[1], size[0]]]), "default", newline)
    assert torch.equal(ours, theirs)
    assert ours.shape[0] == image_token_count(size, PINPOINTS) == hf_token_count(*size)


def test_difference_1_sizes_are_width_height_in_the_seed():
    """Difference (1): the seed passes PIL's (width, height) and reads pinpoints as (width, height); transformers
    passes and reads (height, width). Swapped consistently they agree, except where pinpoints tie: the checkpoint
    lists [336, 672] before [672, 336], so a small image goes on a 1-column x 2-row canvas in the seed and a 2-column
    x 1-row canvas in transformers, with different token counts."""
    for width, height in [(1920, 1096), (1096, 1920), (1500, 400), (400, 1500)]:
        rows, cols = get_anyres_image_grid_shape((height, width), HF_PINPOINTS, TILE)
        assert grid_shape((width, height), PINPOINTS) == (cols, rows)
    assert grid_shape((1500, 400), PINPOINTS) == (3, 1)
    rows, cols = get_anyres_image_grid_shape((1500, 400), HF_PINPOINTS, TILE)  # (W, H) fed to transformers
    assert (rows, cols) == (3, 1)  # a 3-row column for a landscape image: wrong
    assert grid_shape((300, 200), PINPOINTS) == (1, 2)  # seed: 1 column, 2 rows
    assert hf_select((200, 300), HF_PINPOINTS) == (336, 672)  # (height, width): 1 row, 2 columns
    assert image_token_count((300, 200), PINPOINTS) == 576 + 16 * 25
    assert hf_token_count(300, 200) == 576 + 24 * 37  # transformers: 2 columns, 1 row, 24 x 36 kept


def test_difference_2_resize_rounding_is_ceil_in_both():
    """Difference (2) does not exist in transformers 5.17: its get_patch_output_size rounds up (ceil) as the seed
    does. Pinned so that a change on either side shows."""
    for width in range(40, 2000, 37):
        for height in range(40, 2000, 53):
            target_w, target_h = select_best_resolution((width, height), PINPOINTS)
            scale_w, scale_h = target_w / width, target_h / height
            if scale_w < scale_h:
                seed = (min(math.ceil(height * scale_w), target_h), target_w)
            else:
                seed = (target_h, min(math.ceil(width * scale_h), target_w))
            hf = get_patch_output_size(np.zeros((3, height, width), np.uint8), (target_h, target_w), "channels_first")
            assert hf == seed, (width, height)
    assert resize_and_pad(Image.new("RGB", (1920, 1103), "white"), (672, 672)).getbbox() == (0, 142, 672, 529)


def test_difference_3_unpad_truncates_without_rounding():
    """Difference (3): the seed takes int(x); transformers int(round(x, 7)). For a 16:9 1408x792 image on the 2x2
    canvas, 792 * (48/1408) is 26.999999999999996: the seed keeps 26 rows, transformers 28."""
    features = torch.zeros(1, 48, 48)
    assert unpad(features, (1408, 792)).shape == (1, 26, 48)
    assert hf_unpad(features, (792, 1408)).shape == (1, 28, 48)
    for size in [(1408, 792), (704, 396)]:  # same grid (2x2) in both
        assert image_token_count(size, PINPOINTS) == 576 + 26 * 49
        assert hf_token_count(*size) == 576 + 28 * 49
