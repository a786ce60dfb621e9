"""The LLaVA-NeXT model: CLIP ViT → mlp2x_gelu projector → spatial_unpad merge with `image_newline` → Llama.

Two entry points, as the engine needs them: `encode_images` (pixels of all tiles → one embedding sequence per
image) and `forward` (packed token ids with image embeddings spliced at the image positions, per-token positions,
attention metadata and the caller's KV caches → final hidden states); `compute_logits` applies the output head to
the rows the caller wants. No generation loop, no cache allocation.
"""

from __future__ import annotations

import torch
from torch import nn

from videocap.models.layers.attention import AttnMetadata
from videocap.models.layers.clip import ClipVisionTransformer
from videocap.models.layers.llama import LlamaDecoder
from videocap.models.layers.mlp import TwoLayerMLP
from videocap.models.layers.splice import splice_images
from videocap.models.llava_next import anyres
from videocap.models.llava_next.config import LlavaNextConfig


class LlavaNext(nn.Module):
    def __init__(self, cfg: LlavaNextConfig):
        super().__init__()
        self.cfg = cfg
        d_model = cfg.text.hidden_size
        self.vision = ClipVisionTransformer(cfg.vision)
        self.projector = TwoLayerMLP(cfg.vision.hidden_size, d_model, d_model, cfg.projector_act, ("linear_1", "linear_2"))
        self.image_newline = nn.Parameter(torch.zeros(d_model))
        self.llm = LlamaDecoder(cfg.text)
        self.lm_head = nn.Linear(d_model, cfg.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the output head with the input embeddings when the checkpoint says so (again after any
        re-materialisation, such as `to_empty`, which gives every parameter its own storage)."""
        if self.cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.llm.embed_tokens.weight

    def kv_spec(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim): what the engine's KV cache must hold."""
        t = self.cfg.text
        return t.num_layers, t.num_kv_heads, t.head_dim

    def max_context(self) -> int:
        return self.cfg.text.max_position_embeddings

    def tiles_per_image(self, size: tuple[int, int] | None) -> int:
        if size is None:
            return 1
        cols, rows = anyres.grid_shape(size, self.cfg.grid_pinpoints, self.cfg.vision.image_size)
        return 1 + cols * rows

    def encode_images(self, pixels: torch.Tensor, sizes: list[tuple[int, int] | None]) -> list[torch.Tensor]:
        """All tiles of all images, (N, 3, S, S) in `anyres.process_anyres` order, and each image's original
        (width, height) → one (tokens_i, hidden) embedding sequence per image.

        A size of None means the image is its base view alone (one tile): its embeddings are that view's patch
        features with no newline, which is what the seed's run.py and web demo feed (see processor.py)."""
        counts = [self.tiles_per_image(size) for size in sizes]
        assert sum(counts) == pixels.shape[0], f"{pixels.shape[0]} tiles for images needing {counts}"
        feats = self.vision.features(pixels, self.cfg.vision_feature_layer)  # (N, 1 + P, C_vision)
        if self.cfg.drop_cls:
            feats = feats[:, 1:]
        feats = self.projector(feats)  # (N, P, hidden)
        return [f[0] if size is None else self.merge(f, size) for f, size in zip(feats.split(counts), sizes)]

    def merge(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """spatial_unpad: (1 + rows*cols, P, D) tile features → base view tokens, then the tiles' feature map
        stitched, cropped to the image's own aspect, one `image_newline` after each row."""
        base, tiles = feats[0], feats[1:]
        side = self.cfg.vision.patches_per_side
        cols, rows = anyres.grid_shape(size, self.cfg.grid_pinpoints, self.cfg.vision.image_size)
        grid = tiles.view(rows, cols, side, side, -1)  # (tile row, tile col, patch row, patch col, D)
        grid = grid.permute(4, 0, 2, 1, 3).reshape(-1, rows * side, cols * side)  # (D, H, W)
        grid = anyres.unpad(grid, size)  # (D, h, w)
        newline = self.image_newline[:, None, None].expand(-1, grid.shape[1], 1).to(grid.dtype)
        grid = torch.cat([grid, newline], dim=2)  # (D, h, w + 1)
        return torch.cat([base, grid.flatten(1).transpose(0, 1)], dim=0)  # (P + h * (w + 1), D)

    def embed(
        self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None, image_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T,) ids → (T, hidden), with rows where `image_mask` is set taken, in order, from `image_embeds`."""
        return splice_images(self.llm.embed_tokens(input_ids), image_embeds, image_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttnMetadata,
        kv_caches: list[torch.Tensor],
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed (T,) new tokens of a batch → (T, hidden) final hidden states; keys/values go to `kv_caches`."""
        return self.llm(self.embed(input_ids, image_embeds, image_mask), positions, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)  # (T, vocab)
