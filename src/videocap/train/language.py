"""The words of a synthetic scene: captions in every form the captioning modes produce, QA pairs, and facts.

Plain templated English, varied by a `variant` seed so the model sees several phrasings, every one of which
`facts.parse` reads back. Objects are named by colour and shape ("the red circle"), by their colour at the time
of the sentence (after "the red circle turns green" it is "the green circle"); a scene's colours are distinct,
so a name is never ambiguous. An object is introduced with "a" (the scene sentence, "a ... appears"); events
name their subject with "the".

Facts (what evaluation scores): the background, every object with its first colour, and every event as
(kind, subject, argument) in order. Sizes and positions are drawn but never put into words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from videocap.train.scene import SLOT, Event, Scene

Fact = tuple[str, ...]

CONNECTORS = (("First,", "Then,", "Finally,"), ("At first,", "After that,", "In the end,"),
              ("To begin,", "Next,", "Lastly,"))
SCENE_OPENERS = ("The video shows {objs} on a {bg} background.", "On a {bg} background, there {be} {objs}.",
                 "In this video, {objs} {be} on a {bg} background.")
FIRST_OPENERS = ("The frame shows {objs} on a {bg} background.", "There {be} {objs} on a {bg} background.",
                 "This frame shows {objs} on a {bg} background.")


@dataclass(frozen=True)
class NamedEvent:
    kind: str
    subject: str  # "red circle" (its colour at that moment), or "camera"
    arg: str = ""

    @property
    def fact(self) -> Fact:
        return ("event", self.kind, self.subject, self.arg)


def name_of(scene: Scene, i: int, upto: int) -> str:
    """Object i's name just before event `upto` (its colour then)."""
    colour = scene.objects[i].colour
    for e in scene.events[:upto]:
        if e.target == i and e.kind == "recolor":
            colour = e.arg
    return f"{colour} {scene.objects[i].shape}"


def named_events(scene: Scene) -> list[NamedEvent]:
    return [NamedEvent(e.kind, "camera" if e.target is None else name_of(scene, e.target, k), e.arg)
            for k, e in enumerate(scene.events)]


def initial_objects(scene: Scene) -> list[str]:
    return [f"{o.colour} {o.shape}" for i, o in enumerate(scene.objects) if scene.initially_visible(i)]


def facts(scene: Scene) -> list[Fact]:
    """The scene's facts: background, objects (first colour), events in order."""
    out: list[Fact] = [("background", scene.background)]
    out += [("object", f"{o.colour} {o.shape}") for o in scene.objects]
    out += [e.fact for e in named_events(scene)]
    return out


def indefinite(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def listing(names: list[str], article: bool = True) -> str:
    items = [indefinite(n) if article else n for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def event_phrase(e: NamedEvent, rng: random.Random) -> str:
    s = f"the {e.subject}"
    if e.kind == "move":
        way = rng.choice((f"to the {e.arg}", e.arg)) if e.arg in ("left", "right") else \
            rng.choice((e.arg, e.arg + "ward"))
        return f"{s} {rng.choice(('moves', 'slides'))} {way}"
    if e.kind == "pan":
        return f"the camera {rng.choice(('pans', 'moves'))} {rng.choice(('to the ', ''))}{e.arg}"
    if e.kind == "appear":
        return f"{indefinite(e.subject)} {rng.choice(('appears', 'comes into view'))}"
    if e.kind == "disappear":
        return f"{s} {rng.choice(('disappears', 'vanishes'))}"
    if e.kind == "recolor":
        old = e.subject.split()[0]
        return rng.choice((f"{s} turns {e.arg}", f"{s} changes color to {e.arg}", f"{s} changes from {old} to {e.arg}"))
    if e.kind == "grow":
        return f"{s} {rng.choice(('grows larger', 'gets bigger'))}"
    if e.kind == "rotate":
        return f"{s} {rng.choice(('rotates', 'spins'))}"
    raise AssertionError(e.kind)


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _be(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"


def detailed_caption(scene: Scene, variant: int = 0) -> str:
    """The whole-video caption (fast captioning's answer, the record's idx -1)."""
    rng = random.Random(f"{scene.seed}/caption/{variant}")
    objs = initial_objects(scene)
    parts = [rng.choice(SCENE_OPENERS).format(objs=listing(objs), bg=scene.background, be=_be(objs))]
    events = named_events(scene)
    words = rng.choice(CONNECTORS)
    for k, e in enumerate(events):
        if len(events) == 1:
            connector = rng.choice(("Then,", "", "After a moment,"))
        else:
            connector = words[0] if k == 0 else words[2] if k == len(events) - 1 else words[1]
        phrase = event_phrase(e, rng)
        parts.append(f"{connector} {phrase}." if connector else sentence(phrase))
    return " ".join(parts)


def first_frame_caption(scene: Scene, variant: int = 0) -> str:
    """What the first frame shows (the sliding mode's first answer, the record's idx 0)."""
    rng = random.Random(f"{scene.seed}/first/{variant}")
    objs = initial_objects(scene)
    return rng.choice(FIRST_OPENERS).format(objs=listing(objs), bg=scene.background, be=_be(objs))


def pair_caption(scene: Scene, k: int, variant: int = 0) -> str:
    """What changed between keyframe k and k + 1 (event k): the record's idx k + 1."""
    rng = random.Random(f"{scene.seed}/pair/{k}/{variant}")
    return sentence(event_phrase(named_events(scene)[k], rng))


def keyframe_times(scene: Scene) -> list[float]:
    """The sliding captioner's sampled times: one every SLOT seconds, the first frame and after each event."""
    return [SLOT * k for k in range(len(scene.events) + 1)]


def summary(scene: Scene, variant: int = 0) -> str:
    """A one-sentence summary (the sliding mode's last step)."""
    rng = random.Random(f"{scene.seed}/summary/{variant}")
    objs = initial_objects(scene)
    head = f"{listing(objs)} on a {scene.background} background"
    phrases = [event_phrase(e, rng) for e in named_events(scene)]
    if len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", then ".join(phrases[:-1]) + ", and finally " + phrases[-1]
    return sentence(f"{head}: {body}")


def t2v_prompt(scene: Scene, variant: int = 0) -> str:
    """A short text-to-video prompt (what re-captioning expands)."""
    rng = random.Random(f"{scene.seed}/prompt/{variant}")
    objs = initial_objects(scene)
    phrases = [event_phrase(e, rng) for e in named_events(scene)]
    return f"{listing(objs)} on a {scene.background} background, " + ", ".join(phrases)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str  # count | colour | shape | direction | camera | first | describe


def qa_pairs(scene: Scene) -> list[QA]:
    """Questions the facts answer, with short answers (the describe question gets the detailed caption)."""
    objs = [(o.colour, o.shape) for i, o in enumerate(scene.objects) if scene.initially_visible(i)]
    numbers = ("zero", "one", "two", "three")
    out = [QA("How many objects are there at the start?", sentence(numbers[len(objs)]), "count")]
    shapes = [s for _, s in objs]
    for colour, shape in objs:
        out.append(QA(f"What shape is the {colour} object?", sentence(indefinite(shape)), "shape"))
        if shapes.count(shape) == 1:
            out.append(QA(f"What color is the {shape} at the start?", sentence(colour), "colour"))
    events = named_events(scene)
    moved = [e.subject for e in events if e.kind == "move"]
    for e in events:
        if e.kind == "move" and moved.count(e.subject) == 1:
            out.append(QA(f"Which way does the {e.subject} move?", sentence(e.arg), "direction"))
    panned = any(e.kind == "pan" for e in events)
    out.append(QA("Does the camera move?", "Yes." if panned else "No.", "camera"))
    out.append(QA("What happens first?", sentence(event_phrase(events[0], random.Random(scene.seed))), "first"))
    return out
