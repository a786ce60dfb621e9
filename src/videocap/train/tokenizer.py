"""The tiny model's tokenizer, trained here from the synthetic captions and the prompts the modes send.

A byte-level BPE shaped like Llama-3's (same split pattern, `<|begin_of_text|>` added before every sequence by
the post-processor), so models/llava_next/prompt.py tokenizes the `llava_llama_3` template with it unchanged;
Llama-3's chat special tokens and `<image>` (the llava-hf image placeholder) come after the learnt tokens.
Nothing is downloaded: the corpus is the generator's own text plus every prompt string videocap sends, and
training is deterministic (same corpus, same merges, same ids).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from videocap.models.llava_next import prompt
from videocap.tasks import prompts as mode_prompts
from videocap.train import language
from videocap.train.scene import sample_scene

# Llama-3's pre-tokenizer split pattern (tiktoken's pat_str).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<image>")
IMAGE_TOKEN = "<image>"
DEFAULT_VOCAB = 1024  # learnt tokens (bytes and merges); the specials come after them
CORPUS_SCENES = 3000


def corpus(scenes: int = CORPUS_SCENES) -> Iterator[str]:
    """Every kind of text the tiny model reads or writes: prompts, template pieces, captions, QA."""
    yield prompt.SYSTEM_PROMPT
    yield prompt.GRID_PREAMBLE + prompt.DEFAULT_QUERY
    yield "system\n\nuser\n\nassistant\n\n"
    yield mode_prompts.FAST_QUERY
    yield mode_prompts.FIRST_QUERY
    for seed in range(scenes):
        scene = sample_scene(seed)
        first = language.first_frame_caption(scene)
        yield language.detailed_caption(scene, seed % 3)
        yield first
        yield language.summary(scene)
        yield mode_prompts.RECAPTION_QUERY.format(text=language.t2v_prompt(scene))
        previous = first
        items = [(0.0, first)]
        for k in range(len(scene.events)):
            pair = language.pair_caption(scene, k)
            yield mode_prompts.PAIR_QUERY.format(i=k, j=k + 1, t1=2 * k, t2=2 * k + 2, previous=previous)
            yield pair
            previous = pair
            items.append((2.0 * k + 2, pair))
        yield mode_prompts.SUMMARY_QUERY.format(captions=mode_prompts.summary_lines(items))
        for qa in language.qa_pairs(scene):
            yield qa.question + " " + qa.answer


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB, scenes: int = CORPUS_SCENES) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(scenes), trainer)
    regular = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    bos = tokenizer.token_to_id(prompt.BOS_TOKEN)
    assert bos == regular, "special tokens follow the learnt ones"
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{prompt.BOS_TOKEN}:0 $A:0",
                                      pair=f"{prompt.BOS_TOKEN}:0 $A:0 {prompt.BOS_TOKEN}:1 $B:1",
                                      special_tokens=[(prompt.BOS_TOKEN, bos)]),
    ])
    return tokenizer


TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": prompt.BOS_TOKEN,
                    "eos_token": prompt.EOT_TOKEN, "pad_token": "<|end_of_text|>", "clean_up_tokenization_spaces": False,
                    "model_max_length": 4096}


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, config: dict | None = None) -> None:
    """tokenizer.json and tokenizer_config.json, as a checkpoint carries them (transformers reads both).
    `config`: the tokenizer_config.json to write (a checkpoint's own, when fine-tuning one; default the tiny one's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config or TOKENIZER_CONFIG, indent=2) + "\n")
