"""Feed-forward blocks: the gated SwiGLU of Llama decoders and the two-layer MLPs of CLIP and LLaVA projectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's GELU approximation."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu, "silu": F.silu}


class TwoLayerMLP(nn.Module):
    """Linear → activation → Linear, with the parameter names given (CLIP: fc1/fc2; projector: linear_1/linear_2)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, act: str, names: tuple[str, str] = ("fc1", "fc2")):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r} (supported: {', '.join(ACTIVATIONS)})")
        self.act = ACTIVATIONS[act]
        self.names = names
        self.add_module(names[0], nn.Linear(d_in, d_hidden))
        self.add_module(names[1], nn.Linear(d_hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = (getattr(self, n) for n in self.names)
        return second(self.act(first(x)))
