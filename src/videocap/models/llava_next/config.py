"""`LlavaNextConfig`: the LLaVA-NeXT family's configuration, parsed once from a checkpoint's config.json.

Two config dialects describe the same architecture:
- LLaVA-original (`model_type` "llava_llama", what Lin-Chen/sharegpt4video-8b ships): the Llama fields at the top
  level and the vision side as `mm_*` fields naming a CLIP checkpoint (`mm_vision_tower`), whose own config is not
  included. The CLIP configs the family knows are built in, so no second download is needed; a local path there is
  read from its config.json, as the reference code does.
- llava-hf (`model_type` "llava_next", transformers 4.x and 5.x): `text_config` and `vision_config` sections.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from videocap.errors import CheckpointError
from videocap.models.layers.clip import ClipVisionConfig
from videocap.models.layers.llama import DecoderConfig
from videocap.models.layers.rope import RopeScaling

# CLIP towers LLaVA checkpoints name in `mm_vision_tower`, with their published vision configs.
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": ClipVisionConfig(),
    "openai/clip-vit-large-patch14": ClipVisionConfig(image_size=224),
}

# LLaVA-NeXT's default pinpoints for 336 px tiles, (width, height) as the seed reads them.
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


class Dialect(Enum):
    LLAVA = "llava"  # LLaVA-original: llava_llama with mm_* fields
    HF = "llava-hf"  # transformers' LlavaNextForConditionalGeneration


@dataclass(frozen=True)
class LlavaNextConfig:
    text: DecoderConfig
    vision: ClipVisionConfig
    grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
    vision_feature_layer: int = -2
    drop_cls: bool = True  # "patch" / "default" feature selection: CLS token dropped
    projector_act: str = "gelu"  # mlp2x_gelu
    dialect: Dialect = Dialect.HF
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    image_token_id: int | None = None  # llava-hf's placeholder id; LLaVA-original splices at a sentinel instead
    vision_tower: str | None = None  # mm_vision_tower as written in the config

    def __post_init__(self):
        if not self.grid_pinpoints:
            raise ValueError("image_grid_pinpoints is empty")
        tile = self.vision.image_size
        for w, h in self.grid_pinpoints:
            if w <= 0 or h <= 0 or w % tile or h % tile:
                raise ValueError(f"grid pinpoint {(w, h)} is not a positive multiple of the {tile} px tile")
        layers = self.vision.num_layers
        if not -layers - 1 <= self.vision_feature_layer <= layers:
            raise ValueError(f"vision feature layer {self.vision_feature_layer} is outside a {layers}-layer tower")
        if not self.drop_cls:
            raise ValueError("only patch features (CLS dropped) fit the spatial_unpad merge")

    @property
    def tokens_per_tile(self) -> int:
        return self.vision.patches_per_side**2


def load_config(model_dir: Path) -> LlavaNextConfig:
    """Parse `model_dir/config.json` (and generation_config.json for eos ids); CheckpointError names the problem."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the model config: {e}") from e
    generation = Path(model_dir) / "generation_config.json"
    try:
        gen = json.loads(generation.read_text()) if generation.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{generation}: cannot read the generation config: {e}") from e
    if not isinstance(raw, dict) or not isinstance(gen, dict):
        raise CheckpointError(f"{path}: config.json and generation_config.json must be JSON objects")
    try:
        return parse_config(raw, gen, Path(model_dir))
    except (AttributeError, KeyError, TypeError, ValueError, SyntaxError, ZeroDivisionError) as e:
        raise CheckpointError(f"{path}: not a LLaVA-NeXT config: {type(e).__name__}: {e}") from e


def parse_config(raw: dict[str, Any], gen: dict[str, Any] | None = None, model_dir: Path | None = None) -> LlavaNextConfig:
    gen = gen or {}
    model_type = raw.get("model_type")
    if model_type == "llava_next":
        text = raw["text_config"]
        vision = vision_config(raw["vision_config"])
        if raw.get("vision_feature_select_strategy", "default") != "default":
            raise ValueError(f"vision_feature_select_strategy {raw['vision_feature_select_strategy']!r} "
                             "(only 'default', patch features without CLS, is supported)")
        if not isinstance(raw.get("vision_feature_layer", -2), int):
            raise ValueError("several vision_feature_layer values are not supported")
        if raw.get("projector_hidden_act", "gelu") != "gelu" or raw.get("multimodal_projector_bias", True) is False:
            raise ValueError("only the mlp2x_gelu projector (with biases) is supported")
        extra = dict(
            dialect=Dialect.HF,
            vision_feature_layer=raw.get("vision_feature_layer", -2),
            drop_cls=raw.get("vision_feature_select_strategy", "default") == "default",
            image_token_id=raw.get("image_token_id", raw.get("image_token_index")),
        )
    elif model_type in ("llava_llama", "llava") or "mm_vision_tower" in raw:
        text = raw
        vision = known_vision_tower(raw["mm_vision_tower"], model_dir)
        if raw.get("mm_projector_type", "linear") != "mlp2x_gelu":
            raise ValueError(f"mm_projector_type {raw.get('mm_projector_type')!r} (only mlp2x_gelu is supported)")
        if raw.get("image_aspect_ratio") != "anyres" or not raw.get("mm_patch_merge_type", "").startswith("spatial_unpad"):
            raise ValueError(
                f"image_aspect_ratio {raw.get('image_aspect_ratio')!r} with mm_patch_merge_type "
                f"{raw.get('mm_patch_merge_type')!r} (only anyres with spatial_unpad is supported)"
            )
        if raw.get("mm_vision_select_feature", "patch") != "patch":
            raise ValueError(f"mm_vision_select_feature {raw['mm_vision_select_feature']!r} (only 'patch' is supported)")
        if raw.get("mm_hidden_size", vision.hidden_size) != vision.hidden_size:
            raise ValueError(f"mm_hidden_size {raw['mm_hidden_size']} does not match the vision tower's {vision.hidden_size}")
        extra = dict(
            dialect=Dialect.LLAVA,
            vision_feature_layer=raw.get("mm_vision_select_layer", -2),
            drop_cls=raw.get("mm_vision_select_feature", "patch") == "patch",
            vision_tower=raw["mm_vision_tower"],
        )
    else:
        raise ValueError(f"model_type {model_type!r} is neither llava_next nor llava_llama")

    pinpoints = raw.get("image_grid_pinpoints", DEFAULT_PINPOINTS)
    if isinstance(pinpoints, str):  # LLaVA configs sometimes store the list as a Python literal string
        pinpoints = ast.literal_eval(pinpoints)
    eos = gen.get("eos_token_id", text.get("eos_token_id"))
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return LlavaNextConfig(
        text=decoder_config(text),
        vision=vision,
        grid_pinpoints=tuple((int(w), int(h)) for w, h in pinpoints),
        bos_token_id=text.get("bos_token_id"),
        eos_token_ids=eos_ids,
        **extra,
    )


def decoder_config(t: dict[str, Any]) -> DecoderConfig:
    heads = t["num_attention_heads"]
    # transformers 5 nests theta and scaling in rope_parameters; 4.x and LLaVA-original use rope_theta/rope_scaling.
    rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", t.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = RopeScaling(
        rope_type=kind,
        factor=float(rope.get("factor", 1.0)),
        low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 8192)),
    )
    if t.get("hidden_act", "silu") != "silu" or t.get("mlp_bias", False):
        raise ValueError("the Llama decoder must use silu without MLP biases")
    return DecoderConfig(
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_layers=t["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=t.get("num_key_value_heads") or heads,
        head_dim=t.get("head_dim") or t["hidden_size"] // heads,
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        max_position_embeddings=t.get("max_position_embeddings", 8192),
        tie_word_embeddings=t.get("tie_word_embeddings", False),
        attention_bias=t.get("attention_bias", False),
    )


def vision_config(v: dict[str, Any]) -> ClipVisionConfig:
    if "vision_config" in v:  # a full CLIPConfig: take its vision half
        v = v["vision_config"]
    return ClipVisionConfig(
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 32),
        hidden_size=v.get("hidden_size", 768),
        intermediate_size=v.get("intermediate_size", 3072),
        num_layers=v.get("num_hidden_layers", 12),
        num_heads=v.get("num_attention_heads", 12),
        layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        hidden_act=v.get("hidden_act", "quick_gelu"),
    )


def known_vision_tower(name: str, model_dir: Path | None) -> ClipVisionConfig:
    """The CLIP config for `mm_vision_tower`: built in for known Hub ids, read from config.json for local paths."""
    if name in KNOWN_VISION_TOWERS:
        return KNOWN_VISION_TOWERS[name]
    for base in (Path(name).expanduser(), (model_dir / name) if model_dir else None):
        if base is not None and (base / "config.json").is_file():
            return vision_config(json.loads((base / "config.json").read_text()))
    raise ValueError(
        f"unknown mm_vision_tower {name!r}: known ids are {', '.join(KNOWN_VISION_TOWERS)}, "
        "or give a local directory holding the CLIP config.json"
    )
