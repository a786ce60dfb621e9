"""Every captioning mode's prompt wording, one table per model family, with where each string comes from.

Owns the text the modes send (fast, first frame, frame pair, summary, re-caption), whether each request carries
the family's preamble, the whole-second timestamp form, `--instruction`, and `--prompt` templates with their
placeholders. Does not own the chat template or tokenization (models/<family>/prompt.py) or layouts (video/).

Sources (seed repo ShareGPT4Omni/ShareGPT4Video). Strings are byte-identical to the reference, typos included
("discribe", "happend"): the captioner was trained on exactly these.
- `captioner/app.py`, `generate_fastcaptioning`: the fast query.
- `captioner/app.py`, `generate_slidingcaptioning`: the first-frame query, the pair query (`"...{}.00
  Second(s)..."`, frame numbers from 0, times written as whole seconds + ".00"), the summary head and its
  per-caption line (numbered from 1).
- `captioner/app.py`, `generate_promptrecaptioning`: the re-caption query.
- `run.py`, `pre_query_prompt`: ShareGPT4Video-8B's grid preamble (models/llava_next/prompt.py holds it).

ShareGPT4Video-8B was trained on QA and captions over its 16-frame grid, never on these modes, so it gets the
captioner's wording as the request, placed where run.py puts its question:
- fast: its grid (the layout it was trained on) + the preamble + the captioner's fast query;
- first frame: the frame alone and **no preamble** — the preamble says the image "arranges keyframes ... in a
  grid view ... separated with white bands", which a single frame is not; the query itself says what the image is;
- pair: the two frames as its own grid (side by side on top, the unused cells white, exactly as a 2-frame grid
  is laid out) + the preamble, which describes that image truthfully; the query names them "frame i" and
  "frame j" in reading order;
- summary and re-caption: text only (no image, no preamble), the captioner's wording unchanged.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from enum import Enum

from videocap.errors import PromptError


class Step(Enum):
    """The prompts a mode sends; each has its own placeholders (PLACEHOLDERS)."""

    FAST = "fast"
    FIRST = "first"
    PAIR = "pair"
    SUMMARY = "summary"
    RECAPTION = "recaption"


# captioner/app.py, generate_fastcaptioning: `q`.
FAST_QUERY = "Here are a few key frames of a video, discribe this video in detail."
# captioner/app.py, generate_slidingcaptioning: `q` for the first frame.
FIRST_QUERY = "This is the first frame of a video, describe it in detail."
# captioner/app.py, generate_slidingcaptioning: the pair `prompt` (its "{}.00" written as "{t1}.00").
PAIR_QUERY = (
    "Here are the Video frame {i} at {t1}.00 Second(s) and Video frame {j} at {t2}.00 Second(s) of a video, "
    "describe what happend between them. What happend before is: {previous}"
)
# captioner/app.py, generate_slidingcaptioning: the summary `prompt` head and one line per caption.
SUMMARY_HEAD = "Summarize the following per frame descriptions:\n"
SUMMARY_LINE = "Video frame {k} at {t}.00 Second(s) description: {caption}\n"
SUMMARY_QUERY = SUMMARY_HEAD + "{captions}"
# captioner/app.py, generate_promptrecaptioning: `q`.
RECAPTION_QUERY = "Translate this brief generation prompt into a detailed caption: {text}"

# What each step's template may use (`--prompt`); anything else is refused with this list.
PLACEHOLDERS: dict[Step, dict[str, str]] = {
    Step.FAST: {"frames": "number of frames shown", "duration": "seconds covered by the frames (whole)"},
    Step.FIRST: {"t": "the frame's time, whole seconds (write {t}.00 for the trained form)"},
    Step.PAIR: {
        "i": "number of the earlier frame (from 0, as the captioner demo)", "j": "number of the later frame (i + 1)",
        "t1": "earlier frame's time, whole seconds", "t2": "later frame's time, whole seconds",
        "previous": "the caption of the step before (the first frame's, then each pair's)",
    },
    Step.SUMMARY: {"captions": "one line per caption: 'Video frame {k} at {t}.00 Second(s) description: ...'",
                   "count": "number of captions"},
    Step.RECAPTION: {"text": "the short prompt to expand"},
}


@dataclass(frozen=True)
class PromptTable:
    """One family's wording for every step, and which image steps carry the family's preamble."""

    fast: str = FAST_QUERY
    first: str = FIRST_QUERY
    pair: str = PAIR_QUERY
    summary: str = SUMMARY_QUERY
    summary_line: str = SUMMARY_LINE
    recaption: str = RECAPTION_QUERY
    fast_preamble: bool = True
    first_preamble: bool = False
    pair_preamble: bool = True

    def template(self, step: Step) -> str:
        return getattr(self, step.value)

    def preamble(self, step: Step) -> bool:
        return {Step.FAST: self.fast_preamble, Step.FIRST: self.first_preamble,
                Step.PAIR: self.pair_preamble}.get(step, False)


PROMPTS: dict[str, PromptTable] = {
    # ShareGPT4Video-8B: the captioner's wording; preamble on the grids (fast, pair), not on a lone frame.
    "llava_next": PromptTable(),
    # ShareCaptioner-Video: its own trained prompts, no preamble (it has none). Layouts: strip, frame, pair.
    "xcomposer2": PromptTable(fast_preamble=False, first_preamble=False, pair_preamble=False),
}


def table(family: str) -> PromptTable:
    if family not in PROMPTS:
        raise PromptError(f"no captioning prompts for model family {family!r} (known: {', '.join(PROMPTS)})")
    return PROMPTS[family]


def whole_seconds(t: float) -> int:
    """A time as the trained prompts write it: whole seconds, halves rounded up (2.5 → 3)."""
    return int(math.floor(t + 0.5))


def check_template(template: str, step: Step, option: str = "--prompt") -> str:
    """`template` if its placeholders all belong to `step`; otherwise a PromptError naming the unknown ones."""
    allowed = PLACEHOLDERS[step]
    try:
        fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise PromptError(f"{option}: cannot read the template ({e}); write a literal brace as {{{{ or }}}}") from e
    unknown = sorted({f for f in fields if f not in allowed})
    if unknown:
        names = ", ".join("{" + f + "}" for f in unknown)
        known = ", ".join("{" + f + "}" for f in allowed)
        raise PromptError(f"{option}: unknown placeholder {names} for the {step.value} prompt (it takes {known})")
    return template


def render(template: str, step: Step, **values) -> str:
    """Fill `template`'s placeholders (checked against `step`) from `values`."""
    check_template(template, step)
    return template.format_map({k: values[k] for k in PLACEHOLDERS[step] if k in values})


def with_instruction(prompt: str, instruction: str | None) -> str:
    """`prompt` with the user's instruction appended: after a space, or right after a closing newline."""
    if not instruction:
        return prompt
    instruction = instruction.strip()
    return prompt + instruction if prompt.endswith("\n") or not prompt else prompt + " " + instruction


def summary_lines(items: list[tuple[float, str]], line: str = SUMMARY_LINE) -> str:
    """The per-caption lines of the summary prompt: numbered from 1, each caption's time in whole seconds."""
    return "".join(line.format(k=k + 1, t=whole_seconds(t), caption=text) for k, (t, text) in enumerate(items))
