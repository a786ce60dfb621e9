"""Prompt text and token ids for ShareGPT4Video-8B: the seed's `llava_llama_3` conversation template.

Owns the template string, the tokenization of a prompt into the ids the reference feeds (split at `<image>`,
with `IMAGE_TOKEN_ID` where the image embeddings go), the stop ids, answer decoding, and loading the
checkpoint's `tokenizer.json`. Does not own image preprocessing, splicing the image embeddings in (the model
does that at `IMAGE_TOKEN_ID`), or generation. Works on `tokenizers.Tokenizer` alone: no transformers at run time.

Facts reproduced from the seed repo (ShareGPT4Omni/ShareGPT4Video, run with transformers 4.37.2):
- The system string begins with `<|begin_of_text|>` and the tokenizer adds its own BOS to every chunk, so the
  ids start with two BOS tokens: [128000, 128000, 128006, ...].
- The prompt is tokenized in pieces split at `<image>`; every piece after the first loses its first token (the
  BOS its own encoding added), so no BPE merge crosses the image.
- Answers are decoded without special tokens, with transformers' `clean_up_tokenization_spaces` (on unless the
  checkpoint's tokenizer_config.json turns it off: the 4.37 default), then stripped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders

from videocap.errors import CheckpointError, PromptError

# llava/conversation.py, conv_llava_llama_3.system (after its header tokens).
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
# run.py, `pre_query_prompt` (the same text is Chat.pre_query_prompt in llava/serve/gradio_utils.py).
GRID_PREAMBLE = (
    "The provided image arranges keyframes from a video in a grid view, keyframes are separated with white "
    "bands. Answer concisely with overall content and context of the video, highlighting any significant "
    "events, characters, or objects that appear throughout the frames."
)
# run.py, `question`.
DEFAULT_QUERY = "Describe this video in detail."
# llava/constants.py: DEFAULT_IMAGE_TOKEN and IMAGE_TOKEN_INDEX.
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = -200

# Llama-3 special tokens used by the template (llava/conversation.py, conv_llava_llama_3).
BOS_TOKEN = "<|begin_of_text|>"
EOT_TOKEN = "<|eot_id|>"
_START_HEADER, _END_HEADER = "<|start_header_id|>", "<|end_header_id|>"

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, applied in this order to the decoded text.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's text and the assistant's answer (None for the turn being asked)."""
    user: str
    assistant: str | None = None


def _header(role: str) -> str:
    return f"{_START_HEADER}{role}{_END_HEADER}\n\n"


def build_prompt(turns: Sequence[Turn], *, preamble: bool = True, image: bool = True) -> str:
    """The `llava_llama_3` prompt for a conversation about one image, ending with the assistant's header.

    The first user message is `<image>\\n` + (grid preamble) + text, with no separator between preamble and text,
    as run.py builds it. Later user messages carry no image: the web demo repeats `<image>` and the preamble in
    every turn, which gives the model more image slots than images (LLaVA's splice then fails), so videocap
    keeps the image in the first turn only. Like the seed's MPT-style join, an empty message writes its
    role header alone, without `<|eot_id|>`.

    `image=False` builds a text-only conversation (the captioning modes' summary and re-caption steps): no
    `<image>` slot and no grid preamble, the same template otherwise.
    """
    if not turns:
        raise PromptError("a conversation needs at least one turn")
    if turns[-1].assistant is not None:
        raise PromptError("the last turn must be the question being asked (assistant=None)")
    for i, turn in enumerate(turns):
        if IMAGE_TOKEN in turn.user or IMAGE_TOKEN in (turn.assistant or ""):
            raise PromptError(f"turn {i + 1} contains {IMAGE_TOKEN!r}, which marks where the video grid goes")
        if i < len(turns) - 1 and turn.assistant is None:
            raise PromptError(f"turn {i + 1} has no answer: only the last turn may be unanswered")

    messages: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        user = turn.user
        if i == 0 and image:
            user = IMAGE_TOKEN + "\n" + (GRID_PREAMBLE if preamble else "") + user
        messages.append(("user", user))
        if turn.assistant is not None:
            messages.append(("assistant", turn.assistant))

    text = BOS_TOKEN + _header("system") + SYSTEM_PROMPT + EOT_TOKEN
    for role, message in messages:
        text += _header(role) + (message + EOT_TOKEN if message else "")
    return text + _header("assistant")


def tokenize_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids the reference feeds for `prompt`: IMAGE_TOKEN_ID at each `<image>`, text encoded piece by piece.

    Each piece is encoded with the tokenizer's special tokens (its BOS). When the first piece starts with BOS,
    that BOS is kept once and the first token of every piece is dropped (mm_utils.tokenizer_image_token);
    with the Llama-3 post-processor and the template's own `<|begin_of_text|>` this leaves BOS twice at the start.
    """
    bos = tokenizer.token_to_id(BOS_TOKEN)
    pieces = [encoding.ids for encoding in tokenizer.encode_batch(prompt.split(IMAGE_TOKEN))]
    skip = 1 if pieces[0] and pieces[0][0] == bos else 0
    ids = pieces[0][:skip]
    for i, piece in enumerate(pieces):
        if i:
            ids.append(IMAGE_TOKEN_ID)
        ids.extend(piece[skip:])
    return ids


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The checkpoint's fast tokenizer (`tokenizer.json`), decoding as the reference's AutoTokenizer did.

    Encoding is the file's own: Llama-3's post-processor adds `<|begin_of_text|>`, which is what transformers'
    PreTrainedTokenizerFast used. `clean_up_tokenization_spaces` from tokenizer_config.json (default on, as in
    transformers 4.37) is folded into the decoder, so every decode matches the reference's batch_decode.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no tokenizer.json (the checkpoint's fast tokenizer)")
    try:
        tokenizer = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{model_dir}: cannot read tokenizer.json: {e}") from e
    except Exception as e:  # tokenizers raises plain Exception for a malformed file
        raise CheckpointError(f"{model_dir}: tokenizer.json is not a valid tokenizer: {e}") from e
    if tokenizer.token_to_id(BOS_TOKEN) is None or tokenizer.token_to_id(EOT_TOKEN) is None:
        raise CheckpointError(f"{model_dir}: tokenizer.json lacks {BOS_TOKEN} or {EOT_TOKEN}: not a Llama-3 tokenizer")

    config_path = model_dir / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{model_dir}: cannot read tokenizer_config.json: {e}") from e
    if config.get("clean_up_tokenization_spaces", True) and tokenizer.decoder is not None:
        # Sequence passes the ByteLevel decoder's single joined string to each Replace in turn: the same as
        # transformers' chained str.replace on the whole decoded text.
        tokenizer.decoder = decoders.Sequence(
            [tokenizer.decoder, *(decoders.Replace(old, new) for old, new in _CLEAN_UP)])
    return tokenizer


def stop_token_ids(tokenizer: Tokenizer, eos_ids: Sequence[int]) -> list[int]:
    """`<|eot_id|>` (the template's end of turn) followed by the checkpoint's eos ids, without repeats.

    The reference stops on the generation config's eos ids alone; Llama-3-Instruct lists both 128001 and
    128009 there, and the template always ends a turn with `<|eot_id|>`, so it is always included.
    """
    eot = tokenizer.token_to_id(EOT_TOKEN)
    if eot is None:
        raise CheckpointError(f"the tokenizer has no {EOT_TOKEN} token: not a Llama-3 chat tokenizer")
    return list(dict.fromkeys([eot, *eos_ids]))


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The answer text of generated ids: special tokens dropped, stripped (run.py's `batch_decode(...).strip()`)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
