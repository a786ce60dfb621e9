"""Captioning requests at real shapes for the engine benchmarks: distinct 16-frame grid images of 1080p frames
(benchmarks/llava_8b.py's `grid_image`, as videocap lays them out), turned into anyres pixels on the host by
videocap's LlavaNextProcessor, and prompt ids shaped like the llava_llama_3 prompt: a shared system part, the
image positions, then a part of each request's own. No tokenizer: token values are random.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import torch

import llava_8b

from videocap.engine.request import ImageInput, Request, SamplingParams
from videocap.models.llava_next.processor import LlavaNextProcessor

SYSTEM_TOKENS, USER_TOKENS = 40, 70


def eot_tokenizer(eot_id: int):
    """The processor wants a Llama-3 chat tokenizer for its stop ids; only its pixels are used here."""
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel({"<unk>": 0, "<|eot_id|>": eot_id}, unk_token="<unk>"))


_PROCESSOR: LlavaNextProcessor | None = None  # set in the parent before forking the image workers


def prepare(seed: int) -> tuple[np.ndarray, tuple[int, int], int]:
    image = _PROCESSOR.prepare_image(llava_8b.grid_image(seed))
    return image.input.pixels.numpy(), image.input.sizes[0], image.num_tokens


def prepare_images(processor: LlavaNextProcessor, n: int, workers: int) -> list[tuple[torch.Tensor, tuple, int]]:
    """`n` distinct grid images → (pixels (tiles, 3, 336, 336) float32 on the host, (w, h), image tokens)."""
    global _PROCESSOR
    _PROCESSOR = processor
    if workers <= 1:
        out = [prepare(seed) for seed in range(n)]
    else:  # forked before this process initialises CUDA; one torch thread a worker
        with multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            out = pool.map(prepare, range(n), chunksize=max(1, n // (4 * workers)))
    return [(torch.from_numpy(p), tuple(size), count) for p, size, count in out]


class Inputs:
    """Pixels and prompt ids of every video; `request(i)` builds a fresh engine request for video i.

    Ids: a system part shared by all (token values random), the image positions (the processor's placeholder id),
    then a part of each request's own. `system=k` swaps in another shared system part, so that no block of an
    earlier run can be reused from the engine's prefix cache (the profile's requests reuse the videos)."""

    def __init__(self, images: list, vocab: int, pad_id: int, new_tokens: int):
        self.images, self.new_tokens, self.vocab = images, new_tokens, vocab
        self.rest, self.masks = [], []
        for i, (_, _, n_image) in enumerate(images):
            own = torch.randint(0, vocab - 1, (USER_TOKENS,), generator=torch.Generator().manual_seed(i + 1)).tolist()
            self.rest.append([pad_id] * n_image + own)
            self.masks.append([False] * SYSTEM_TOKENS + [True] * n_image + [False] * USER_TOKENS)

    def system(self, k: int = 0) -> list[int]:
        gen = torch.Generator().manual_seed(1_000_003 * (k + 1))
        return torch.randint(0, self.vocab - 1, (SYSTEM_TOKENS,), generator=gen).tolist()

    def prompt(self, i: int, system: int = 0) -> list[int]:
        return self.system(system) + self.rest[i]

    def request(self, i: int, new_tokens: int | None = None, system: int = 0) -> Request:
        pixels, size, _ = self.images[i]
        sampling = SamplingParams(max_new_tokens=new_tokens or self.new_tokens, stop_token_ids=())
        return Request(self.prompt(i, system), sampling, image_mask=list(self.masks[i]),
                       images=ImageInput(pixels, (size,)))
