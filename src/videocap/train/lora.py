"""LoRA for fine-tuning an existing checkpoint: low-rank updates on the decoder's linear layers, merged at save.

Each adapted weight W becomes W + (alpha / r) B A through a torch parametrization (A: (r, in), normal; B:
(out, r), zero, so training starts from the checkpoint's exact function). The base weights are frozen; the
adapters and the projector train. `merge` folds the adapters into plain weights, so saved checkpoints are
ordinary llava-hf files any loader reads.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class LoRADelta(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, like: torch.Tensor):
        super().__init__()
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32, device=like.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32, device=like.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_B @ self.lora_A).to(weight.dtype) * self.scale


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Adapt the decoder's linear layers of `model` in place; returns the parameters left trainable."""
    assert rank >= 1
    alpha = float(alpha if alpha is not None else 2 * rank)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if name.startswith("llm.") and name.rsplit(".", 1)[-1] in TARGETS and isinstance(module, nn.Linear):
            delta = LoRADelta(module.out_features, module.in_features, rank, alpha, module.weight)
            parametrize.register_parametrization(module, "weight", delta)
    projector = list(model.projector.parameters()) if hasattr(model, "projector") else []
    for p in projector:
        p.requires_grad_(True)
    return [p for n, p in model.named_parameters() if "lora_" in n] + projector


def has_lora(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (in place) and return `model`."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
