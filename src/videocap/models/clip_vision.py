"""A CLIP vision tower on its own, from a CLIP checkpoint: its config, its image preprocessing, its weights.

Used where CLIP is a feature extractor rather than part of a family (semantic keyframes). Owns reading a CLIP
checkpoint's config.json (a whole `CLIPModel` config, whose `vision_config` it takes, or a `CLIPVisionModel` one)
and preprocessor_config.json, the CLIP image processor's pixel pipeline, and the key map that fills
`ClipVisionTransformer` from `vision_model.*` while ignoring the text half. The transformer itself lives in
models/layers/clip.py; downloading in weights/hub.py.

Preprocessing follows transformers' CLIP image processor with the PIL backend (`CLIPImageProcessorPil` in
transformers 5, `CLIPImageProcessor` in 4.x, which the seed's keyframe script ran): resize the shortest side to
`shortest_edge` with PIL (the long side `int(edge * long / short)`), centre crop (top `(h - crop) // 2`), rescale in
float64 then cast to float32, normalise in float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from videocap.errors import CheckpointError
from videocap.models.layers.clip import ClipVisionConfig, ClipVisionTransformer
from videocap.models.llava_next.config import vision_config
from videocap.weights.loader import KeyMap, build_on_meta, load_weights

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' CLIPModel (and 4.x CLIPVisionModel) store the tower under `vision_model.`; transformers 5 saves a
# CLIPVisionModel without that prefix.
CLIP_LAYOUT = KeyMap(name="CLIP (vision_model.*)", rules=(("vision_model.", ""),))
BARE_LAYOUT = KeyMap(name="CLIP vision tower (transformers 5 CLIPVisionModel)", rules=(("", ""),))
NOT_VISION = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
DERIVED = ("position_ids",)  # buffers older transformers saved with the weights


@dataclass(frozen=True)
class ClipPreprocessConfig:
    """The CLIP image processor's settings (preprocessor_config.json), as far as pixels go."""

    shortest_edge: int = 336
    crop: tuple[int, int] = (336, 336)  # (height, width)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self):
        if self.shortest_edge < 1 or min(self.crop) < 1:
            raise ValueError(f"image sizes must be positive: shortest_edge {self.shortest_edge}, crop {self.crop}")
        if max(self.crop) > self.shortest_edge:
            raise ValueError(f"crop {self.crop} is larger than the resized shortest side {self.shortest_edge}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"image_mean {self.mean} and image_std {self.std} need 3 values each, std positive")
        if self.resample not in {int(r) for r in Image.Resampling}:
            raise ValueError(f"resample {self.resample} is not a PIL filter")

    @classmethod
    def from_json(cls, raw: dict[str, Any], image_size: int) -> ClipPreprocessConfig:
        """Parse preprocessor_config.json (sizes as ints in the old format, dicts in the new one)."""
        for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if raw.get(flag, True) is not True:
                raise ValueError(f"{flag}={raw[flag]!r}: only the full CLIP pipeline is supported")
        size = raw.get("size", image_size)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ValueError(f"size {size} (only a shortest_edge resize is supported)")
            size = size["shortest_edge"]
        crop = raw.get("crop_size", image_size)
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        return cls(
            shortest_edge=int(size),
            crop=(int(crop[0]), int(crop[1])),
            mean=tuple(float(x) for x in raw.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(float(x) for x in raw.get("image_std", OPENAI_CLIP_STD)),
            rescale=float(raw.get("rescale_factor", 1 / 255)),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
        )


def preprocess(images: Sequence[np.ndarray], cfg: ClipPreprocessConfig) -> torch.Tensor:
    """(H, W, 3) uint8 RGB images of any sizes → (N, 3, crop_h, crop_w) float32 normalised pixels."""
    crop_h, crop_w = cfg.crop
    out = np.empty((len(images), crop_h, crop_w, 3), dtype=np.float32)
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(cfg.shortest_edge * long / short)
        new_w, new_h = (cfg.shortest_edge, new_long) if w <= h else (new_long, cfg.shortest_edge)
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), cfg.resample))
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        out[k] = resized[top : top + crop_h, left : left + crop_w].astype(np.float64) * cfg.rescale
    out -= np.asarray(cfg.mean, dtype=np.float32)
    out /= np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # (N, 3, H, W), a view: the model copies it to its device


def load_clip_config(model_dir: Path) -> tuple[ClipVisionConfig, ClipPreprocessConfig]:
    """The vision tower's config (from config.json) and its preprocessing (preprocessor_config.json, or CLIP's
    defaults at the tower's image size when the checkpoint has none)."""
    raw = _read_json(Path(model_dir) / "config.json")
    try:
        model_type = raw.get("model_type")
        if model_type not in ("clip", "clip_vision_model", None):
            raise ValueError(f"model_type {model_type!r} is not a CLIP model (clip or clip_vision_model)")
        if model_type == "clip_vision_model":
            section = raw
        elif raw.get("vision_config_dict") or raw.get("vision_config"):
            # transformers rebuilds vision_config from vision_config_dict (defaults filled) when an old config has
            # both, so every field comes from the _dict then.
            section = raw.get("vision_config_dict") or raw["vision_config"]
        else:
            raise ValueError("no vision_config: not a CLIP checkpoint")
        vision = vision_config(section)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: not a CLIP vision config: {type(e).__name__}: {e}") from e
    path = Path(model_dir) / "preprocessor_config.json"
    try:
        pre = ClipPreprocessConfig.from_json(_read_json(path), vision.image_size) if path.is_file() else \
            ClipPreprocessConfig(vision.image_size, (vision.image_size, vision.image_size))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a CLIP image processor config: {type(e).__name__}: {e}") from e
    if pre.crop != (vision.image_size, vision.image_size):
        raise CheckpointError(f"{path}: crop {pre.crop} does not match the tower's {vision.image_size} px input")
    return vision, pre


def load_clip_vision(
    model_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[ClipVisionTransformer, ClipPreprocessConfig]:
    """The vision tower of a CLIP checkpoint on `device` in `dtype`, and its preprocessing."""
    vision, pre = load_clip_config(model_dir)
    model = build_on_meta(lambda: ClipVisionTransformer(vision), device, dtype)
    load_weights(
        model, Path(model_dir), pick_layout,
        ignore=lambda key: key.startswith(NOT_VISION) or key.endswith(DERIVED),
        allow_pickle=allow_pickle, progress=progress,
    )
    return model.eval(), pre


def pick_layout(keys: list[str]) -> KeyMap:
    return CLIP_LAYOUT if any(k.startswith("vision_model.") for k in keys) else BARE_LAYOUT


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return raw
