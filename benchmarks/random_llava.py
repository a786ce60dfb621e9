"""LLaVA-NeXT at ShareGPT4Video-8B's real shapes with random weights, built straight on the device (no checkpoint):
videocap's model, and transformers' LlavaNextForConditionalGeneration holding the very same weight tensors (shared
memory, so both fit on one GPU beside a KV cache). Shapes come from benchmarks/llava_8b.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import llava_8b

from videocap.models.llava_next.config import LlavaNextConfig, parse_config
from videocap.models.llava_next.model import LlavaNext
from videocap.models.llava_next.weights import LLAVA_HF_V5
from videocap.weights.loader import build_on_meta, loadable_tensors


def model_config(tiny: bool) -> LlavaNextConfig:
    text, vision = llava_8b.shapes(tiny)
    return parse_config({"model_type": "llava_next", "text_config": text, "vision_config": vision,
                         "image_grid_pinpoints": llava_8b.PINPOINTS})


def random_model(cfg: LlavaNextConfig, device: torch.device, dtype: torch.dtype) -> LlavaNext:
    """videocap's LlavaNext with random weights, built in place (`fill_random`)."""
    return fill_random(build_on_meta(lambda: LlavaNext(cfg), device, dtype), device)


def fill_random(model: nn.Module, device: torch.device) -> nn.Module:
    """Random weights in place: norms 1, biases 0, matrices N(0, 1/fan_in) so activations keep unit scale through
    the layers and the logits are spread (std ≈ 1), not degenerate (LoRA
    branches included: their cost is real); other vectors N(0, 0.02)."""
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            for name, p in module.named_parameters(recurse=False):
                if is_norm:
                    p.fill_(1.0 if name == "weight" else 0.0)
                elif name == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.02, generator=gen)
    return model.eval()


def transformers_model(model: LlavaNext, tiny: bool, device: torch.device) -> nn.Module:
    """transformers' LlavaNextForConditionalGeneration holding `model`'s weight tensors themselves (no copy: a
    transformers parameter is the videocap parameter, or the row block of a fused one, under the key map of
    weights.py). Buffers (rotary frequencies in float32, CLIP position ids) are computed as transformers does."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig as HFConfig, LlavaNextForConditionalGeneration

    text, vision = llava_8b.shapes(tiny)
    cfg = HFConfig(text_config=LlamaConfig(**text), vision_config=CLIPVisionConfig(**vision),
                   image_grid_pinpoints=llava_8b.PINPOINTS, image_token_index=text["vocab_size"] - 1,
                   vision_feature_layer=-2, vision_feature_select_strategy="default")
    with torch.device("meta"):
        hf = LlavaNextForConditionalGeneration(cfg).eval()
    ours, _ = loadable_tensors(model)
    names = [name for name, _ in hf.named_parameters()]
    missing = [name for name in names if ours.get(LLAVA_HF_V5.rename(name)) is None]
    assert not missing, f"transformers parameters videocap's model does not have: {missing}"
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        tensor = ours[LLAVA_HF_V5.rename(name)]
        assert tensor.shape == hf.get_parameter(name).shape, f"{name}: {tuple(tensor.shape)}"
        hf.get_submodule(prefix)._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    for module in hf.modules():
        for name, buf in list(module._buffers.items()):
            if name in ("inv_freq", "original_inv_freq"):
                assert module.rope_type == "default", module.rope_type
                value, _ = module.compute_default_rope_parameters(module.config)  # float32, as from_pretrained keeps it
            elif name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape)
            else:
                raise AssertionError(f"transformers buffer {name} of {type(module).__name__}: recompute it here")
            module._buffers[name] = value.to(device)
    return hf

