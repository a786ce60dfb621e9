"""The ShareGPT4Video example clips (../shared/videos): sampling them as the seed's run.py does.

Skipped where ../shared is absent. The reference path here is a plain PyAV decode of every frame, picking
frames by index as decord's get_batch does.
"""

import av
import numpy as np
import pytest
from helpers import SHARED_VIDEOS, needs_shared

from videocap.video import SeekMode, Uniform16, layout, probe, sample

CLIPS = {  # name: (width, height, frames, fps)
    "yoga.mp4": (568, 320, 300, 30.0),
    "sample_demo_1.mp4": (640, 360, 243, 25.0),
    "C_1_0.mp4": (512, 512, 46, 25.0),
}


def every_frame(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24", interpolation="BICUBIC") for f in container.decode(video=0)]


@pytest.mark.parametrize("name", list(CLIPS))
def test_probe_and_exact_sampling_match_a_full_decode(name):
    path = needs_shared(SHARED_VIDEOS / name)
    width, height, frames, fps = CLIPS[name]
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.fps) == (width, height, frames, fps)
    got = sample(path, Uniform16())
    reference = every_frame(path)
    assert len(reference) == frames
    for index, image in zip(got.indices, got.images):
        assert np.array_equal(image, reference[index])


def test_yoga_uses_the_seed_frames_and_grid():
    path = needs_shared(SHARED_VIDEOS / "yoga.mp4")
    got = sample(path, Uniform16())
    assert got.indices == (9, 28, 46, 65, 84, 102, 121, 140, 159, 177, 196, 215, 233, 252, 271, 289)
    assert got.timestamps == pytest.approx([i / 30 for i in got.indices])
    # 4x4 of 568x320 with bands: 2422 x 1430 -> 1920 x int(1430 * 1920 / 2422) = 1133
    assert layout.grid(got.images).size == (1920, 1133)


def test_keyframe_mode_on_a_clip_with_two_keyframes():
    path = needs_shared(SHARED_VIDEOS / "yoga.mp4")
    got = sample(path, Uniform16(), mode=SeekMode.KEYFRAME)
    assert len(set(got.timestamps)) <= 2  # the clip has two keyframes: frames repeat, as documented
    assert got.timestamps[0] == 0.0
