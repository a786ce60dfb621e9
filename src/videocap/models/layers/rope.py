"""Rotary position embeddings: inverse frequencies for each scaling the supported checkpoints use, and their
application to queries and keys at arbitrary (packed, per-token) positions.

Holds no buffers: a model built on the meta device and loaded from a checkpoint needs nothing recomputed, and the
frequencies (head_dim / 2 floats) are rebuilt per device on first use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeScaling:
    """`rope_type` "default" (none), "linear" (positions divided by `factor`) or "llama3" (Llama 3.1's
    wavelength-dependent scaling, with its low/high frequency factors and original context length)."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"unsupported rope scaling type {self.rope_type!r} (supported: default, linear, llama3)")


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """(head_dim / 2,) float32 inverse frequencies."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling.rope_type == "linear":
        return inv / scaling.factor
    if scaling.rope_type == "llama3":
        low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    return inv


class Rotary:
    """cos/sin tables for given positions; `apply` rotates (T, heads, head_dim) queries or keys."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling = RopeScaling()):
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self.inv_freq: torch.Tensor | None = None  # built on first use: models are constructed on the meta device

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq is None or self.inv_freq.device != positions.device:
            with torch.device("cpu"):
                inv = inverse_frequencies(self.head_dim, self.theta, self.scaling)
            self.inv_freq = inv.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, head_dim/2), float32 as trained
        angles = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim): the half-split layout of HF Llama weights
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos[:, None, :] + rotated * sin[:, None, :]  # (T, H, D)
