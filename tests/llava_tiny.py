"""Tiny random LLaVA-NeXT checkpoints built with transformers (the oracle) and saved in each layout videocap reads.

Weights are redrawn larger than transformers' init (std 0.02 makes every logit nearly equal, so a wrong layer
would still "match"); norms stay near 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tokenizers_util import TINY_VOCAB, make_tiny_tokenizer

from videocap.models.llava_next.weights import LLAVA_HF_V4, LLAVA_HF_V5, LLAVA_ORIGINAL

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
VOCAB = TINY_VOCAB + 16  # room for the llava-hf image token id
IMAGE_TOKEN = VOCAB - 1
LAYOUTS = ("hf5-save", "hf4", "hf5", "llava")


def make_hf_model(seed: int = 0, head_scale: float = 1.0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        bos_token_id=TINY_VOCAB - 5, eos_token_id=TINY_VOCAB - 4,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=336,
        patch_size=14, projection_dim=16,
    )
    cfg = LlavaNextConfig(
        vision_config=vision, text_config=text, image_grid_pinpoints=PINPOINTS, image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if "embed" in name or "newline" in name else 0.12))
        model.lm_head.weight.mul_(head_scale)
    return model


def save_layout(model, out: Path, layout: str) -> Path:
    """Write `model` as checkpoint dir `out` in `layout` (see LAYOUTS), with the tiny tokenizer beside it."""
    out.mkdir(parents=True, exist_ok=True)
    make_tiny_tokenizer(out)
    if layout == "hf5-save":
        model.save_pretrained(out)
        return out
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    if layout == "hf5":  # transformers 5 module names, CLIP's vision_model. kept
        state = {k.replace("model.vision_tower.", "model.vision_tower.vision_model."): v for k, v in state.items()}
    elif layout == "hf4":
        state = {LLAVA_HF_V4.unrename(LLAVA_HF_V5.rename(k)): v for k, v in state.items()}
    elif layout == "llava":
        state = {LLAVA_ORIGINAL.unrename(LLAVA_HF_V5.rename(k)): v for k, v in state.items()}
        config = llava_original_config(model, out)
    else:
        raise ValueError(layout)
    shards = split(state, 3)
    index = {"metadata": {}, "weight_map": {}}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        index["weight_map"].update({k: name for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    (out / "config.json").write_text(json.dumps(config))
    return out


def split(state: dict, n: int) -> list[dict]:
    keys = list(state)
    step = -(-len(keys) // n)
    return [{k: state[k] for k in keys[i : i + step]} for i in range(0, len(keys), step)]


def llava_original_config(model, out: Path) -> dict:
    """The llava_llama config.json the seed writes: Llama fields on top, mm_* fields, a local CLIP path."""
    clip_dir = out / "clip-vision"
    model.config.vision_config.save_pretrained(clip_dir)
    t = model.config.text_config
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
        "vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads, "rope_theta": 500000.0, "rope_scaling": None,
        "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings, "hidden_act": "silu",
        "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "tie_word_embeddings": False,
        "mm_vision_tower": str(clip_dir), "mm_hidden_size": 32, "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": str([tuple(p) for p in PINPOINTS]), "mm_patch_merge_type": "spatial_unpad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tokenizer_padding_side": "right",
    }
