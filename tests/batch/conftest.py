"""Fixtures for batch captioning: a tiny LLaVA-NeXT checkpoint, its captioner, and a folder of 60 small videos of
which some are broken (garbage, empty, cut short, a PNG named .mp4)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import barcode_frame, cut
from llava_tiny import make_hf_model, save_layout

from videocap import api
from videocap.video.encode import write_video

pytest.importorskip("transformers")

from batch_kit import BAD, GOOD  # noqa: F401  (names the tests share live in batch_kit)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_layout(make_hf_model(seed=7, head_scale=8.0), tmp_path_factory.mktemp("ckpt") / "tiny", "hf5-save")


@pytest.fixture(scope="session")
def tiny_base(tiny_ckpt):
    return api.load(str(tiny_ckpt), device="cpu", image_view="base", progress=False)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """60 videos in nested folders: 56 good ones (2 s, each starting at another barcode) and 4 broken ones."""
    root = tmp_path_factory.mktemp("clips")
    for k in range(GOOD):
        folder = root / f"part{k % 3}"
        folder.mkdir(exist_ok=True)
        write_video(folder / f"clip{k:02d}.mp4", (barcode_frame(k + i, 160, 120) for i in range(20)), fps=10)
    good = root / "part0" / "clip00.mp4"
    rng = np.random.default_rng(0)
    (root / "bad_garbage.mp4").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "bad_empty.mp4").write_bytes(b"")
    cut(good, root / "bad_cut.mp4", 0.4)
    png = io.BytesIO()
    Image.fromarray(barcode_frame(1, 64, 48)).save(png, format="PNG")
    (root / "bad_image.mp4").write_bytes(png.getvalue())
    return root
