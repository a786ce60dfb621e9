"""From an image and a conversation to an engine `Request` for ShareCaptioner-Video (InternLM-XComposer2-4KHD).

Pixels: `hd.prepare` at the request's hd_num (the captioner demo: 16 for the fast mode's strip, 9 for a first
frame or a frame pair; the processor's default, 16, for questions about a video). Tokens: [BOS], one position per
image embedding (`hd.num_image_tokens` of the image's grid), then the chat text (prompt.py); text alone is
[BOS] + the chat text. The methods are those of LlavaNextProcessor, which the tasks and the chat call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image

from videocap.engine.request import ImageInput, Request, SamplingParams
from videocap.models.xcomposer2 import hd, prompt
from videocap.models.xcomposer2.config import XComposer2Config

DEFAULT_HD_NUM = 16  # the demo's fast captioning: what a whole video's strip is seen at


@dataclass(frozen=True)
class PreparedImage:
    input: ImageInput  # sizes holds the image's (cols, rows) HD grid
    num_tokens: int


class XComposer2Processor:
    def __init__(self, cfg: XComposer2Config, tokenizer: prompt.InternLM2Tokenizer, hd_num: int = DEFAULT_HD_NUM):
        self.cfg, self.tokenizer, self.hd_num = cfg, tokenizer, hd_num
        self.side = cfg.vision.patches_per_side // 2  # tokens per tile side after the 2x2 merge
        self.stop_ids = prompt.stop_token_ids(tokenizer)
        self.pad_id = tokenizer.unk_id  # any valid id: image positions take their embeddings from the image

    def prepare_image(self, image: Image.Image, hd_num: int | None = None) -> PreparedImage:
        pixels, grid = hd.prepare(image, self.hd_num if hd_num is None else hd_num)
        return PreparedImage(ImageInput(pixels, (grid,)), hd.num_image_tokens(*grid, side=self.side))

    def prompt_ids(self, turns: list[prompt.Turn], image_tokens: int = 0) -> tuple[list[int], list[bool]]:
        """The ids the reference feeds and the image mask: [BOS] + image positions + ids of the chat text."""
        text = self.tokenizer.encode(prompt.build_prompt(turns))
        ids = [self.tokenizer.bos_id] + [self.pad_id] * image_tokens + text
        return ids, [False] + [True] * image_tokens + [False] * len(text)

    def request(
        self,
        turns: list[prompt.Turn],
        sampling: SamplingParams,
        *,
        image: PreparedImage | None,
        image_embeds: torch.Tensor | None = None,
        preamble: bool = False,
    ) -> Request:
        """The request for the assistant's next answer in `turns`, about `image` (its pixels are encoded by the
        engine; `image_embeds` reuses an earlier encoding) or about text alone (`image=None`). `preamble` is
        accepted for the tasks' sake: this model has none."""
        if not sampling.stop_token_ids:
            sampling = replace(sampling, stop_token_ids=self.stop_ids)
        if image is None:
            assert image_embeds is None, "image embeddings without an image"
            ids, _ = self.prompt_ids(turns)
            return Request(ids, sampling)
        ids, mask = self.prompt_ids(turns, image.num_tokens)
        return Request(ids, sampling, image_mask=mask, images=image.input if image_embeds is None else None,
                       image_embeds=image_embeds)

    def decode(self, ids: list[int]) -> str:
        return prompt.answer_text(self.tokenizer, ids)
