"""Test helpers: barcoded frames (each frame shows its own index), damaged copies of files, shared assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_VIDEOS = SHARED / "videos"

W, H, BITS = 320, 240, 10
BLOCK = W // BITS  # each bit of the frame index is a 32 px black or white block along the bottom edge


def barcode_frame(index: int, width: int = W, height: int = H) -> np.ndarray:
    """A frame showing `index` in binary along its bottom edge and a red marker in its top-left corner."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, 128)], axis=-1).astype(np.uint8)
    image[: height // 4, : width // 4] = (230, 20, 20)
    block = width // BITS
    for bit in range(BITS):
        on = (index >> bit) & 1
        image[height - block :, bit * block : (bit + 1) * block] = 255 if on else 0
    return image


def read_barcode(image: np.ndarray) -> int:
    """The index a `barcode_frame` shows (robust to lossy coding and to scaling)."""
    height, width = image.shape[:2]
    block = width / BITS
    value = 0
    for bit in range(BITS):
        x0, x1 = int(bit * block + block / 4), int((bit + 1) * block - block / 4)
        y0, y1 = int(height - block * 3 / 4), int(height - block / 4)
        if image[y0:y1, x0:x1].mean() > 128:
            value |= 1 << bit
    return value


def needs_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (../shared is absent)")
    return path


def cut(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def corrupt_middle(path: Path, out: Path, span: int = 400, seed: int = 0) -> Path:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    middle = len(data) // 2
    data[middle : middle + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out
