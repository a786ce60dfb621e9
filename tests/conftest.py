"""Shared test fixtures: small videos generated with PyAV, each frame carrying its index as a barcode."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import H, W, barcode_frame

from videocap.video.encode import write_video

@pytest.fixture(autouse=True)
def _isolated_hf(tmp_path, monkeypatch):
    """No test reaches the network or the user's cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


QUIET = {"libx265": {"x265-params": "log-level=error"}, "libsvtav1": {"svtav1-params": "log-level=0", "preset": "8", "crf": "10"}}


@pytest.fixture(scope="session")
def make_video(video_dir):
    """make_video(name, n=60, fps=30, codec=..., **write_video kwargs) -> path; cached for the session."""
    made: dict[str, str] = {}  # name -> the recipe it was made from

    def make(name: str, n: int = 60, fps: float = 30, codec: str = "libx264", width: int = W, height: int = H,
             options: dict | None = None, **kwargs) -> Path:
        path = video_dir / name
        recipe = repr((n, fps, codec, width, height, options, sorted(kwargs.items())))
        if name not in made:
            opts = {**QUIET.get(codec, {}), **(options or {})}
            frames = (barcode_frame(i, width, height) for i in range(n))
            write_video(path, frames, fps=fps, codec=codec, options=opts, **kwargs)
            made[name] = recipe
        assert made[name] == recipe, f"{name} was already made from another recipe: give it another name"
        return path

    return make


@pytest.fixture(scope="session")
def h264(make_video) -> Path:
    """4 s of H.264 with B-frames, a keyframe every 30 frames and no scene-cut keyframes."""
    return make_video("h264.mp4", n=120, options={"g": "30", "keyint_min": "30", "sc_threshold": "0", "crf": "18"})
