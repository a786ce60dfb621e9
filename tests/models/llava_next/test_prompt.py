"""The llava_llama_3 prompt: exact text and ids as the seed (ShareGPT4Video run.py) feeds them, stop ids, decoding."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from tokenizers_util import TINY_SPECIAL_IDS, TINY_VOCAB

from videocap.errors import CheckpointError
from videocap.models.llava_next.prompt import (
    DEFAULT_QUERY, GRID_PREAMBLE, IMAGE_TOKEN_ID, SYSTEM_PROMPT, Turn, build_prompt, decode, load_tokenizer,
    stop_token_ids, tokenize_prompt,
)

# Llama-3 ids: <|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>,
# and the regular tokens "system", "user", "assistant", "\n\n", "\n".
BOS, EOS, START, END, EOT = 128000, 128001, 128006, 128007, 128009
SYSTEM, USER, ASSISTANT, NL2, NL = 9125, 882, 78191, 271, 198

# The seed's prompt for run.py's question, written out by hand.
SEED_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\n"
    "The provided image arranges keyframes from a video in a grid view, keyframes are separated with white bands. "
    "Answer concisely with overall content and context of the video, highlighting any significant events, "
    "characters, or objects that appear throughout the frames.Describe this video in detail.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@pytest.fixture(scope="module")
def llama3(llama3_tokenizer_dir):
    return load_tokenizer(llama3_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


# --- prompt text ---------------------------------------------------------------------------------------------

def test_prompt_text_is_the_seeds():
    assert build_prompt([Turn(DEFAULT_QUERY)]) == SEED_PROMPT


def test_prompt_without_preamble_puts_the_query_right_after_the_image():
    prompt = build_prompt([Turn("What is the dog doing?")], preamble=False)
    assert "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is the dog doing?<|eot_id|>" in prompt
    assert GRID_PREAMBLE not in prompt


def test_two_turns_keep_the_answer_and_the_image_in_the_first_turn_only():
    prompt = build_prompt([Turn("Q1", "A1"), Turn("Q2")], preamble=False)
    assert prompt.endswith(
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nQ1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt.count("<image>") == 1


@pytest.mark.parametrize("turns", [
    [],
    [Turn("Q", "A")],  # nothing left to answer
    [Turn("Q1"), Turn("Q2")],  # an unanswered turn in the middle
    [Turn("look at <image> here")],  # a second image slot the model has no image for
])
def test_malformed_conversations_are_refused(turns):
    with pytest.raises(ValueError):
        build_prompt(turns)


def test_turn_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Turn("Q").assistant = "A"


# --- ids with the real Llama-3 vocabulary ---------------------------------------------------------------------

def test_seed_prompt_ids(llama3):
    ids = tokenize_prompt(llama3, SEED_PROMPT)
    system = text_ids(llama3, SYSTEM_PROMPT)
    # The tokenizer's BOS, then the template's own <|begin_of_text|>: the reference feeds BOS twice.
    head = [BOS, BOS, START, SYSTEM, END, NL2, *system, EOT, START, USER, END, NL2, IMAGE_TOKEN_ID]
    assert ids[:len(head)] == head
    # After the image: the text piece encoded on its own ("\n" starts it, no BOS), preamble glued to the query.
    tail = ids[len(head):]
    user = text_ids(llama3, "\n" + GRID_PREAMBLE + DEFAULT_QUERY)
    assert user[:2] == [NL, 791]  # "\n", "The"
    assert tail == [*user, EOT, START, ASSISTANT, END, NL2]
    assert ids.count(IMAGE_TOKEN_ID) == 1 and ids.count(BOS) == 2
    assert len(ids) == 110


def test_two_turn_ids(llama3):
    prompt = build_prompt([Turn("Who is in it?", "A man and a dog."), Turn("What does the dog do?")])
    ids = tokenize_prompt(llama3, prompt)
    end_of_first = [EOT, START, ASSISTANT, END, NL2, *text_ids(llama3, "A man and a dog."), EOT,
                    START, USER, END, NL2, *text_ids(llama3, "What does the dog do?"), EOT, START, ASSISTANT, END, NL2]
    assert ids[-len(end_of_first):] == end_of_first
    assert ids[:2] == [BOS, BOS] and ids.count(IMAGE_TOKEN_ID) == 1 and ids.count(BOS) == 2


def test_stop_ids_are_eot_then_the_checkpoints_eos(llama3):
    assert stop_token_ids(llama3, [EOS, EOT]) == [EOT, EOS]
    assert stop_token_ids(llama3, [EOS]) == [EOT, EOS]
    assert stop_token_ids(llama3, []) == [EOT]


def test_decode_drops_special_tokens_cleans_spaces_and_strips(llama3):
    text = " Hello , world ! It 's a dog . He can n't ; Isn 't it ? We 're sure they 've seen ' it ' , I 'm told .\n"
    ids = text_ids(llama3, text) + [EOT]
    # transformers' clean_up_tokenization_spaces (chained replaces on the whole text), which Llama-3 checkpoints
    # leave on: the reference's answers lose these spaces.
    assert decode(llama3, ids) == ("Hello, world! It's a dog. He cann't ; Isn 't it? We're sure they've seen'it ', "
                                   "I'm told.")


def test_decode_keeps_spaces_when_the_checkpoint_turns_clean_up_off(llama3_tokenizer_dir, tmp_path):
    shutil.copy(llama3_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": False}))
    tokenizer = load_tokenizer(tmp_path)
    assert decode(tokenizer, [BOS, *text_ids(tokenizer, "a , b !"), EOT]) == "a , b !"


# --- loading ---------------------------------------------------------------------------------------------------

def test_missing_tokenizer_names_the_directory(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_corrupt_tokenizer_names_the_directory(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_tokenizer_without_llama3_specials_is_refused(tiny_tokenizer_dir, tmp_path):
    data = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|eot_id|>"]
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="eot_id"):
        load_tokenizer(tmp_path)


# --- the tiny tokenizer (for tiny test models) -----------------------------------------------------------------

def test_tiny_tokenizer_shape(tiny):
    assert tiny.get_vocab_size() == TINY_VOCAB <= 400
    for token, id_ in TINY_SPECIAL_IDS.items():
        assert tiny.token_to_id(token) == id_
    assert tiny.encode("hi").ids[0] == TINY_SPECIAL_IDS["<|begin_of_text|>"]


def test_tiny_tokenizer_runs_the_template(tiny):
    bos, start, end, eot = (TINY_SPECIAL_IDS[t] for t in
                            ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    prompt = build_prompt([Turn("Q1", "A1"), Turn(DEFAULT_QUERY)])
    ids = tokenize_prompt(tiny, prompt)
    assert ids[:3] == [bos, bos, start]
    assert ids.count(IMAGE_TOKEN_ID) == 1 and ids.count(bos) == 2
    assistant_header = [start, *text_ids(tiny, "assistant"), end, *text_ids(tiny, "\n\n")]
    assert ids[-len(assistant_header):] == assistant_header
    assert all(0 <= i < TINY_VOCAB for i in ids if i != IMAGE_TOKEN_ID)
    assert stop_token_ids(tiny, [TINY_SPECIAL_IDS["<|end_of_text|>"]]) == [eot, TINY_SPECIAL_IDS["<|end_of_text|>"]]
    assert decode(tiny, [*text_ids(tiny, " A woman walks her dog ."), eot]) == "A woman walks her dog."


def test_tokenizer_without_bos_loses_the_first_token_of_later_pieces(tiny_tokenizer_dir, tmp_path):
    """The seed's rule, kept for any tokenizer: when the text itself starts with BOS, every piece after an image
    loses its first token, even when that token is text (here the "\\n" after `<image>`)."""
    data = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tokenizer = load_tokenizer(tmp_path)
    ids = tokenize_prompt(tokenizer, build_prompt([Turn("Q")], preamble=False))
    after_image = ids[ids.index(IMAGE_TOKEN_ID) + 1:]
    assert ids[:2] == [TINY_SPECIAL_IDS["<|begin_of_text|>"], TINY_SPECIAL_IDS["<|start_header_id|>"]]
    assert after_image[:len(text_ids(tokenizer, "\nQ")) - 1] == text_ids(tokenizer, "\nQ")[1:]
