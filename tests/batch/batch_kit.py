"""What the batch tests share besides fixtures: the broken clips' names, the run arguments, and a subprocess helper.

Kept out of conftest.py: several test folders have a conftest, and `from conftest import ...` picks whichever was
imported first."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from videocap.batch import LoadSpec

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


@dataclass(frozen=True)
class OneEngineFails(LoadSpec):
    """A model spec whose first load fails (the engine processes race for `marker`): one of --gpus N engines
    dies at start, as on a GPU with too little memory."""

    marker: str = ""

    def load(self, device=None):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return super().load(device)
        raise RuntimeError("injected: this engine's GPU is gone")
