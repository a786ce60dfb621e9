"""Checkpoint key maps of the LLaVA-NeXT family: each layout it accepts, as prefix renames to videocap's names.

videocap's names: `vision.*` (CLIP ViT, CLIP's own inner names), `projector.linear_{1,2}.*`, `image_newline`,
`llm.*` (Llama decoder: embed_tokens, layers.N.*, norm) and `lm_head.weight`. Rules are tried in order and the
first matching prefix wins, so longer prefixes come first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from videocap.models.llava_next.config import Dialect, load_config
from videocap.models.llava_next.model import LlavaNext
from videocap.weights.loader import KeyMap, build_on_meta, checkpoint_keys, load_weights

LLAVA_ORIGINAL = KeyMap(
    name="LLaVA-original (llava_llama)",
    rules=(
        ("model.vision_tower.vision_tower.vision_model.", "vision."),
        ("model.mm_projector.0.", "projector.linear_1."),
        ("model.mm_projector.2.", "projector.linear_2."),
        ("model.image_newline", "image_newline"),
        ("model.", "llm."),
        ("lm_head.", "lm_head."),
    ),
)

# transformers 4.x on the Hub; transformers 5.x save_pretrained writes the same names minus CLIP's `vision_model.`.
LLAVA_HF_V4 = KeyMap(
    name="llava-hf (transformers 4.x)",
    rules=(
        ("vision_tower.vision_model.", "vision."),
        ("vision_tower.", "vision."),
        ("multi_modal_projector.", "projector."),
        ("image_newline", "image_newline"),
        ("language_model.model.", "llm."),
        ("language_model.lm_head.", "lm_head."),
    ),
)

# transformers 5.x module names (what its state_dict() holds).
LLAVA_HF_V5 = KeyMap(
    name="llava-hf (transformers 5.x)",
    rules=(
        ("model.vision_tower.vision_model.", "vision."),
        ("model.vision_tower.", "vision."),
        ("model.multi_modal_projector.", "projector."),
        ("model.image_newline", "image_newline"),
        ("model.language_model.", "llm."),
        ("lm_head.", "lm_head."),
    ),
)

# Tensors some checkpoints carry that are derived, not learned (older CLIP saves, Llama rotary caches).
IGNORED_SUFFIXES = ("embeddings.position_ids", "rotary_emb.inv_freq")

LAYOUTS = (LLAVA_ORIGINAL, LLAVA_HF_V5, LLAVA_HF_V4)


def pick_layout(keys: list[str]) -> KeyMap:
    """The layout whose rules name the most checkpoint keys (the three layouts' prefixes barely overlap)."""
    return max(LAYOUTS, key=lambda layout: sum(layout.rename(k) is not None for k in keys) - layout_conflicts(layout, keys))


def layout_conflicts(layout: KeyMap, keys: list[str]) -> int:
    # `model.` in the LLaVA-original map would also swallow transformers-5 keys: count those as misses.
    if layout is LLAVA_ORIGINAL:
        return sum(k.startswith(("model.language_model.", "model.multi_modal_projector.")) for k in keys)
    return 0


# A CLIP checkpoint (what `mm_vision_tower` names) for LLaVA checkpoints that do not carry the vision tower.
CLIP_VISION = KeyMap(name="CLIP", rules=(("vision_model.", "vision."),))
CLIP_NOT_VISION = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")


def load(
    model_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    allow_pickle: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LlavaNext:
    """Build a LlavaNext from a checkpoint directory straight onto `device` in `dtype`.

    The vision tower comes from the checkpoint when it carries it (Lin-Chen/sharegpt4video-8b does: no second
    download). A LLaVA-original checkpoint without it gets it from `mm_vision_tower`, as the reference loads it:
    a local CLIP folder, or that Hub id through the same cache.
    """
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    model = build_on_meta(lambda: LlavaNext(cfg), device, dtype)
    keys = checkpoint_keys(model_dir)
    carries_tower = any((LLAVA_ORIGINAL.rename(k) or "").startswith("vision.") for k in keys)
    separate_tower = cfg.dialect is Dialect.LLAVA and bool(keys) and not carries_tower
    load_weights(
        model, model_dir, pick_layout, ignore=lambda key: key.endswith(IGNORED_SUFFIXES),
        expect=lambda name: not (separate_tower and name.startswith("vision.")), allow_pickle=allow_pickle,
        progress=progress,
    )
    if separate_tower:
        load_weights(
            model, vision_tower_dir(cfg.vision_tower, model_dir, allow_pickle, progress is not None),
            lambda keys: CLIP_VISION,
            ignore=lambda key: key.startswith(CLIP_NOT_VISION) or key.endswith(IGNORED_SUFFIXES),
            expect=lambda name: name.startswith("vision."), allow_pickle=allow_pickle, progress=progress,
        )
    return model.eval()


def vision_tower_dir(name: str, model_dir: Path, allow_pickle: bool, show_progress: bool) -> Path:
    for local in (Path(name).expanduser(), model_dir / name):
        if local.is_dir():
            return local
    from videocap.weights import hub

    return hub.resolve(name, allow_pickle=allow_pickle, progress=show_progress)
