"""The synthetic scene: what a generator clip contains and how it changes over time (no pixels, no words).

A `Scene` is drawn deterministically from a seed: frame size and rate, a plain or textured background, 1-3
objects (distinct colours, any shapes) and 1-3 scripted events, one per 2-second slot. Event k plays in
[2k + 0.4, 2k + 1.6] s, so the frames the sliding captioner samples every 2 s (0, 2, 4, ...) each fall between
two events, and every event is complete from one sampled frame to the next. Instantaneous changes (appear,
disappear, change colour) happen at the slot's middle. `state_at(scene, t)` gives every object's position,
size, angle, colour and visibility and the camera's offset at time t; rendering (render.py) and the captions
(language.py) both read the scene through it, so pictures and words cannot disagree.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235),
    "yellow": (245, 220, 40), "purple": (150, 60, 205), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (18, 18, 18), "gray": (128, 128, 128),
                                                       "brown": (105, 72, 45)}
TEXTURED_BACKGROUNDS = ("striped", "checkered")  # two dark grays: a camera pan is visible on them
BACKGROUNDS = (*PLAIN_BACKGROUNDS, *TEXTURED_BACKGROUNDS)
DIRECTIONS = ("left", "right", "up", "down")
EVENT_KINDS = ("move", "appear", "disappear", "recolor", "grow", "rotate", "pan")
KIND_WEIGHTS = {"move": 3.0, "appear": 1.0, "disappear": 1.0, "recolor": 1.0, "grow": 1.5, "rotate": 1.0, "pan": 1.5}
# (width, height), even for yuv420p. Small: the 16-frame grid's 50 px bands dominate it anyway, and the tiny
# model's 448 px canvas shows each frame at ~90 px whatever its size; small frames render and tile fast.
FRAME_SIZES = ((192, 144), (192, 108), (144, 192), (176, 176), (216, 144))
FRAME_RATES = (8, 10, 12)
SLOT = 2.0  # seconds per event: the sliding captioner's default interval
MOVE_SPAN = 0.28  # of the frame's width (left/right) or height (up/down)
PAN_SPAN = 0.22  # of the frame's width
GROW_FACTOR = 1.6
ROTATE_DEGREES = 45.0


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    x: float  # centre, fraction of the frame's width
    y: float  # centre, fraction of the frame's height
    size: float  # radius, fraction of the frame's shorter side


@dataclass(frozen=True)
class Event:
    kind: str
    target: int | None  # index into Scene.objects; None for a camera pan
    arg: str = ""  # direction (move, pan) or new colour (recolor)


@dataclass(frozen=True)
class Scene:
    seed: int
    width: int
    height: int
    fps: int
    background: str
    objects: tuple[Obj, ...]
    events: tuple[Event, ...]

    @property
    def duration(self) -> float:
        return SLOT * len(self.events) + 1.0

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def event_span(self, k: int) -> tuple[float, float]:
        """(start, end) seconds of event k's change."""
        return SLOT * k + 0.4, SLOT * k + 1.6

    def initially_visible(self, i: int) -> bool:
        first = next((e for e in self.events if e.target == i), None)
        return first is None or first.kind != "appear"


@dataclass(frozen=True)
class ObjState:
    colour: str
    shape: str
    x: float
    y: float
    radius: float  # pixels
    angle: float  # degrees
    visible: bool


@dataclass(frozen=True)
class State:
    objects: tuple[ObjState, ...]
    camera_x: float  # pixels the camera has moved right (a pan left is negative)


def progress(scene: Scene, k: int, t: float) -> float:
    start, end = scene.event_span(k)
    return min(1.0, max(0.0, (t - start) / (end - start)))


def state_at(scene: Scene, t: float) -> State:
    """Every object's state and the camera offset at `t` seconds (positions on screen, in pixels)."""
    w, h, side = scene.width, scene.height, min(scene.width, scene.height)
    cam = 0.0
    xs = [o.x * w for o in scene.objects]
    ys = [o.y * h for o in scene.objects]
    radii = [o.size * side for o in scene.objects]
    angles = [0.0] * len(scene.objects)
    colours = [o.colour for o in scene.objects]
    visible = [scene.initially_visible(i) for i in range(len(scene.objects))]
    for k, e in enumerate(scene.events):
        p = progress(scene, k, t)
        if e.kind == "pan":
            cam += (-1 if e.arg == "left" else 1) * PAN_SPAN * w * p
            continue
        i = e.target
        if e.kind == "move":
            dx, dy = {"left": (-MOVE_SPAN * w, 0), "right": (MOVE_SPAN * w, 0), "up": (0, -MOVE_SPAN * h),
                      "down": (0, MOVE_SPAN * h)}[e.arg]
            xs[i] += dx * p
            ys[i] += dy * p
        elif e.kind == "grow":
            radii[i] *= 1 + (GROW_FACTOR - 1) * p
        elif e.kind == "rotate":
            angles[i] += ROTATE_DEGREES * p
        elif p >= 0.5:
            if e.kind == "recolor":
                colours[i] = e.arg
            elif e.kind == "appear":
                visible[i] = True
            elif e.kind == "disappear":
                visible[i] = False
    objs = tuple(ObjState(colours[i], o.shape, xs[i] - cam, ys[i], radii[i], angles[i], visible[i])
                 for i, o in enumerate(scene.objects))
    return State(objs, cam)


def sample_scene(seed: int) -> Scene:
    """The scene of `seed`: the same scene on every machine and Python version (random.Random is portable).

    Objects are placed until they fit apart; each event is drawn until the scene so far stays valid (inside the
    frame, objects apart), so the counts of objects and events stay close to uniform."""
    rng = random.Random(seed)
    while True:
        width, height = rng.choice(FRAME_SIZES)
        fps = rng.choice(FRAME_RATES)
        background = rng.choice(BACKGROUNDS)
        n_obj, n_events = rng.randint(1, 3), rng.randint(1, 3)
        colours = rng.sample(list(COLOURS), n_obj)
        for _ in range(200):
            objects = tuple(Obj(c, rng.choice(SHAPES), rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.75),
                                rng.uniform(0.09, 0.15)) for c in colours)
            scene = Scene(seed, width, height, fps, background, objects, ())
            if _valid(scene):
                break
        else:
            continue
        for _ in range(n_events):
            for _ in range(50):
                event = _draw_event(rng, scene)
                if event is not None:
                    candidate = Scene(seed, width, height, fps, background, objects, (*scene.events, event))
                    if _valid(candidate):
                        scene = candidate
                        break
            else:
                break
        if len(scene.events) == n_events:
            return scene


def _draw_event(rng: random.Random, scene: Scene) -> Event | None:
    """One more event for `scene`, or None when the drawn kind does not fit it."""
    events, objects = scene.events, scene.objects
    kinds = [k for k in EVENT_KINDS if k != "pan" or (scene.background in TEXTURED_BACKGROUNDS
                                                      and all(e.kind != "pan" for e in events))]
    kind = rng.choices(kinds, [KIND_WEIGHTS[k] for k in kinds])[0]
    if kind == "pan":
        return Event("pan", None, rng.choice(("left", "right")))
    touched: dict[int, list[str]] = {}
    for e in events:
        if e.target is not None:
            touched.setdefault(e.target, []).append(e.kind)
    gone = {i for i, ks in touched.items() if "disappear" in ks}
    if kind == "appear":  # an object's first event, and never every object (one must be there at the start)
        options = [i for i in range(len(objects)) if i not in touched]
        if len(objects) - sum(1 for ks in touched.values() if ks[0] == "appear") <= 1:
            return None
    else:
        options = [i for i in range(len(objects))
                   if i not in gone and not (kind == "rotate" and objects[i].shape == "circle")
                   and not (kind in ("grow", "rotate") and kind in touched.get(i, []))]
    if not options:
        return None
    i = rng.choice(options)
    if kind == "move":
        arg = rng.choice(DIRECTIONS)
        if any(e.kind == "move" and e.target == i and e.arg == arg for e in events):
            return None  # the same move twice reads as one fact
        return Event(kind, i, arg)
    if kind == "recolor":
        used = {o.colour for o in objects} | {e.arg for e in events if e.kind == "recolor"}
        return Event(kind, i, rng.choice([c for c in COLOURS if c not in used]))
    return Event(kind, i)


def _valid(scene: Scene) -> bool:
    """Every visible object stays inside the frame and apart from the others, at every quarter second."""
    t = 0.0
    while t <= scene.duration + 1e-9:
        objs = [o for o in state_at(scene, t).objects if o.visible]
        for o in objs:
            r = o.radius * (1.42 if o.shape != "circle" else 1.0)  # a rotated square's corners reach further
            if o.x - r < 4 or o.y - r < 4 or o.x + r > scene.width - 4 or o.y + r > scene.height - 4:
                return False
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                gap = math.hypot(objs[a].x - objs[b].x, objs[a].y - objs[b].y)
                if gap < 1.25 * (objs[a].radius + objs[b].radius) + 4:
                    return False
        t += 0.25
    return True
