"""RMSNorm as Llama-family checkpoints define it: normalise in float32, scale in the input's dtype."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.rms_norm(x.float(), (x.shape[-1],), None, self.eps)  # one fused kernel where torch has it
        return self.weight * h.to(x.dtype)  # the cast before the scale is what the checkpoints were trained with
