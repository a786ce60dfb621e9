"""Regenerate the bundled example clip (src/videocap/assets/example.mp4).

A 10 s, 640x360, 24 fps H.264 clip of simple scripted events, so every sampled frame is easy to tell apart by
eye: a red ball rolls left to right along the ground, a blue square rises from the right from 4 s on, and the
sky darkens towards dusk. Deterministic; keyframe every 2 s.

    python scripts/make_example_clip.py [OUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from videocap.video.encode import write_video

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 24, 10
GROUND = int(HEIGHT * 0.75)


def frame(t: float) -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    dusk = t / SECONDS
    sky_top = np.array([90, 160, 235]) * (1 - dusk) + np.array([40, 30, 90]) * dusk
    sky_low = np.array([190, 220, 250]) * (1 - dusk) + np.array([240, 140, 80]) * dusk
    mix = (y / GROUND)[..., None]
    image = sky_top * (1 - mix) + sky_low * mix
    image[y >= GROUND] = (60, 140, 60)
    image[(y >= GROUND) & ((x // 40 + y // 40) % 2 == 0)] = (70, 155, 70)  # texture so motion is visible

    r = 28  # red ball rolling along the ground
    cx, cy = 40 + (WIDTH - 80) * t / SECONDS, GROUND - r
    image[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = (220, 30, 30)

    if t >= 4:  # blue square rising on the right
        side, left = 50, WIDTH - 140
        top = GROUND - side - (t - 4) * 30
        image[(x >= left) & (x < left + side) & (y >= top) & (y < top + side)] = (30, 60, 210)
    return image.astype(np.uint8)


def main(out: str = "src/videocap/assets/example.mp4") -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    frames = (frame(i / FPS) for i in range(SECONDS * FPS))
    write_video(out, frames, fps=FPS, options={"crf": "30", "g": str(2 * FPS), "preset": "slow"},
                container_options={"movflags": "+faststart"})
    print(f"wrote {out} ({Path(out).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
