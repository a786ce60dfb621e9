"""What the batch tests share besides fixtures: the broken clips' names, the run arguments, and a subprocess helper.

Kept out of conftest.py: several test folders have a conftest, and `from conftest import ...` picks whichever was
imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GOOD = 56
BAD = {"bad_garbage.mp4": "garbage", "bad_empty.mp4": "empty", "bad_cut.mp4": "cut", "bad_image.mp4": "image"}
# Every run: the base view (576 image tokens), 4 frames, 2 new tokens: the tiny model captions a video in ~0.1 s.
RUN_ARGS = ["--device", "cpu", "--image-view", "base", "--frames", "4", "--max-new-tokens", "2", "--quiet"]


def ids_of(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.mp4"))


def videocap(*argv, **popen) -> subprocess.Popen:
    """`videocap ARGV` in a new process (its own session, so that a test can signal it and its children)."""
    return subprocess.Popen([sys.executable, "-m", "videocap.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)
