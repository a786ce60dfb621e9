"""The captioning modes' prompts: the reference strings byte for byte, placeholders, instructions, whole-second
times, the text-only LLaVA-NeXT path, and the exact ids each mode feeds ShareGPT4Video-8B (real Llama-3 vocabulary)."""

from __future__ import annotations

import pytest

from fakes import fake_session

from videocap.engine.request import SamplingParams
from videocap.errors import PromptError
from videocap.models.llava_next.prompt import GRID_PREAMBLE, IMAGE_TOKEN_ID, SYSTEM_PROMPT, Turn, build_prompt
from videocap.tasks import driver, prompts
from videocap.tasks.family import family
from videocap.tasks.fast import FastOptions, fast_task
from videocap.tasks.plan import plan_video
from videocap.tasks.prompts import Step, check_template, summary_lines, whole_seconds, with_instruction
from videocap.tasks.recaption import RecaptionOptions, recaption_task
from videocap.tasks.slide import SlideOptions, slide_task
from videocap.tasks.summarize import SummaryOptions

BOS, START, END, EOT = 128000, 128006, 128007, 128009
SYSTEM, USER, ASSISTANT, NL2 = 9125, 882, 78191, 271
LLAVA = family("llava_next")


# --- the strings --------------------------------------------------------------------------------------------------

def test_the_captioner_demo_strings_byte_for_byte():
    # Written out from captioner/app.py, typos as trained.
    assert prompts.FAST_QUERY == "Here are a few key frames of a video, discribe this video in detail."
    assert prompts.FIRST_QUERY == "This is the first frame of a video, describe it in detail."
    assert prompts.PAIR_QUERY.format(i=0, t1=0, j=1, t2=2, previous="A dog runs.") == (
        "Here are the Video frame 0 at 0.00 Second(s) and Video frame 1 at 2.00 Second(s) of a video, describe what "
        "happend between them. What happend before is: A dog runs.")
    assert prompts.SUMMARY_QUERY.format(captions=summary_lines([(0.0, "A dog."), (2.0, "It runs.")])) == (
        "Summarize the following per frame descriptions:\n"
        "Video frame 1 at 0.00 Second(s) description: A dog.\n"
        "Video frame 2 at 2.00 Second(s) description: It runs.\n")
    assert prompts.RECAPTION_QUERY.format(text="a corgi") == (
        "Translate this brief generation prompt into a detailed caption: a corgi")


def test_times_are_whole_seconds_with_halves_rounded_up():
    assert [whole_seconds(t) for t in (0.0, 0.49, 0.5, 1.5, 2.5, 3.999)] == [0, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("template, step, needle", [
    ("{t1} to {t3}", Step.PAIR, "{t3}"),
    ("{previous}{frame}", Step.PAIR, "{frame}"),
    ("{captions} in {words} words", Step.SUMMARY, "{words}"),
    ("{txt}", Step.RECAPTION, "{txt}"),
    ("{t1}", Step.FAST, "{t1}"),
])
def test_unknown_placeholders_are_named(template, step, needle):
    with pytest.raises(PromptError, match="unknown placeholder") as e:
        check_template(template, step)
    assert needle in str(e.value) and "it takes" in str(e.value)


def test_templates_take_literal_braces_and_refuse_broken_ones():
    assert check_template("{{json}} {t1}.00", Step.PAIR)
    with pytest.raises(PromptError, match="literal brace"):
        check_template("a { b", Step.PAIR)


def test_instructions_are_appended():
    assert with_instruction("Describe it.", "Focus on camera motion.") == "Describe it. Focus on camera motion."
    assert with_instruction("lines\n", " One sentence. ") == "lines\nOne sentence."
    assert with_instruction("Describe it.", None) == "Describe it."


def test_text_only_prompt_has_no_image_and_no_preamble():
    text = build_prompt([Turn("Summarize.")], image=False)
    assert "<image>" not in text and GRID_PREAMBLE not in text
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nSummarize.<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert build_prompt([Turn("Q")], image=True).count("<image>") == 1  # the image path is unchanged


def test_text_only_request_has_no_image(tiny_cfg, tiny_ckpt):
    from videocap.models.llava_next.processor import LlavaNextProcessor
    from videocap.models.llava_next.prompt import load_tokenizer

    processor = LlavaNextProcessor(tiny_cfg, load_tokenizer(tiny_ckpt))
    request = processor.request([Turn("Summarize.")], SamplingParams(), image=None)
    assert request.images is None and request.image_embeds is None and not any(request.image_mask or ())
    assert IMAGE_TOKEN_ID not in request.token_ids and request.sampling.stop_token_ids == processor.stop_ids


# --- exact ids, real Llama-3 vocabulary -----------------------------------------------------------------------------

def enc(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def expected_ids(tokenizer, user: str, image_tokens: int = 0) -> tuple[list[int], list[bool]]:
    """The seed's llava_llama_3 ids, written out: two BOS, system turn, user turn (image then "\\n" + text)."""
    head = [BOS, BOS, START, SYSTEM, END, NL2, *enc(tokenizer, SYSTEM_PROMPT), EOT, START, USER, END, NL2]
    tail = [EOT, START, ASSISTANT, END, NL2]
    if not image_tokens:
        ids = head + enc(tokenizer, user) + tail
        return ids, [False] * len(ids)
    text = enc(tokenizer, "\n" + user)
    ids = head + [0] * image_tokens + text + tail
    return ids, [False] * len(head) + [True] * image_tokens + [False] * (len(text) + len(tail))


def answers(prompt: str, request) -> str:
    if "first frame" in prompt:
        return "A red square."
    if "happend between" in prompt:
        return "It moved."
    return "The summary."


def run(session, tasks):
    return driver.run(session, tasks)


def test_fast_ids(llama3, tiny_cfg, h264):
    session = fake_session(llama3, tiny_cfg, answers)
    options = FastOptions(SamplingParams(max_new_tokens=8), "Focus on camera motion.")
    [result] = run(session, [fast_task(plan_video(h264, "fast"), LLAVA, options)])
    [request] = session.engine.requests
    ids, mask = expected_ids(llama3, GRID_PREAMBLE + prompts.FAST_QUERY + " Focus on camera motion.", 576)
    assert request.token_ids == ids and request.image_mask == mask
    assert result.caption == "The summary." and len(result.frame_timestamps) == 16
    assert result.prompt_tokens == len(ids) and result.requests == 1


def test_slide_ids(llama3, tiny_cfg, h264):
    """4 s at 30 fps, a frame every 1.5 s: frames at 0, 1.5, 3.0 s, written 0.00, 2.00, 3.00 in prompts."""
    session = fake_session(llama3, tiny_cfg, answers)
    sampling = SamplingParams(max_new_tokens=8)
    summary = SummaryOptions(sampling, session.limit, session.count, "One sentence.")
    [result] = run(session, [slide_task(plan_video(h264, "slide", seconds=1.5), LLAVA, SlideOptions(sampling, summary))])
    first, pair1, pair2, final = session.engine.requests
    assert (first.token_ids, first.image_mask) == expected_ids(llama3, prompts.FIRST_QUERY, 576)  # no preamble
    pair = ("Here are the Video frame {} at {}.00 Second(s) and Video frame {} at {}.00 Second(s) of a video, describe "
            "what happend between them. What happend before is: {}")
    assert (pair1.token_ids, pair1.image_mask) == expected_ids(
        llama3, GRID_PREAMBLE + pair.format(0, 0, 1, 2, "A red square."), 576)
    assert (pair2.token_ids, pair2.image_mask) == expected_ids(
        llama3, GRID_PREAMBLE + pair.format(1, 2, 2, 3, "It moved."), 576)
    summary_text = ("Summarize the following per frame descriptions:\n"
                    "Video frame 1 at 0.00 Second(s) description: A red square.\n"
                    "Video frame 2 at 2.00 Second(s) description: It moved.\n"
                    "Video frame 3 at 3.00 Second(s) description: It moved.\n"
                    "One sentence.")
    assert (final.token_ids, final.image_mask or [False] * len(final.token_ids)) == expected_ids(llama3, summary_text)
    assert final.images is None
    assert result.frame_timestamps == (0.0, 1.5, 3.0)  # exact seconds in the output
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (0.0, 0.0, "A red square."), (0.0, 1.5, "It moved."), (1.5, 3.0, "It moved.")]
    assert result.caption == "The summary." and result.requests == 4 and result.summary_levels == 1


def test_recaption_ids(llama3, tiny_cfg):
    session = fake_session(llama3, tiny_cfg, lambda p, r: "A corgi runs along a beach at sunset.")
    options = RecaptionOptions(SamplingParams(max_new_tokens=8))
    [result] = run(session, [recaption_task("a corgi on a beach at sunset", LLAVA, options)])
    [request] = session.engine.requests
    ids, _ = expected_ids(llama3, "Translate this brief generation prompt into a detailed caption: "
                                  "a corgi on a beach at sunset")
    assert request.token_ids == ids and request.images is None
    assert result.caption == "A corgi runs along a beach at sunset." and result.prompt == "a corgi on a beach at sunset"


def test_custom_prompts_replace_the_modes_wording(llama3, tiny_cfg, h264):
    session = fake_session(llama3, tiny_cfg, lambda prompt, request: "Seen.")
    sampling = SamplingParams(max_new_tokens=8)
    summary = SummaryOptions(sampling, session.limit, session.count, prompt="Shortly: {captions}({count})")
    options = SlideOptions(sampling, summary, first_prompt="At {t}.00 s?", pair_prompt="{i}>{j} {t1}>{t2} {previous}")
    run(session, [slide_task(plan_video(h264, "slide", seconds=1.5), LLAVA, options)])
    texts = [session.engine.prompt_text(r) for r in session.engine.requests]
    assert "\nAt 0.00 s?<|eot_id|>" in texts[0]
    assert GRID_PREAMBLE + "0>1 0>2 Seen.<|eot_id|>" in texts[1]
    assert "Shortly: Video frame 1 at 0.00 Second(s) description: Seen.\n" in texts[-1]
    assert "Video frame 3 at 3.00 Second(s) description: Seen.\n(3)<|eot_id|>" in texts[-1]
