"""How each model family sees a captioning mode: its prompt table, its layouts, and its generation defaults.

ShareGPT4Video-8B (`llava_next`) sees its own grid everywhere (the layout it was trained on): the fast mode's
frames, a lone first frame (a 1-frame grid is the frame itself), and a frame pair (a 2-frame grid). ShareCaptioner-
Video (`xcomposer2`, its own issue) sees its labelled strip, the frame, and the vertical pair it was trained on.
Why the 8B prompts are worded as they are: tasks/prompts.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from videocap.errors import PromptError
from videocap.tasks.prompts import PROMPTS, PromptTable
from videocap.video import layout


@dataclass(frozen=True)
class Family:
    name: str
    prompts: PromptTable
    fast_layout: Callable[[Sequence[np.ndarray]], Image.Image]
    pair_layout: Callable[[np.ndarray, np.ndarray], Image.Image]
    max_new_tokens: int  # the reference's default answer budget
    label: str

    def frame(self, image: np.ndarray) -> Image.Image:
        """A single frame as the model sees it (the sliding mode's first frame)."""
        return Image.fromarray(image) if self.name != "llava_next" else layout.grid([image])


FAMILIES: dict[str, Family] = {
    # run.py: greedy, 512 new tokens.
    "llava_next": Family("llava_next", PROMPTS["llava_next"], layout.grid, lambda a, b: layout.grid([a, b]), 512,
                         "ShareGPT4Video-8B"),
    # captioner/app.py model_gen: beam search (3), up to 2048 new tokens.
    "xcomposer2": Family("xcomposer2", PROMPTS["xcomposer2"], layout.strip, layout.pair, 2048,
                         "ShareCaptioner-Video"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise PromptError(f"the captioning modes do not know model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
