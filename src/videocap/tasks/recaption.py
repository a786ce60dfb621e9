"""Prompt re-captioning: a short text-to-video prompt expanded into a detailed caption, text only.

The captioner's wording ("Translate this brief generation prompt into a detailed caption: {text}") for every
family; many prompts batch together through the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from videocap.engine.request import SamplingParams
from videocap.errors import PromptError, RecordError
from videocap.tasks.driver import Ask, TaskGen, Usage
from videocap.tasks.family import Family
from videocap.tasks.prompts import Step, check_template, render, with_instruction
from videocap.tasks.records import read_text
from videocap.tasks.results import RecaptionResult


@dataclass(frozen=True)
class RecaptionOptions:
    sampling: SamplingParams
    instruction: str | None = None
    prompt: str | None = None  # placeholders: prompts.PLACEHOLDERS[Step.RECAPTION]
    model: str = ""

    def __post_init__(self):
        if self.prompt is not None:
            check_template(self.prompt, Step.RECAPTION)


def recaption_text(family: Family, options: RecaptionOptions, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"a prompt to re-caption must be non-empty text, got {text!r}")
    template = options.prompt if options.prompt is not None else family.prompts.recaption
    return with_instruction(render(template, Step.RECAPTION, text=text.strip()), options.instruction)


def recaption_task(text: str, family: Family, options: RecaptionOptions) -> TaskGen:
    usage = Usage()
    [reply] = yield [Ask(recaption_text(family, options, text), None, False, options.sampling)]
    usage.add([reply])
    return RecaptionResult(text.strip(), reply.text, reply.prompt_tokens, reply.new_tokens, reply.finish_reason,
                           usage.timings(), options.model)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per non-blank line of the file at `path`."""
    path = os.fspath(path)
    lines = [line.strip() for line in read_text(path, "a file of prompts").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise RecordError(f"{path}: no prompts (expected one prompt per line)")
    return prompts
