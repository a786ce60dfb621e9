"""The Python API: `load(model) -> Captioner`, then `Captioner.ask(video, question)` or `Captioner.chat(video)`.

Owns turning a model argument (Hub id, alias, local directory) into a ready model, processor and engine on the
chosen device and dtype. The CLI and every later frontend are thin clients of this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from videocap.engine.engine import Engine
from videocap.errors import CheckpointError, DeviceError
from videocap.models.llava_next import prompt
from videocap.models.llava_next.processor import ImageView
from videocap.tasks.ask import Answer, Chat, VideoGrid
from videocap.tasks.family import family as family_named
from videocap.tasks.results import CaptionFailure, CaptionResult, RecaptionResult, SummaryResult
from videocap.weights import hub

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {device!r} (use cuda, cuda:N or cpu)") from e
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported (use cuda, cuda:N or cpu)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {device!r} does not exist: this machine has {count} CUDA GPU(s)")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r} (use {', '.join(DTYPES)})")
    return DTYPES[dtype]


class Captioner:
    """A loaded model with its processor and engine; `family` names its model family ("llava_next" for
    ShareGPT4Video-8B, "xcomposer2" for ShareCaptioner-Video), which picks its layouts and generation defaults."""

    def __init__(self, model, processor, engine: Engine, name: str, family: str = "llava_next"):
        self.model, self.processor, self.engine, self.name, self.family = model, processor, engine, name, family

    def ask(self, video: str | os.PathLike | VideoGrid, question: str = prompt.DEFAULT_QUERY, *, frames: int = 16,
            start: float | None = None, end: float | None = None, preamble: bool = True, **generation) -> Answer:
        """Answer one question about `video` (a path, or a `VideoGrid` already sampled). The frames are laid out
        as the model's family sees a whole video: ShareGPT4Video-8B's grid, ShareCaptioner-Video's labelled strip.

        `generation`: max_new_tokens and num_beams (default: the family's, 512 and 1 for ShareGPT4Video-8B, 2048
        and 3 for ShareCaptioner-Video), temperature, top_p, top_k, seed, on_text (called with each new piece of
        text).
        """
        return self.chat(video, frames=frames, start=start, end=end, preamble=preamble).ask(question, **generation)

    def chat(self, video: str | os.PathLike | VideoGrid, *, frames: int = 16, start: float | None = None,
             end: float | None = None, preamble: bool = True) -> Chat:
        layout = family_named(self.family).fast_layout
        if not isinstance(video, VideoGrid):
            video = VideoGrid.of(video, frames, start=start, end=end, compose=layout)
        return Chat(self, video.laid_out(layout), preamble=preamble)


    def caption(self, video: str | os.PathLike | Sequence[str | os.PathLike], mode: str = "fast", *,
                frames: int | str | None = None, seconds: float = 2.0, start: float | None = None,
                end: float | None = None, instruction: str | None = None, prompt: str | None = None,
                **options) -> CaptionResult | list[CaptionResult | CaptionFailure]:
        """Caption `video` (a result) or several videos (a list, in order; they share the engine).

        Every video is probed and planned first: a bad path or window raises before any captioning. One video that
        fails later (a decode error mid-stream) raises its typed `VideocapError`; in a list, it becomes a
        `CaptionFailure` at its place (`.failed` is True; `.error` says why in one line, `.exception` is the
        error) and the other videos are captioned all the same. `CaptionResult.failed` is False.

        mode "fast": one request over `frames` frames (default 16, uniform16; or "keyframes") in the model's layout.
        mode "slide": a frame every `seconds` (or `frames="keyframes"`): the first frame's caption, one caption per
        adjacent pair given the one before, then their summary (`result.segments` keeps each with exact times).
        `instruction` is appended to the final caption's prompt (fast: its prompt; slide: the summary's);
        `prompt` replaces the mode's prompt (slide: the pair prompt; `first_prompt`, `summary_prompt` the others),
        with the placeholders listed in videocap.tasks.prompts.PLACEHOLDERS.
        `options`: seek, max_side, allow_partial, keyframes (KeyframeOptions), context_limit, progress, on_result,
        and generation settings max_new_tokens (default: the family's, 512 for ShareGPT4Video-8B), temperature,
        top_p, top_k, seed.
        """
        from videocap.tasks import captioning

        return captioning.caption(self, video, mode, frames=frames, seconds=seconds, start=start, end=end,
                                  instruction=instruction, prompt=prompt, **options)

    def summarize(self, source, *, instruction: str | None = None, prompt: str | None = None, **options
                  ) -> SummaryResult | list[SummaryResult]:
        """One summary per record of timed per-frame captions (the sliding mode's last step alone).

        `source`: a file (videocap slide --json output or ShareGPT4Video records; JSON, JSON array or JSONL), one
        record (dict), a list of records, or a list of `Segment`s / (seconds, text) pairs. A file or list with many
        records gives a list of results. `options`: interval (seconds per caption for records without times),
        context_limit, progress, on_result, generation settings.
        """
        from videocap.tasks import captioning

        return captioning.summarize(self, source, instruction=instruction, prompt=prompt, **options)

    def recaption(self, text: str | Sequence[str], *, instruction: str | None = None, prompt: str | None = None,
                  **options) -> RecaptionResult | list[RecaptionResult]:
        """Expand a short text-to-video prompt (or a list of them, batched) into a detailed caption."""
        from videocap.tasks import captioning

        return captioning.recaption(self, text, instruction=instruction, prompt=prompt, **options)


def load(
    model: str | os.PathLike,
    *,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    image_view: str = "anyres",
    progress: bool = True,
    max_cache_tokens: int | None = None,
    gpu_memory_fraction: float = 0.9,
    eager: bool = False,
) -> Captioner:
    """Load `model` (Hub id[@revision], alias such as "sharegpt4video-8b" or "sharecaptioner-video", or a local
    checkpoint directory); its config.json's model_type picks the family. `image_view` applies to LLaVA-NeXT only.

    Engine settings: on CUDA the KV cache takes `gpu_memory_fraction` of the free GPU memory (less what the largest
    prefill step needs), or `max_cache_tokens` tokens; `eager` turns CUDA graphs (and look-ahead decoding) off."""
    if not 0 < gpu_memory_fraction <= 1:
        raise DeviceError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}")
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        view = ImageView(image_view)
    except ValueError as e:
        raise DeviceError(f"unknown image view {image_view!r} (use anyres or base)") from e
    model = os.fspath(model)
    model_dir = hub.resolve(model, allow_pickle=allow_pickle, progress=progress)
    family = model_family(model_dir)
    if family not in LOADERS:
        raise CheckpointError(f"{model}: model family {family!r} is not supported (videocap runs LLaVA-NeXT / "
                              "llava_llama checkpoints and InternLM-XComposer2-4KHD, model_type internlmxcomposer2)")
    total = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading weights", disable=not progress or total < 1 << 26) as bar:
        net, processor = LOADERS[family](model, Path(model_dir), dev, dt, allow_pickle, view, bar.update)
    if max_cache_tokens is None and dev.type != "cuda":
        max_cache_tokens = net.max_context()
    engine = Engine(net, max_cache_tokens=max_cache_tokens, gpu_memory_fraction=gpu_memory_fraction, eager=eager)
    return Captioner(net, processor, engine, model, family)


def _load_llava_next(name: str, model_dir: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                     view: ImageView, progress) -> tuple:
    from videocap.models.llava_next.config import load_config
    from videocap.models.llava_next.processor import LlavaNextProcessor
    from videocap.models.llava_next.weights import load as load_weights

    cfg = load_config(model_dir)
    tokenizer = prompt.load_tokenizer(model_dir)
    _check_vocab(name, tokenizer.get_vocab_size(with_added_tokens=True), cfg.text.vocab_size, "tokenizer.json")
    net = load_weights(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle, progress=progress)
    return net, LlavaNextProcessor(cfg, tokenizer, view)


def _load_xcomposer2(name: str, model_dir: Path, device: torch.device, dtype: torch.dtype, allow_pickle: bool,
                     view: ImageView, progress) -> tuple:
    from videocap.models.xcomposer2.config import load_config
    from videocap.models.xcomposer2.processor import XComposer2Processor
    from videocap.models.xcomposer2.prompt import load_tokenizer
    from videocap.models.xcomposer2.weights import load as load_weights

    cfg = load_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    _check_vocab(name, tokenizer.vocab_size, cfg.vocab_size, "tokenizer.model")
    net = load_weights(model_dir, device=device, dtype=dtype, allow_pickle=allow_pickle, progress=progress)
    return net, XComposer2Processor(cfg, tokenizer)


def _check_vocab(name: str, tokens: int, vocab: int, file: str) -> None:
    if tokens > vocab:
        raise CheckpointError(f"{name}: the tokenizer has {tokens} tokens but the model's vocabulary only {vocab}: "
                              f"{file} does not belong to this checkpoint")


LOADERS = {"llava_next": _load_llava_next, "xcomposer2": _load_xcomposer2}


def model_family(model_dir: Path) -> str:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: cannot read config.json: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{model_dir}: config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type in ("llava_next", "llava_llama", "llava"):
        return "llava_next"
    if model_type == "internlmxcomposer2":
        return "xcomposer2"
    return str(model_type)
