"""InternLM-XComposer2-4KHD (ShareCaptioner-Video): HD vision (vision.py) → InternLM2 decoder with Partial LoRA
(decoder.py) → `output` head.

The engine's interface, as the LLaVA-NeXT family has it: `encode_images` (all tiles → one embedding sequence per
image; an image's "size" is its (cols, rows) HD grid, None for a lone 336 px tile), `forward` (packed ids with the
image embeddings spliced in where `image_mask` is set, positions, attention metadata, the caller's KV caches →
final hidden states) and `compute_logits`. The image mask also selects where the LoRA branches apply, as the
reference's `im_mask` does; decode steps carry none. No generation loop, no cache allocation.
"""

from __future__ import annotations

import torch
from torch import nn

from videocap.models.layers.attention import AttnMetadata
from videocap.models.layers.lora import image_rows
from videocap.models.layers.splice import splice_images
from videocap.models.xcomposer2.config import XComposer2Config
from videocap.models.xcomposer2.decoder import InternLM2Decoder
from videocap.models.xcomposer2.vision import XComposerVision


class XComposer2(nn.Module):
    def __init__(self, cfg: XComposer2Config):
        super().__init__()
        self.cfg = cfg
        self.vision = XComposerVision(cfg)
        self.llm = InternLM2Decoder(cfg)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output head with the input embeddings when the config says so (again after `to_empty`)."""
        if self.cfg.tie_word_embeddings:
            self.output.weight = self.llm.tok_embeddings.weight

    def kv_spec(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim): what the engine's KV cache must hold."""
        return self.cfg.num_layers, self.cfg.num_kv_heads, self.cfg.head_dim

    def max_context(self) -> int:
        return self.cfg.max_position_embeddings

    def tiles_per_image(self, grid: tuple[int, int] | None) -> int:
        return XComposerVision.tiles(grid)

    def encode_images(self, pixels: torch.Tensor, grids: list[tuple[int, int] | None]) -> list[torch.Tensor]:
        """Tiles (N, 3, 336, 336) of every image, each image's global view first (hd.prepare), and each image's
        (cols, rows) grid → one (tokens_i, hidden) embedding sequence per image."""
        return self.vision(pixels, grids)

    def embed(
        self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T,) ids → (T, hidden), with rows where `image_mask` is set taken, in order, from `image_embeds`."""
        return splice_images(self.llm.tok_embeddings(input_ids), image_embeds, image_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttnMetadata,
        kv_caches: list[torch.Tensor],
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed (T,) new tokens of a batch → (T, hidden) final hidden states; keys/values go to `kv_caches`.
        Image positions get the image embeddings and the Partial-LoRA branches."""
        embeds = self.embed(input_ids, image_embeds, image_mask)
        return self.llm(embeds, positions, meta, kv_caches, image_rows(image_mask))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)  # (T, vocab)
