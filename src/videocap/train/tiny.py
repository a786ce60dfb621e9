"""The videocap-tiny preset: a LLaVA-NeXT model small enough to ship in the package and caption on a laptop CPU.

The architecture is the family's own (CLIP ViT → mlp2x_gelu projector → anyres spatial_unpad with image_newline →
Llama decoder), only narrower: 112 px tiles of 14 px patches (64 tokens a tile) and grid pinpoints of 2 x 2 to
4 x 4 tiles — the default pinpoints' shapes at 2/3 of their size in tiles of a third — so a 16-frame grid
becomes a 448 x 448 canvas of 16 tiles plus the base view (~850 image tokens). About 6.5 M parameters, stored
in bf16 (13 MB). `hf_config` writes the llava-hf config.json transformers 5 reads; `build` makes a freshly
initialised model from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from videocap.models.llava_next.config import LlavaNextConfig, parse_config
from videocap.models.llava_next.model import LlavaNext


@dataclass(frozen=True)
class TinyPreset:
    tile: int = 112
    patch: int = 14
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    vision_mlp: int = 768
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 640
    max_positions: int = 4096
    pinpoints: tuple[tuple[int, int], ...] = ((224, 448), (448, 224), (448, 448), (672, 224), (224, 672))

    def __post_init__(self):
        if self.tile % self.patch or any(w % self.tile or h % self.tile for w, h in self.pinpoints):
            raise ValueError("tiles must be whole patches and pinpoints whole tiles")


TINY = TinyPreset()
# For tests: the same shapes of everything, a few thousand times cheaper (a 16-frame grid is ~90 image tokens).
DEBUG = TinyPreset(tile=56, patch=14, vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64, hidden=64,
                   layers=2, heads=2, kv_heads=1, mlp=128, pinpoints=((112, 224), (224, 112), (224, 224)))
# Each frame of a 16-frame grid at 1.5x the side (a 192 x 144 frame at ~140 px instead of ~94; the generator's
# objects then span about 1.5 patches instead of one): LLaVA-NeXT's own pinpoint shapes in 112 px tiles, up to
# 6 x 6 tiles, ~2,400 image tokens.
TINY_HD = TinyPreset(pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)))
PRESETS = {"tiny": TINY, "tiny-hd": TINY_HD, "debug": DEBUG}


def hf_config(preset: TinyPreset, vocab_size: int, bos_id: int, eos_ids: list[int], image_token_id: int,
              pad_id: int) -> dict:
    """The llava-hf config.json (what `LlavaNextForConditionalGeneration.save_pretrained` writes)."""
    text = {
        "model_type": "llama", "vocab_size": vocab_size, "hidden_size": preset.hidden,
        "intermediate_size": preset.mlp, "num_hidden_layers": preset.layers, "num_attention_heads": preset.heads,
        "num_key_value_heads": preset.kv_heads, "head_dim": preset.hidden // preset.heads, "hidden_act": "silu",
        "max_position_embeddings": preset.max_positions, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": False, "bos_token_id": bos_id, "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
    }
    vision = {
        "model_type": "clip_vision_model", "hidden_size": preset.vision_hidden, "intermediate_size": preset.vision_mlp,
        "num_hidden_layers": preset.vision_layers, "num_attention_heads": preset.vision_heads,
        "image_size": preset.tile, "patch_size": preset.patch, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": preset.vision_hidden, "num_channels": 3,
    }
    return {
        "architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
        "text_config": text, "vision_config": vision, "image_grid_pinpoints": [list(p) for p in preset.pinpoints],
        "image_token_index": image_token_id, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True, "tie_word_embeddings": False, "dtype": "bfloat16",
    }


def build(config: dict, seed: int = 0) -> tuple[LlavaNextConfig, LlavaNext]:
    """A freshly initialised model for `config` (fp32, CPU): normal(0, 0.02) weights, zero biases, unit norms."""
    cfg = parse_config(config)
    torch.manual_seed(seed)
    model = LlavaNext(cfg)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") and p.dim() == 1 and "vision" not in name:
            nn.init.ones_(p)  # RMSNorm
    nn.init.normal_(model.vision.embeddings.class_embedding, std=0.02)
    nn.init.normal_(model.image_newline, std=0.02)
    return cfg, model
