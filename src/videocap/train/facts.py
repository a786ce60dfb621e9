"""Reading facts back out of a caption, and scoring them against a scene's: the evaluation's yardstick.

`parse(text)` finds, in reading order, the background ("on a gray background"), objects introduced with "a"/"an"
("a red circle"), and events: move, appear, disappear, change colour, grow, rotate, camera pan, in every phrasing
language.py writes. `score` compares parsed facts with the true ones: precision and recall over facts (background,
objects, events) and, for scenes with two or more events, the order of the events found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from videocap.train.scene import BACKGROUNDS, COLOURS, SHAPES

Fact = tuple[str, ...]

_C = "(" + "|".join(COLOURS) + ")"
_S = "(" + "|".join(SHAPES) + ")"
_OBJ = rf"{_C}\s+{_S}"
_DIR = r"(left|right|upward|downward|up|down)"
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("background", re.compile(r"\b(" + "|".join(BACKGROUNDS) + r")\s+background\b")),
    ("object", re.compile(rf"\b(?:a|an)\s+{_OBJ}\b")),
    ("move", re.compile(rf"\bthe\s+{_OBJ}\s+(?:moves|slides|goes)\s+(?:to\s+the\s+)?{_DIR}\b")),
    ("pan", re.compile(r"\bthe\s+camera\s+(?:pans|moves)\s+(?:to\s+the\s+)?(left|right)\b")),
    ("appear", re.compile(rf"\b(?:a|an|the)\s+{_OBJ}\s+(?:appears|comes\s+into\s+view)\b")),
    ("disappear", re.compile(rf"\bthe\s+{_OBJ}\s+(?:disappears|vanishes)\b")),
    ("recolor", re.compile(rf"\bthe\s+{_OBJ}\s+(?:turns|changes\s+colou?r\s+to|changes\s+from\s+\w+\s+to)\s+{_C}\b")),
    ("grow", re.compile(rf"\bthe\s+{_OBJ}\s+(?:grows|gets\s+bigger|becomes\s+larger)\b")),
    ("rotate", re.compile(rf"\bthe\s+{_OBJ}\s+(?:rotates|spins)\b")),
)


def parse(text: str) -> list[Fact]:
    """The facts `text` states, in reading order, each once (the first mention)."""
    found: list[tuple[int, Fact]] = []
    lowered = text.lower()
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(lowered):
            g = m.groups()
            if kind == "background":
                fact: Fact = ("background", g[0])
            elif kind == "object":
                fact = ("object", f"{g[0]} {g[1]}")
            elif kind == "pan":
                fact = ("event", "pan", "camera", g[0])
            elif kind == "move":
                fact = ("event", "move", f"{g[0]} {g[1]}", g[2].removesuffix("ward"))
            elif kind == "recolor":
                fact = ("event", "recolor", f"{g[0]} {g[1]}", g[2])
            else:
                fact = ("event", kind, f"{g[0]} {g[1]}", "")
            found.append((m.start(), fact))
    found.sort(key=lambda item: item[0])
    return list(dict.fromkeys(f for _, f in found))


def events(facts: Iterable[Fact]) -> list[Fact]:
    return [f for f in facts if f[0] == "event"]


@dataclass
class Score:
    """Counts over many captions; the rates are micro-averages."""

    true_positive: int = 0
    predicted: int = 0
    actual: int = 0
    ordered_pairs: int = 0  # pairs of true events both found, in the true order
    pairs: int = 0  # pairs of true events both found (scenes with >= 2 events)
    exact_order: int = 0  # scenes with >= 2 events whose parsed event list equals the true one
    multi_event: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [found, actual]

    def add(self, predicted: list[Fact], actual: list[Fact]) -> None:
        pred, true = set(predicted), set(actual)
        self.true_positive += len(pred & true)
        self.predicted += len(pred)
        self.actual += len(true)
        for f in true:
            kind = f[1] if f[0] == "event" else f[0]
            counts = self.by_kind.setdefault(kind, [0, 0])
            counts[0] += f in pred
            counts[1] += 1
        true_events, pred_events = events(actual), events(predicted)
        if len(true_events) >= 2:
            self.multi_event += 1
            self.exact_order += pred_events == true_events
            where = {f: i for i, f in enumerate(pred_events)}
            for a in range(len(true_events)):
                for b in range(a + 1, len(true_events)):
                    if true_events[a] in where and true_events[b] in where:
                        self.pairs += 1
                        self.ordered_pairs += where[true_events[a]] < where[true_events[b]]

    @property
    def precision(self) -> float:
        return self.true_positive / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positive / self.actual if self.actual else 0.0

    @property
    def order_accuracy(self) -> float:
        return self.ordered_pairs / self.pairs if self.pairs else 0.0

    @property
    def exact_order_rate(self) -> float:
        return self.exact_order / self.multi_event if self.multi_event else 0.0

    def to_dict(self) -> dict:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "order_accuracy": round(self.order_accuracy, 4), "exact_order": round(self.exact_order_rate, 4),
                "facts": self.actual, "event_pairs": self.pairs, "multi_event_clips": self.multi_event,
                "recall_by_kind": {k: round(v[0] / v[1], 4) for k, v in sorted(self.by_kind.items())}}
