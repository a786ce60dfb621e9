"""Layouts against the reference geometry, computed by hand."""

import numpy as np
import pytest
from PIL import Image

from videocap.video import layout


def solid(color, w=64, h=48):
    return np.full((h, w, 3), color, np.uint8)


def test_grid_cells_and_size_for_16_frames():
    # 4x4 cells of 640x360 with 50 px bands: 2710 x 1590, then longest side to 1920: scale = 1920/2710,
    # int(2710 * scale) = 1919 (the float product falls just short) and int(1590 * scale) = 1126
    assert layout.grid_shape(16) == 4
    cells = layout.grid_cells(16, 640, 360)
    assert cells[0] == (0, 0) and cells[1] == (690, 0) and cells[4] == (0, 410) and cells[15] == (2070, 1230)
    assert layout.grid_size(16, 640, 360) == (1919, 1126)


def test_grid_size_tall_frames_and_no_resize():
    # 9 portrait frames 360x640: 3x3 -> 1180 x 2020, the height is longest: scale = 1920/2020
    assert layout.grid_size(9, 360, 640) == (int(1180 * (1920 / 2020)), 1920)
    assert layout.grid_size(4, 200, 100) == (450, 250)  # 2x2, under the cap: unchanged


def test_grid_pixels_bands_and_empty_cells():
    frames = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((10, 10, 10)), solid((0, 0, 0))]
    image = np.asarray(layout.grid(frames))  # 3x3 grid, 4 empty cells
    assert image.shape == (3 * 48 + 100, 3 * 64 + 100, 3)
    assert (image[0, 0] == (255, 0, 0)).all() and (image[0, 64 + 50] == (0, 255, 0)).all()
    assert (image[0, 2 * 114] == (0, 0, 255)).all() and (image[98, 0] == (10, 10, 10)).all()
    assert (image[98, 114] == (0, 0, 0)).all()
    assert (image[:, 64:114] == 255).all() and (image[48:98, :] == 255).all()  # bands
    assert (image[98:146, 228:] == 255).all() and (image[196:, :] == 255).all()  # empty cells


def test_grid_resizes_with_pil_bilinear():
    frames = [np.random.default_rng(k).integers(0, 256, (360, 640, 3), dtype=np.uint8) for k in range(16)]
    full = Image.fromarray(np.asarray(layout.grid(frames, max_side=10_000)))
    assert full.size == (2710, 1590)
    expected = np.asarray(full.resize((1919, 1126), Image.BILINEAR))
    assert np.array_equal(np.asarray(layout.grid(frames)), expected)


def test_grid_rejects_mixed_sizes():
    with pytest.raises(ValueError):
        layout.grid([solid(0), solid(0, w=32)])


def test_strip_geometry_matches_the_captioner():
    frames = [solid((200, 0, 0), 400, 100), solid((0, 200, 0), 400, 100), solid((0, 0, 200), 400, 100)]
    image = layout.strip(frames)
    margin = max(400 // 4, 100)  # 100
    assert image.size == (400 + 20 + margin, 3 * (100 + 20) + 20)
    pixels = np.asarray(image)
    for k, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        top = 10 + k * 120
        assert (pixels[top, margin] == color).all() and (pixels[top + 99, margin + 399] == color).all()
        assert (pixels[top - 1, margin] != color).any()
    for k in range(2):  # separator lines between frames, 2 px, across the whole width
        line_y = 10 + k * 120 + 100 + 10
        assert (pixels[line_y, :] == 0).all()
    assert (pixels[10 + 2 * 120 + 110, :] == 255).all()  # none after the last frame
    labels = pixels[:, :margin]
    assert (labels < 128).any()  # labels were drawn in the margin
    for k in range(3):  # each label sits at the frame's vertical middle
        mid = 10 + k * 120 + 50
        assert (labels[mid : mid + 20] < 128).any()


def test_strip_labels_stay_inside_the_margin():
    frames = [solid((0, 0, 0), 1920, 100)] * 12  # margin 480, labels up to <IMAGE 11>
    pixels = np.asarray(layout.strip(frames))
    margin = 480
    for k in range(12):
        y = 10 + k * 120 + 50
        band = pixels[y : y + 100 // 2, :margin]
        assert (band < 128).any()
    font = layout.label_font(margin // 5)
    assert font.getlength("<IMAGE 11>") <= margin


def test_pair():
    a, b = solid((255, 0, 0), 80, 60), solid((0, 0, 255), 80, 60)
    pixels = np.asarray(layout.pair(a, b))
    assert pixels.shape == (2 * 60 + 50, 80, 3)
    assert (pixels[:60] == (255, 0, 0)).all() and (pixels[60:110] == 255).all() and (pixels[110:] == (0, 0, 255)).all()
