"""Tokenizers for tests: the real Llama-3 vocabulary (from ../shared/tokenizers) and a tiny byte-level BPE.

Both are saved as a checkpoint's tokenizer files (tokenizer.json + tokenizer_config.json) so that code under test
loads them as it loads a real checkpoint. The tiny one carries Llama-3's chat special tokens at the end of its
vocabulary, as the real one does, so tiny test models (vocab_size = TINY_VOCAB) run the real prompt template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SHARED_TOKENIZERS = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers"
LLAMA3_MODEL = SHARED_TOKENIZERS / "llama3" / "tokenizer.model"

# Llama-3's pre-tokenizer split pattern (tiktoken pat_str; ../shared/tokenizers/README.md).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGULAR = 128_000
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"


def llama3_special_tokens() -> list[str]:
    """Llama-3's 256 special tokens in id order (128000...): Meta-Llama-3's names, reserved ones numbered 0-250."""
    named = [BOS, EOS, *(f"<|reserved_special_token_{i}|>" for i in range(4)), START_HEADER, END_HEADER,
             "<|reserved_special_token_4|>", EOT]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]


def _bos_post_processor(bos_id: int) -> processors.PostProcessor:
    """Llama-3's: byte-level offsets, then `<|begin_of_text|>` before every sequence."""
    return processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                      special_tokens=[(BOS, bos_id)]),
    ])


def _write_checkpoint_files(tokenizer: Tokenizer, out_dir: Path, **config) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": EOT, "clean_up_tokenization_spaces": True,
              "tokenizer_class": "PreTrainedTokenizerFast", **config}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_llama3_tokenizer(out_dir: Path) -> Tokenizer:
    """The real Llama-3 fast tokenizer, converted from ../shared's tiktoken file (needs transformers, tiktoken)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=str(LLAMA3_MODEL), pattern=LLAMA3_PATTERN).converted()
    assert tokenizer.get_vocab_size() == LLAMA3_REGULAR
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in llama3_special_tokens()])
    assert tokenizer.token_to_id(EOT) == 128009 and tokenizer.get_vocab_size() == 128_256
    tokenizer.post_processor = _bos_post_processor(tokenizer.token_to_id(BOS))
    _write_checkpoint_files(tokenizer, out_dir)
    return tokenizer


# The tiny tokenizer: 256 byte tokens + merges learnt from the sentences below, then the five chat specials.
TINY_REGULAR = 379
TINY_SPECIAL_IDS = {t: TINY_REGULAR + i for i, t in enumerate([BOS, EOS, START_HEADER, END_HEADER, EOT])}
TINY_VOCAB = TINY_REGULAR + len(TINY_SPECIAL_IDS)  # 384

_TINY_CORPUS = [
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.",
    "The provided image arranges keyframes from a video in a grid view, keyframes are separated with white "
    "bands. Answer concisely with overall content and context of the video, highlighting any significant "
    "events, characters, or objects that appear throughout the frames.",
    "Describe this video in detail. What happens next? Why is this video funny?",
    "A woman in a red coat walks her dog along the beach at sunset while waves roll onto the sand.",
    "The camera pans across a busy street; cars, buses and people move through the frame.",
    "system user assistant\n\n",
]


def make_tiny_tokenizer(out_dir: Path) -> Tokenizer:
    """A byte-level BPE of TINY_VOCAB ids shaped like Llama-3's (same split pattern, specials last, BOS added).

    Training is deterministic (merges ranked by count, ties by pair ids), so the ids are the same on every run.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_REGULAR, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(_TINY_CORPUS, trainer)
    assert tokenizer.get_vocab_size() == TINY_REGULAR, "the corpus is too small for TINY_REGULAR tokens"
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in TINY_SPECIAL_IDS])
    assert all(tokenizer.token_to_id(t) == i for t, i in TINY_SPECIAL_IDS.items())
    assert tokenizer.get_vocab_size() == TINY_VOCAB
    tokenizer.post_processor = _bos_post_processor(TINY_SPECIAL_IDS[BOS])
    _write_checkpoint_files(tokenizer, out_dir, model_max_length=4096)
    return tokenizer
