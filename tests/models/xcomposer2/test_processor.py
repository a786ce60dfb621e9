"""ShareCaptioner-Video's prompt and processor with the real InternLM2 vocabulary: the ids the seed's `model_gen`
feeds (BOS, the image positions, then the chat text tokenized without BOS), text-only requests, chat turns, stop
ids, answer decoding, and image token counts per hd_num."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import needs_shared
from xcomposer2_tiny import INTERNLM2_MODEL, TINY

from videocap.engine.request import SamplingParams
from videocap.errors import CheckpointError, PromptError
from videocap.models.xcomposer2 import hd
from videocap.models.xcomposer2.processor import XComposer2Processor
from videocap.models.xcomposer2.prompt import InternLM2Tokenizer, Turn, answer_text, build_prompt, load_tokenizer

BOS, EOS, UNK, TURN_START, TURN_END = 1, 2, 0, 92543, 92542
USER, NL, ASS, ISTANT = 1008, 364, 525, 11353  # "user", "\n", "ass" + "istant"
HEAD = [TURN_START, USER, NL]  # [UNUSED_TOKEN_146]user\n
TAIL = [TURN_END, NL, TURN_START, ASS, ISTANT, NL]  # [UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n


@pytest.fixture(scope="module")
def tokenizer() -> InternLM2Tokenizer:
    return InternLM2Tokenizer(needs_shared(INTERNLM2_MODEL))


@pytest.fixture(scope="module")
def processor(tokenizer) -> XComposer2Processor:
    return XComposer2Processor(TINY, tokenizer)


def test_the_vocabulary_is_internlm2s(tokenizer):
    assert tokenizer.vocab_size == 92544 and (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (BOS, EOS, UNK)
    assert tokenizer.token_to_id("[UNUSED_TOKEN_146]") == TURN_START and tokenizer.token_to_id("[UNUSED_TOKEN_145]") == TURN_END
    assert tokenizer.encode("Hello world.") == [9843, 2028, 281]  # no dummy prefix: "Hello" has no "▁"


def test_an_image_request_is_bos_image_then_the_chat_text(processor, tokenizer):
    image = processor.prepare_image(Image.new("RGB", (640, 360), "gray"), hd_num=9)
    q = "This is the first frame of a video, describe it in detail."
    request = processor.request([Turn(q)], SamplingParams(num_beams=3, max_new_tokens=2048), image=image)
    n = image.num_tokens
    assert request.token_ids == [BOS] + [UNK] * n + HEAD + tokenizer.encode(q) + TAIL
    assert request.image_mask == [False] + [True] * n + [False] * (len(request.token_ids) - n - 1)
    assert request.images is image.input and request.sampling.stop_token_ids == (TURN_END, EOS)
    assert request.sampling.num_beams == 3


def test_a_text_request_is_bos_then_the_chat_text(processor, tokenizer):
    q = "Translate this brief generation prompt into a detailed caption: a corgi"
    request = processor.request([Turn(q)], SamplingParams(), image=None)
    assert request.token_ids == [BOS] + HEAD + tokenizer.encode(q) + TAIL
    assert request.images is None and not any(request.image_mask or ())


def test_turns_follow_internlm2s_chat_format():
    text = build_prompt([Turn("Who?", "A dog."), Turn("Where?")])
    assert text == ("[UNUSED_TOKEN_146]user\nWho?[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\nA dog."
                    "[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]user\nWhere?[UNUSED_TOKEN_145]\n"
                    "[UNUSED_TOKEN_146]assistant\n")
    with pytest.raises(PromptError):
        build_prompt([Turn("Who?", "A dog.")])
    with pytest.raises(PromptError):
        build_prompt([Turn("Who?"), Turn("Where?")])


def test_answers_are_decoded_as_model_gen_does(tokenizer):
    ids = tokenizer.encode(" A dog runs.")
    assert answer_text(tokenizer, ids) == "A dog runs."
    assert answer_text(tokenizer, [BOS] + ids) == "A dog runs."  # a leading BOS (or UNK) is dropped
    assert answer_text(tokenizer, [UNK] + ids) == "A dog runs."
    tail = tokenizer.encode("[UNUSED_TOKEN_145]\nmore")
    assert answer_text(tokenizer, ids + tail) == "A dog runs."  # cut at the end of the turn
    assert answer_text(tokenizer, ids + tokenizer.encode("<|im_end|>x")) == "A dog runs."
    assert tokenizer.decode(ids + [EOS]) == "  A dog runs.</s>"  # special tokens written out after a space


@pytest.mark.parametrize("size, hd_num", [((4180, 440), 16), ((640, 360), 9), ((640, 770), 9), ((300, 300), 25)])
def test_image_tokens_follow_the_hd_grid(processor, size, hd_num):
    image = processor.prepare_image(Image.new("RGB", size, "white"), hd_num=hd_num)
    cols, rows = hd.grid_of(size, hd_num)
    assert image.input.sizes == ((cols, rows),) and cols * rows <= hd_num
    assert image.input.pixels.shape == (1 + cols * rows, 3, 336, 336)
    assert image.num_tokens == (cols * rows + 1) * 144 + 1 + (rows + 1) * 12


def test_the_default_hd_num_is_the_fast_modes(processor):
    image = Image.new("RGB", (440, 4180), "white")
    assert processor.prepare_image(image).input.sizes == (hd.grid_of(image.size, 16),)


def test_a_checkpoint_without_its_tokenizer_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="sentencepiece"):
        load_tokenizer(tmp_path)
