"""Partial LoRA (InternLM-XComposer2's PLoRA): a low-rank branch added to a linear layer's output only at chosen
token rows — the image positions — so text is computed by the plain weights and image tokens by plain + LoRA.

`PartialLoRA` is the branch alone (`Plora_A`: d_in → rank, `Plora_B`: rank → d_out, no biases, scaled by
alpha / rank, the checkpoint's own names), applied to an output the caller computed: it fits fused projections,
where one matmul yields several layers' outputs and each layer's branch adds to its own slice of columns.
`LoRALinear` is a linear layer that carries its branch. Rows are given as an index tensor (None: no image token
in the step, nothing added — every decode step and text-only prefill), so the plain path stays exactly as fast.

Arithmetic order as the reference's PLoRA.forward: the base output in the model dtype, then
`out[rows] += Plora_B(Plora_A(x[rows])) * scaling`, each product rounded to the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PartialLoRA(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        self.Plora_A, self.Plora_B, self.scaling = _branch(d_in, d_out, rank, alpha)

    def add_(self, out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """`out` (T, d_out), possibly a column slice of a fused output, gets the branch of `x` (T, d_in) added at
        `rows` (n,) in place; returns `out`."""
        return _add_branch(out, x, rows, self.Plora_A, self.Plora_B, self.scaling)


class LoRALinear(nn.Linear):
    """A linear layer with its own partial LoRA branch (checkpoint names: `weight`, `Plora_A.weight`, ...)."""

    def __init__(self, d_in: int, d_out: int, rank: int, alpha: float, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)
        self.Plora_A, self.Plora_B, self.scaling = _branch(d_in, d_out, rank, alpha)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return _add_branch(F.linear(x, self.weight, self.bias), x, rows, self.Plora_A, self.Plora_B, self.scaling)


def _branch(d_in: int, d_out: int, rank: int, alpha: float) -> tuple[nn.Linear, nn.Linear, float]:
    if rank < 1 or not alpha > 0:
        raise ValueError(f"a LoRA branch needs rank >= 1 and alpha > 0, got rank {rank}, alpha {alpha}")
    return nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False), alpha / rank


def _add_branch(out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None, a: nn.Linear, b: nn.Linear,
                scaling: float) -> torch.Tensor:
    if rows is not None:
        delta = b(a(x.index_select(0, rows))) * scaling  # (n, d_out), each product in the model dtype
        out.index_add_(0, rows, delta.to(out.dtype))
    return out


def image_rows(image_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(T,) bool image mask → (n,) int64 row indices of its image positions; None when there are none to add to."""
    if image_mask is None:
        return None
    rows = image_mask.nonzero().squeeze(1)
    return rows if rows.numel() else None
