"""The checkpoint layout of InternLM-XComposer2-4KHD (ShareCaptioner-Video): the trust_remote_code state-dict names
as a prefix key map onto videocap's modules, loading, and the inverse (a state dict in that layout, for saving).

Checkpoint names (modeling_internlm_xcomposer2.py / modeling_internlm2.py / build_mlp.py of the reference):
`model.tok_embeddings.weight`, `model.layers.N.attention.wqkv.{weight, Plora_A.weight, Plora_B.weight}`,
`model.layers.N.attention.wo.*`, `model.layers.N.feed_forward.{w1,w2,w3}.*` (each with Plora_A / Plora_B),
`model.layers.N.{attention_norm,ffn_norm}.weight`, `model.norm.weight`, `output.weight`, and the vision side's
`vit.vision_tower.vision_model.*`, `vision_proj.{0,2}.*`, `plora_glb_GN`, `plora_sub_GN` (vision.py's VISION_KEYS).
The decoder's modules carry the same names under `llm.`; wqkv's grouped row order and the w1/w3 fusion are
handled by the modules' checkpoint views (decoder.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from videocap.models.xcomposer2.config import XComposer2Config, load_config
from videocap.models.xcomposer2.model import XComposer2
from videocap.models.xcomposer2.vision import VISION_IGNORED_SUFFIXES, VISION_OPTIONAL_PREFIXES, VISION_RULES
from videocap.weights.loader import KeyMap, RowPermuted, build_on_meta, load_weights, loadable_tensors

XCOMPOSER2 = KeyMap(
    name="InternLM-XComposer2 (trust_remote_code)",
    rules=(("model.", "llm."), ("output.", "output."), *VISION_RULES),
)

# Derived tensors a checkpoint may carry: rotary caches (non-persistent in the reference, but older saves kept them).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached", *VISION_IGNORED_SUFFIXES)


def build(cfg: XComposer2Config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> XComposer2:
    """A model of `cfg` with uninitialised weights on `device` (fill it with `load` or by hand)."""
    return build_on_meta(lambda: XComposer2(cfg), device, dtype)


def load(
    model_dir: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    allow_pickle: bool = False,
    progress: Callable[[int], None] | None = None,
) -> XComposer2:
    """Build an XComposer2 from a checkpoint directory straight onto `device` in `dtype`. A tensor missing, left
    over or misshapen is a CheckpointError naming every one."""
    model = build(load_config(model_dir), device, dtype)
    load_weights(
        model, Path(model_dir), lambda keys: XCOMPOSER2, ignore=lambda key: key.endswith(IGNORED_SUFFIXES),
        expect=lambda name: not name.startswith(VISION_OPTIONAL_PREFIXES), allow_pickle=allow_pickle,
        progress=progress,
    )
    return model.eval()


def checkpoint_state(model: XComposer2) -> dict[str, torch.Tensor]:
    """`model`'s weights under the checkpoint's names and in its row order (tied tensors once)."""
    tensors, owner = loadable_tensors(model)
    state, seen = {}, set()
    for name, tensor in tensors.items():
        if owner[name] in seen:
            continue
        seen.add(owner[name])
        key = XCOMPOSER2.unrename(name)
        assert key is not None, f"no checkpoint name for {name}"
        value = tensor.read() if isinstance(tensor, RowPermuted) else tensor
        state[key] = value.detach().contiguous()
    return state
