"""Prompt text, token ids and answer text for ShareCaptioner-Video (InternLM-XComposer2-4KHD).

Owns the InternLM2 chat turns, the tokenizer (the checkpoint's sentencepiece `tokenizer.model`, read with the
`sentencepiece` library: no transformers, no remote code), the ids the reference feeds, the stop ids and answer
decoding. Does not own pixels (hd.py) or splicing the image embeddings in (the model does).

Facts reproduced from the seed's captioner (ShareGPT4Omni/ShareGPT4Video `captioner/app.py`, `model_gen`) and the
checkpoint's tokenizer (`tokenization_internlm_xcomposer2.py`, a sentencepiece wrapper):
- A user turn is `[UNUSED_TOKEN_146]user\\n{q}[UNUSED_TOKEN_145]\\n[UNUSED_TOKEN_146]assistant\\n`; no system turn.
- With an image, `model_gen` encodes the empty text before the image with special tokens (just BOS), then the
  image embeddings, then the whole chat text without special tokens: [BOS] + image + ids(text). Text alone is
  encoded once with special tokens: [BOS] + ids(text). The tokenizer adds BOS only (`add_bos_token`), no EOS, and
  its `_tokenize` is `sp_model.encode(text)`; the model has no dummy prefix, and the turn markers are pieces of
  their own (92543, 92542).
- The answer: a leading id 0 or 1 (UNK/BOS) is dropped, the ids are decoded (special tokens kept as text, one
  space before a run of them, as `convert_tokens_to_string` writes them), cut at `[UNUSED_TOKEN_145]` and at
  `<|im_end|>`, and stripped.
- Generation stops at EOS (2, the generation config's only eos id). videocap also stops at `[UNUSED_TOKEN_145]`:
  the reference cuts the text there anyway, so greedy answers are the same, and nothing past the end of the
  turn is computed. (Beam search ranks finished hypotheses by their own tokens, so a beam answer can differ
  from one whose beams ran on past the turn end.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from videocap.errors import CheckpointError, PromptError
from videocap.models.llava_next.prompt import Turn  # the conversation type every family's processor takes

TURN_START = "[UNUSED_TOKEN_146]"
TURN_END = "[UNUSED_TOKEN_145]"
IM_END = "<|im_end|>"  # the other cut in model_gen
DEFAULT_QUERY = "Describe this video in detail."

__all__ = ["Turn", "build_prompt", "InternLM2Tokenizer", "load_tokenizer", "DEFAULT_QUERY"]


def build_prompt(turns: Sequence[Turn]) -> str:
    """The chat text for a conversation ending with the question being asked (answered turns before it)."""
    if not turns:
        raise PromptError("a conversation needs at least one turn")
    if turns[-1].assistant is not None:
        raise PromptError("the last turn must be the question being asked (assistant=None)")
    text = ""
    for i, turn in enumerate(turns):
        if i < len(turns) - 1 and turn.assistant is None:
            raise PromptError(f"turn {i + 1} has no answer: only the last turn may be unanswered")
        text += f"{TURN_START}user\n{turn.user}{TURN_END}\n{TURN_START}assistant\n"
        if turn.assistant is not None:
            text += f"{turn.assistant}{TURN_END}\n"
    return text


class InternLM2Tokenizer:
    """The checkpoint's sentencepiece model, encoding and decoding as the reference's tokenizer does."""

    def __init__(self, model_file: Path):
        import sentencepiece

        sentencepiece.set_min_log_level(2)  # not the warning about InternLM2's unused NUL piece on every load
        self.path = Path(model_file)
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: not a sentencepiece model: {e}") from e
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        # transformers' all_special_tokens for this tokenizer: <unk>, <s>, </s> (pad is </s>)
        self.special_ids = {i for i in (self.bos_id, self.eos_id, self.unk_id) if i >= 0}
        missing = [t for t in (TURN_START, TURN_END) if self.token_to_id(t) is None]
        if self.bos_id < 0 or self.eos_id < 0 or missing:
            raise CheckpointError(f"{self.path}: not an InternLM2 tokenizer (no BOS/EOS or no {', '.join(missing)})")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return None if i == self.unk_id and piece != self.sp.id_to_piece(self.unk_id) else i

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return ([self.bos_id] if bos else []) + self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` as the reference's `tokenizer.decode` gives it (special tokens written out)."""
        out, run, prev_special = "", [], False
        for i in ids:
            if i in self.special_ids:
                out += ("" if prev_special else " ") + self.sp.decode(run) + self.sp.id_to_piece(i)
                run, prev_special = [], True
            else:
                run.append(i)
                prev_special = False
        return out + self.sp.decode(run)


def load_tokenizer(model_dir: Path) -> InternLM2Tokenizer:
    path = Path(model_dir) / "tokenizer.model"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no tokenizer.model (the checkpoint's sentencepiece tokenizer)")
    return InternLM2Tokenizer(path)


def stop_token_ids(tokenizer: InternLM2Tokenizer) -> tuple[int, ...]:
    """`[UNUSED_TOKEN_145]` (end of turn) and EOS."""
    return tuple(dict.fromkeys([tokenizer.token_to_id(TURN_END), tokenizer.eos_id]))


def answer_text(tokenizer: InternLM2Tokenizer, ids: Sequence[int]) -> str:
    """The answer `model_gen` returns for generated `ids`."""
    ids = list(ids)
    if ids and ids[0] in (0, 1):
        ids = ids[1:]
    text = tokenizer.decode(ids)
    return text.split(TURN_END)[0].strip().split(IM_END)[0].strip()
