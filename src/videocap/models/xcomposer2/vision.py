"""IXC2-4KHD's vision side: CLIP ViT tiles → 2x2 token merge → global view and stitched sub-tiles with learned
separators → `vision_proj` MLP. One embedding sequence per image, in the order the LLM was trained on.

Per image of (cols, rows) sub-tiles (hd.py makes the tiles; tile 0 is the global view), with S = 12 tokens a side
(24 x 24 patches merged 2 x 2) and every token 4 x the CLIP width:
- the global view's S x S tokens row by row, `sub_GN` after each row (the reference uses `sub_GN` here, not
  `glb_GN`);
- one `glb_GN`;
- the sub-tiles stitched into one (rows*S) x (cols*S) map, row by row, `sub_GN` after each row;
- then `vision_proj` (Linear, exact GELU, Linear) over all of it, separators included.
That is `hd.num_image_tokens(cols, rows)` embeddings. A grid of None is a lone tile: its S*S projected tokens, no
separators (the engine's memory probe). Features are CLIP's last hidden layer before the post-layernorm, CLS
dropped; the merged token at (i, j) concatenates the patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1).

`VISION_KEYS` maps the trust_remote_code checkpoint's names (`vit.vision_tower.vision_model.*`, `vision_proj.*`,
`plora_glb_GN`, `plora_sub_GN`) onto this module held as `vision` by the model.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from videocap.models.layers.clip import ClipVisionConfig, ClipVisionTransformer
from videocap.models.xcomposer2.hd import num_image_tokens
from videocap.weights.loader import KeyMap

FEATURE_LAYER = -1  # CLIPVisionTower.select_layer: hidden_states[-1], the last layer's output before post_layernorm

# Checkpoint prefix → videocap name (relative to the model root, which holds XComposerVision as `vision`).
VISION_RULES: tuple[tuple[str, str], ...] = (
    ("vit.vision_tower.vision_model.", "vision.clip."),
    ("vision_proj.", "vision.vision_proj."),
    ("plora_glb_GN", "vision.glb_GN"),
    ("plora_sub_GN", "vision.sub_GN"),
)
VISION_KEYS = KeyMap(name="InternLM-XComposer2 vision (trust_remote_code names)", rules=VISION_RULES)
# Checkpoint tensors that are derived, not learned: CLIP's position_ids buffer, which transformers before 4.31
# saved with the weights (later versions do not).
VISION_IGNORED_SUFFIXES = ("vision_model.embeddings.position_ids",)
# Parameters a checkpoint may lack: the post-layernorm, which the features never pass through. The XComposer2
# training code replaces it by nn.Identity when it trains the ViT (so it is not saved), and lmdeploy allocates it
# empty for these checkpoints; it is loaded when present.
VISION_OPTIONAL_PREFIXES = ("vision.clip.post_layernorm.",)


class VisionHost(Protocol):
    """What XComposerVision reads from the family's config."""

    vision: ClipVisionConfig
    hidden_size: int


class XComposerVision(nn.Module):
    def __init__(self, cfg: VisionHost):
        super().__init__()
        v = cfg.vision
        if v.patches_per_side % 2:
            raise ValueError(f"the 2x2 token merge needs an even number of patches a side, got {v.patches_per_side}")
        self.side = v.patches_per_side // 2
        width = 4 * v.hidden_size
        self.clip = ClipVisionTransformer(v)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, width))  # the checkpoint's shapes
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.vision_proj = nn.Sequential(
            nn.Linear(width, cfg.hidden_size), nn.GELU(), nn.Linear(cfg.hidden_size, cfg.hidden_size)
        )

    @staticmethod
    def tiles(grid: tuple[int, int] | None) -> int:
        return 1 if grid is None else 1 + grid[0] * grid[1]

    def merge(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, P*P, C) patch features → (N, P/2, P/2, 4C): each 2x2 block of patches as one token."""
        n, _, c = feats.shape
        s = self.side
        return feats.reshape(n, s, 2, s, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s, s, 4 * c)

    def arrange(self, merged: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """One image's merged tiles (1 + cols*rows, S, S, D) → its (tokens, D) sequence with separators."""
        s, d = self.side, merged.shape[-1]
        if grid is None:
            return merged[0].reshape(s * s, d)
        cols, rows = grid
        sub_gn = self.sub_GN.reshape(1, 1, d).to(merged.dtype)
        glb = torch.cat([merged[0], sub_gn.expand(s, 1, d)], dim=1).reshape(-1, d)  # (S*(S+1), D)
        stitched = merged[1:].reshape(rows, cols, s, s, d).permute(0, 2, 1, 3, 4).reshape(rows * s, cols * s, d)
        sub = torch.cat([stitched, sub_gn.expand(rows * s, 1, d)], dim=1).reshape(-1, d)
        return torch.cat([glb, self.glb_GN.reshape(1, d).to(merged.dtype), sub], dim=0)

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int] | None]) -> list[torch.Tensor]:
        """All images' tiles (N, 3, 336, 336), each image's global view first, and each image's (cols, rows) grid
        (None: one lone tile) → one (tokens_i, hidden) embedding sequence per image."""
        counts = [self.tiles(g) for g in grids]
        assert sum(counts) == pixels.shape[0], f"{pixels.shape[0]} tiles for images needing {counts}"
        feats = self.clip.features(pixels, FEATURE_LAYER)[:, 1:]  # (N, P*P, C): CLS dropped
        merged = self.merge(feats)
        seqs = [self.arrange(m, g) for m, g in zip(merged.split(counts), grids)]
        for seq, g in zip(seqs, grids):
            expected = self.side**2 if g is None else num_image_tokens(*g, side=self.side)
            assert seq.shape[0] == expected, f"{seq.shape[0]} image tokens for grid {g}, expected {expected}"
        out = self.vision_proj(torch.cat(seqs, dim=0))
        return list(out.split([s.shape[0] for s in seqs]))
