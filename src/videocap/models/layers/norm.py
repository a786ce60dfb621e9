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
        # Normalised in float32 inside the kernel and rounded to the input dtype before the scale, as the
        # checkpoints were trained (HF Llama: x.float() → normalise → .to(dtype) → * weight), in one kernel.
        return self.weight * torch.rms_norm(x, (x.shape[-1],), None, self.eps)
