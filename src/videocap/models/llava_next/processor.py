"""From a grid image and a conversation to an engine `Request` for the LLaVA-NeXT family.

Pixels: anyres tiling (anyres.py). Tokens: the llava_llama_3 prompt tokenized as the seed does (prompt.py), with
the one image sentinel expanded into as many image positions as the image yields embeddings.

Two image views:
- `ImageView.ANYRES` (default): base view + tiles, spatial_unpad with `image_newline` — the architecture as trained
  and as transformers runs it (about 2,000 image tokens for a 16-frame grid).
- `ImageView.BASE`: the 336 px base view alone, 576 tokens, no newline. The seed's run.py and web demo pass the
  tiles as a 4-D tensor, which LLaVA's code routes past the anyres merge, keeping only the first (base) view;
  choose this to reproduce their answers exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

import torch
from PIL import Image
from tokenizers import Tokenizer

from videocap.engine.request import ImageInput, Request, SamplingParams
from videocap.models.llava_next import anyres, prompt
from videocap.models.llava_next.config import LlavaNextConfig


class ImageView(Enum):
    ANYRES = "anyres"
    BASE = "base"


@dataclass(frozen=True)
class PreparedImage:
    input: ImageInput
    num_tokens: int


class LlavaNextProcessor:
    def __init__(self, cfg: LlavaNextConfig, tokenizer: Tokenizer, view: ImageView = ImageView.ANYRES):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.view = view
        self.stop_ids = tuple(prompt.stop_token_ids(tokenizer, cfg.eos_token_ids))
        self.pad_id = 0  # any valid id: image positions take their embeddings from the image

    def prepare_image(self, image: Image.Image) -> PreparedImage:
        tile = self.cfg.vision.image_size
        if self.view is ImageView.BASE:
            pixels = anyres.normalize([image.convert("RGB").resize((tile, tile), anyres.RESAMPLE)])
            return PreparedImage(ImageInput(pixels, (None,)), self.cfg.tokens_per_tile)
        pixels = anyres.process_anyres(image, self.cfg.grid_pinpoints, tile)
        n = anyres.image_token_count(image.size, self.cfg.grid_pinpoints, tile, self.cfg.vision.patch_size)
        return PreparedImage(ImageInput(pixels, (image.size,)), n)

    def request(
        self,
        turns: list[prompt.Turn],
        sampling: SamplingParams,
        *,
        image: PreparedImage | None,
        image_embeds: torch.Tensor | None = None,
        preamble: bool = True,
    ) -> Request:
        """The request for the assistant's next answer in `turns`. Give `image` (its pixels are encoded by the
        engine) and, to reuse an earlier encoding, `image_embeds` (then the pixels are not sent).
        `image=None` asks about text alone: no image slot, no preamble (summaries, re-captioning)."""
        if image is None:
            assert image_embeds is None, "image embeddings without an image"
            ids = prompt.tokenize_prompt(self.tokenizer, prompt.build_prompt(turns, image=False))
            if not sampling.stop_token_ids:
                sampling = replace(sampling, stop_token_ids=self.stop_ids)
            return Request(ids, sampling)
        ids = prompt.tokenize_prompt(self.tokenizer, prompt.build_prompt(turns, preamble=preamble))
        tokens: list[int] = []
        mask: list[bool] = []
        for token in ids:
            if token == prompt.IMAGE_TOKEN_ID:
                tokens += [self.pad_id] * image.num_tokens
                mask += [True] * image.num_tokens
            else:
                tokens.append(token)
                mask.append(False)
        if not sampling.stop_token_ids:
            sampling = replace(sampling, stop_token_ids=self.stop_ids)
        return Request(
            tokens, sampling, image_mask=mask, images=image.input if image_embeds is None else None,
            image_embeds=image_embeds,
        )

    def decode(self, ids: list[int]) -> str:
        return prompt.decode(self.tokenizer, ids)
