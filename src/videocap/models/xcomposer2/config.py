"""`XComposer2Config`: InternLM-XComposer2-4KHD's configuration (ShareCaptioner-Video), parsed once from the
checkpoint's trust_remote_code config.json (`model_type` "internlmxcomposer2").

That config.json describes the InternLM2 decoder only. The rest is fixed in the reference's Python code, and
built in here:
- the vision tower is OpenAI's CLIP ViT-L/14 at 336 px (`build_vision_tower`), 336 px HD tiles;
- every Partial-LoRA linear uses rank 256 and alpha 256 (`PLoRA(..., lora_r=256, lora_alpha=256)` in
  modeling_internlm2.py), so the branch's scale is 1.
videocap also reads optional `vision_config` (CLIP's own keys), `lora_r` and `lora_alpha` entries, which no
published checkpoint has; the tiny test checkpoints use them.

RoPE: `rope_scaling` null (the 4KHD release), "dynamic" or "linear", as the reference's InternLM2 attention
builds them. Dynamic NTK changes the base only once a sequence is longer than `max_position_embeddings`; videocap's
context ends there, so within it dynamic scaling is no scaling at all, exactly as in the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videocap.errors import CheckpointError
from videocap.models.layers.clip import ClipVisionConfig
from videocap.models.layers.config_checks import positive_ints
from videocap.models.layers.rope import RopeScaling

MODEL_TYPE = "internlmxcomposer2"
REFERENCE_LORA_RANK = 256  # modeling_internlm2.py: PLoRA(..., lora_r=256, lora_alpha=256)
REFERENCE_LORA_ALPHA = 256.0
TILE = 336  # IXC2-4KHD's HD tiles; IXC2-VL (490 px, `img_size`) and IXC-2.5 (560 px) are other models


@dataclass(frozen=True)
class XComposer2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: RopeScaling = RopeScaling()
    bias: bool = False  # wqkv and wo biases (`config.bias`)
    tie_word_embeddings: bool = False
    lora_rank: int = REFERENCE_LORA_RANK
    lora_alpha: float = REFERENCE_LORA_ALPHA
    vision: ClipVisionConfig = ClipVisionConfig()
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        positive_ints(self)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads "
                             f"{self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.vision.image_size != TILE:
            raise ValueError(f"IXC2-4KHD tiles are {TILE} px; a vision tower of {self.vision.image_size} px is "
                             "another model")
        if self.rope_scaling.rope_type not in ("default", "linear"):
            raise ValueError(f"rope scaling {self.rope_scaling.rope_type!r} is not InternLM2's")
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads


# The published 7B shapes (internlm-xcomposer2-4khd-7b and ShareCaptioner-Video config.json) and a tiny debug size.
PRESETS: dict[str, XComposer2Config] = {
    "7b": XComposer2Config(
        vocab_size=92544, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768,
    ),
    "tiny": XComposer2Config(
        vocab_size=92544, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
        rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768, lora_rank=8, lora_alpha=16.0,
        vision=ClipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4),
    ),
}


def load_config(model_dir: Path) -> XComposer2Config:
    """Parse `model_dir/config.json`; CheckpointError names the file and the problem."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the model config: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    try:
        return parse_config(raw)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not an InternLM-XComposer2-4KHD config: {type(e).__name__}: {e}") from e


def parse_config(raw: dict[str, Any]) -> XComposer2Config:
    if raw.get("model_type") != MODEL_TYPE:
        raise ValueError(f"model_type {raw.get('model_type')!r} is not {MODEL_TYPE!r}")
    if raw.get("img_size", TILE) != TILE:
        raise ValueError(f"img_size {raw['img_size']}: that is IXC2-VL's fixed-resolution vision, not 4KHD's "
                         f"{TILE} px HD tiles")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} (InternLM2 uses silu)")
    vision = raw.get("vision_config")
    return XComposer2Config(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        num_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rope_scaling=rope_scaling(raw.get("rope_scaling")),
        bias=bool(raw.get("bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        lora_rank=raw.get("lora_r", REFERENCE_LORA_RANK),
        lora_alpha=float(raw.get("lora_alpha", REFERENCE_LORA_ALPHA)),
        vision=clip_config(vision) if vision is not None else ClipVisionConfig(),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=raw.get("eos_token_id", 2),
    )


def rope_scaling(scaling: dict[str, Any] | None) -> RopeScaling:
    """The reference's `_init_rope`: None → plain RoPE; {"type": "linear"|"dynamic", "factor": f}."""
    if scaling is None:
        return RopeScaling()
    kind = scaling.get("type", scaling.get("rope_type"))
    factor = float(scaling["factor"])
    if not factor > 0:
        raise ValueError(f"rope_scaling factor must be > 0, got {factor}")
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "dynamic":  # NTK base change only past max_position_embeddings, where videocap's context ends
        return RopeScaling()
    raise ValueError(f"rope_scaling type {kind!r} (InternLM2 has 'dynamic' and 'linear')")


def clip_config(v: dict[str, Any]) -> ClipVisionConfig:
    return ClipVisionConfig(
        image_size=v.get("image_size", TILE),
        patch_size=v.get("patch_size", 14),
        hidden_size=v.get("hidden_size", 1024),
        intermediate_size=v.get("intermediate_size", 4096),
        num_layers=v.get("num_hidden_layers", 24),
        num_heads=v.get("num_attention_heads", 16),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        hidden_act=v.get("hidden_act", "quick_gelu"),
    )


def to_json(cfg: XComposer2Config) -> dict[str, Any]:
    """A config.json for `cfg` in the checkpoint's own dialect (tests save tiny checkpoints with it)."""
    raw: dict[str, Any] = {
        "architectures": ["InternLMXComposer2ForCausalLM"], "model_type": MODEL_TYPE,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": "silu", "bias": cfg.bias,
        "tie_word_embeddings": cfg.tie_word_embeddings, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.eos_token_id,
        "rope_scaling": None if cfg.rope_scaling.rope_type == "default"
        else {"type": cfg.rope_scaling.rope_type, "factor": cfg.rope_scaling.factor},
    }
    if (cfg.lora_rank, cfg.lora_alpha) != (REFERENCE_LORA_RANK, REFERENCE_LORA_ALPHA):
        raw.update(lora_r=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    if cfg.vision != ClipVisionConfig():
        v = cfg.vision
        raw["vision_config"] = {
            "image_size": v.image_size, "patch_size": v.patch_size, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
        }
    return raw
