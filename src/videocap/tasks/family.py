"""How each model family sees a captioning mode: its prompt table, its layouts, and its generation defaults.

ShareGPT4Video-8B (`llava_next`) sees its own grid everywhere (the layout it was trained on): the fast mode's
frames, a lone first frame (a 1-frame grid is the frame itself), and a frame pair (a 2-frame grid). ShareCaptioner-
Video (`xcomposer2`) sees its labelled strip, the frame, and the vertical pair it was trained on, each at the
HD_transform budget the captioner demo gives it (`hd_num`: 16 for the strip, 9 for a frame or a pair).
Why the 8B prompts are worded as they are: tasks/prompts.py.

Generation defaults: each family's reference — ShareGPT4Video-8B greedy with 512 new tokens (`run.py`),
ShareCaptioner-Video beam search with 3 beams and up to 2048 new tokens (`captioner/app.py` `model_gen`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from videocap.engine.request import GREEDY_BELOW, SamplingParams
from videocap.errors import PromptError
from videocap.tasks.prompts import PROMPTS, PromptTable, Step
from videocap.video import layout


@dataclass(frozen=True)
class Family:
    name: str
    prompts: PromptTable
    fast_layout: Callable[[Sequence[np.ndarray]], Image.Image]
    pair_layout: Callable[[np.ndarray, np.ndarray], Image.Image]
    max_new_tokens: int  # the reference's default answer budget
    label: str
    num_beams: int = 1  # the reference's beam search width when generation is greedy (1: plain greedy)
    hd_num: dict[Step, int] = field(default_factory=dict)  # HD_transform budget per image step (xcomposer2)

    def frame(self, image: np.ndarray) -> Image.Image:
        """A single frame as the model sees it (the sliding mode's first frame)."""
        return Image.fromarray(image) if self.name != "llava_next" else layout.grid([image])

    def sampling(self, *, max_new_tokens: int | None = None, num_beams: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> SamplingParams:
        """Generation settings: the family's defaults with the caller's changes. Beam search (the family's width
        unless `num_beams` is given) applies to greedy generation only; sampling (temperature > 0) or a repetition
        penalty without an explicit `num_beams` runs one sequence."""
        if num_beams is None:
            plain = temperature < GREEDY_BELOW and repetition_penalty == 1.0
            num_beams = self.num_beams if plain else 1
        return SamplingParams(max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
                              temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                              repetition_penalty=repetition_penalty, num_beams=num_beams)


FAMILIES: dict[str, Family] = {
    # run.py: greedy, 512 new tokens.
    "llava_next": Family("llava_next", PROMPTS["llava_next"], layout.grid, lambda a, b: layout.grid([a, b]), 512,
                         "ShareGPT4Video-8B"),
    # captioner/app.py model_gen: beam search (3), up to 2048 new tokens; hd_num 16 for the fast strip
    # (generate_fastcaptioning), 9 for the first frame and each pair (generate_slidingcaptioning).
    "xcomposer2": Family("xcomposer2", PROMPTS["xcomposer2"], layout.strip, layout.pair, 2048,
                         "ShareCaptioner-Video", num_beams=3, hd_num={Step.FAST: 16, Step.FIRST: 9, Step.PAIR: 9}),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise PromptError(f"the captioning modes do not know model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
