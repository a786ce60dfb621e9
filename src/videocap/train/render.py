"""Pixels of a synthetic scene: `frame(scene, t)` draws one (H, W, 3) uint8 RGB frame at `t` seconds.

Plain backgrounds are one colour; textured ones (stripes, a checkerboard) are drawn wider than the frame and
cropped at the camera's offset, so a pan moves the texture and every object together. Shapes are filled polygons
(a circle is an ellipse), rotated about their centre. Frames are rendered in memory, fast enough to feed training;
`frames(scene)` gives the whole clip for writing an MP4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from videocap.train.scene import COLOURS, PAN_SPAN, PLAIN_BACKGROUNDS, Scene, state_at

TEXTURE_CELL = 16  # pixels per stripe / checker square
TEXTURE_TONES = ((70, 70, 78), (44, 44, 50))


def background(scene: Scene, camera_x: float) -> np.ndarray:
    """(H, W, 3) background at the camera's horizontal offset (pixels)."""
    h, w = scene.height, scene.width
    if scene.background in PLAIN_BACKGROUNDS:
        return np.broadcast_to(np.asarray(PLAIN_BACKGROUNDS[scene.background], np.uint8), (h, w, 3)).copy()
    cols = (np.arange(w) + int(round(camera_x)) + int(PAN_SPAN * w) + 1000 * TEXTURE_CELL) // TEXTURE_CELL
    if scene.background == "striped":
        parity = np.broadcast_to(cols % 2, (h, w))
    else:
        rows = np.arange(h) // TEXTURE_CELL
        parity = (rows[:, None] + cols[None, :]) % 2
    tones = np.asarray(TEXTURE_TONES, np.uint8)
    return tones[parity]


def frame(scene: Scene, t: float) -> np.ndarray:
    """The frame at `t` seconds, (H, W, 3) uint8 RGB."""
    state = state_at(scene, t)
    image = Image.fromarray(background(scene, state.camera_x))
    draw = ImageDraw.Draw(image)
    for o in state.objects:
        if not o.visible:
            continue
        colour = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([o.x - o.radius, o.y - o.radius, o.x + o.radius, o.y + o.radius], fill=colour)
        else:
            draw.polygon(polygon(o.shape, o.x, o.y, o.radius, o.angle), fill=colour)
    return np.asarray(image)


def polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a square (side ~1.6 r) or an upward triangle (circumradius 1.25 r), rotated by `angle` degrees."""
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = 0.82 * r
    else:
        corners = [(0, -1), (math.sin(2 * math.pi / 3), 0.5), (-math.sin(2 * math.pi / 3), 0.5)]
        scale = 1.25 * r
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    return [(x + scale * (cx * ca - cy * sa), y + scale * (cx * sa + cy * ca)) for cx, cy in corners]


def frames(scene: Scene) -> Iterator[np.ndarray]:
    """Every frame of the clip, at 1 / fps intervals from 0."""
    for i in range(scene.num_frames):
        yield frame(scene, i / scene.fps)
