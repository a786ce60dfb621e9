"""Feed-forward blocks: the gated SwiGLU of Llama decoders and the two-layer MLPs of CLIP and LLaVA projectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videocap.models.layers import fused


class FusedLinear(nn.Linear):
    """Several projections of the same input as one matmul (one kernel instead of several per layer and step).

    Checkpoints store the parts separately; `checkpoint_views()` gives each part's rows under its own name
    (relative to the parent module), and the loader copies the stored tensors into those views.
    """

    def __init__(self, d_in: int, parts: dict[str, int], bias: bool = False):
        super().__init__(d_in, sum(parts.values()), bias=bias)
        self.parts = parts

    def checkpoint_views(self) -> dict[str, torch.Tensor]:
        views, start = {}, 0
        for name, rows in self.parts.items():
            views[f"{name}.weight"] = self.weight[start : start + rows]
            if self.bias is not None:
                views[f"{name}.bias"] = self.bias[start : start + rows]
            start += rows
        return views


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up run as one fused projection."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = FusedLinear(hidden, {"gate_proj": intermediate, "up_proj": intermediate})
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor, fused_act: bool = False) -> torch.Tensor:
        """`fused_act`: silu(gate) * up in one Triton kernel (CUDA decode; see fused.py)."""
        if fused_act:
            return self.down_proj(fused.silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


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
