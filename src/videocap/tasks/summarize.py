"""Clip summarizing: one caption for a video from its timed per-frame (differential) captions.

The prompt is the captioner's: "Summarize the following per frame descriptions:" then one line per caption,
"Video frame k at t.00 Second(s) description: ...", numbered from 1, with each caption's time (the later frame
of its pair) in whole seconds — then the user's instruction. It is text only.

Hierarchical summary: when that prompt and the answer would not fit the model's context (a long video at one
frame per 2 s), the captions are packed in order into the largest groups whose summary prompt fits, each group
is summarized (all groups in one round, so they batch), and the group summaries — each timed at its group's last
caption, in the same line format — are summarized again, until one prompt fits. Intermediate levels use the
family's plain wording; the instruction or a custom summary prompt applies to the final summary only (an
instruction such as "one sentence" would otherwise throw detail away early). A group of one caption passes
through unchanged; when no two captions fit one prompt, the summary is refused with PromptTooLongError.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from videocap.engine.request import SamplingParams
from videocap.errors import PromptTooLongError
from videocap.tasks.driver import Ask, Reply, TaskGen, Usage
from videocap.tasks.family import Family
from videocap.tasks.prompts import Step, check_template, render, summary_lines, with_instruction
from videocap.tasks.records import CaptionSet
from videocap.tasks.results import SummaryResult

Item = tuple[float, str]  # (seconds, caption)


@dataclass(frozen=True)
class SummaryOptions:
    sampling: SamplingParams
    limit: int  # tokens one request may hold: prompt + answer
    count: Callable[[Ask], int]  # prompt tokens of a text-only ask
    instruction: str | None = None
    prompt: str | None = None  # replaces the final summary prompt; placeholders: prompts.PLACEHOLDERS[Step.SUMMARY]
    model: str = ""

    def __post_init__(self):
        if self.prompt is not None:
            check_template(self.prompt, Step.SUMMARY, "--summary-prompt")


def summary_ask(family: Family, items: list[Item], options: SummaryOptions, *, final: bool) -> Ask:
    template = options.prompt if final and options.prompt is not None else family.prompts.summary
    text = render(template, Step.SUMMARY, captions=summary_lines(items, family.prompts.summary_line),
                  count=len(items))
    return Ask(with_instruction(text, options.instruction) if final else text, None, False, options.sampling)


def summary_steps(family: Family, items: list[Item], options: SummaryOptions, usage: Usage
                  ) -> Generator[list[Ask], list[Reply], tuple[Reply, int]]:
    """Ask for the summary of `items`, hierarchically when needed; returns the final reply and the levels used."""
    budget = options.limit - options.sampling.max_new_tokens
    level = 1
    while True:
        final = summary_ask(family, items, options, final=True)
        if len(items) <= 1 or options.count(final) <= budget:
            [reply] = yield [final]
            usage.add([reply])
            return reply, level
        groups = _pack(family, items, options, budget)
        if len(groups) == len(items):
            raise PromptTooLongError(
                f"cannot summarize: no two captions fit one prompt within the model's context ({options.limit} "
                f"tokens, {options.sampling.max_new_tokens} of them kept for the answer)")
        asks = [summary_ask(family, g, options, final=False) for g in groups if len(g) > 1]
        replies = iter((yield asks))
        answered: list[Reply] = []
        merged: list[Item] = []
        for group in groups:
            if len(group) == 1:
                merged.append(group[0])
            else:
                answered.append(next(replies))
                merged.append((group[-1][0], answered[-1].text))
        usage.add(answered)
        items = merged
        level += 1


def _pack(family: Family, items: list[Item], options: SummaryOptions, budget: int) -> list[list[Item]]:
    """Consecutive groups of `items`, each as large as fits one (non-final) summary prompt.

    Groups grow on each line's own token count (a line's tokens merge with its neighbours' at most at the line
    break, so the sum is close); each group is then measured whole and shrunk until it fits.
    """
    count = options.count
    base = count(summary_ask(family, [], options, final=False))
    cost = [count(summary_ask(family, [item], options, final=False)) - base for item in items]
    groups: list[list[Item]] = []
    start = 0
    while start < len(items):
        stop, total = start, base
        while stop < len(items) and (stop == start or total + cost[stop] <= budget):
            total += cost[stop]
            stop += 1
        while stop - start > 1 and count(summary_ask(family, items[start:stop], options, final=False)) > budget:
            stop -= 1
        groups.append(items[start:stop])
        start = stop
    return groups


def summary_task(captions: CaptionSet, family: Family, options: SummaryOptions) -> TaskGen:
    """Summarize one record's captions (`videocap summarize`)."""
    usage = Usage()
    items = [(s.end, s.text) for s in captions.segments]
    reply, levels = yield from summary_steps(family, items, options, usage)
    return SummaryResult(
        captions.source, reply.text, captions.segments, usage.prompt_tokens, usage.new_tokens, usage.requests,
        reply.finish_reason, levels, usage.timings(), captions.reference, options.model,
    )
