"""Putting image embeddings into a sequence of token embeddings: what every vision-language family here does
before its decoder (the image positions hold placeholder ids; their rows come from the vision side, in order)."""

from __future__ import annotations

import torch


def splice_images(x: torch.Tensor, image_embeds: torch.Tensor | None, image_mask: torch.Tensor | None) -> torch.Tensor:
    """(T, hidden) token embeddings with the rows where `image_mask` is set replaced, in order, by `image_embeds`."""
    if image_mask is None or image_embeds is None:
        return x
    assert int(image_mask.sum()) == image_embeds.shape[0], "one image embedding per image position"
    return x.masked_scatter(image_mask[:, None], image_embeds.to(x.dtype))
