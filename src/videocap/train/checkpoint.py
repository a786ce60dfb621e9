"""Writing trained models as llava-hf checkpoints, and the training state that makes a run resumable.

`save_model` writes what `LlavaNextForConditionalGeneration.save_pretrained` (transformers 5) writes —
config.json, generation_config.json and one model.safetensors with its key names (`language_model.model.*`,
`language_model.lm_head.weight`, `vision_tower.*`, `multi_modal_projector.*`, `image_newline`), q/k/v and
gate/up stored as separate tensors — plus the tokenizer files, so `videocap.load(dir)` and transformers both read
it. `save_state`/`load_state` keep the rest of a run (fp32 weights, optimizer, step) in `state.pt`, written to a
temporary file and renamed, so an interruption mid-write leaves the previous state whole.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn

from videocap.errors import CheckpointError
from videocap.weights.loader import KeyMap, loadable_tensors

SAVE_LAYOUT = KeyMap(
    name="llava-hf (transformers 5 save_pretrained)",
    rules=(
        ("vision_tower.", "vision."),
        ("multi_modal_projector.", "projector."),
        ("image_newline", "image_newline"),
        ("language_model.model.", "llm."),
        ("language_model.lm_head.", "lm_head."),
    ),
)
STATE_FILE = "state.pt"


def checkpoint_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor under its llava-hf name (fused projections split into their parts), on the CPU in `dtype`."""
    tensors, owner = loadable_tensors(model)
    out, seen = {}, set()
    for name, tensor in tensors.items():
        if owner[name] in seen:  # a tied tensor is stored once
            continue
        seen.add(owner[name])
        key = SAVE_LAYOUT.unrename(name)
        assert key is not None, f"no checkpoint name for {name}"
        out[key] = tensor.detach().to("cpu", dtype).contiguous()
    return out


def merged(model: nn.Module) -> nn.Module:
    """`model` itself, or a CPU copy with LoRA adapters folded into the weights when it has any."""
    from videocap.train import lora

    if not lora.has_lora(model):
        return model
    return lora.merge(copy.deepcopy(model).cpu())


def save_model(model: nn.Module, config: dict, tokenizer: Tokenizer, tokenizer_config: dict, out_dir: Path,
               dtype: torch.dtype = torch.bfloat16) -> Path:
    from videocap.train.tokenizer import save_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**config, "dtype": str(dtype).removeprefix("torch.")}
    weights = out_dir / "model.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")  # a save cut short (Ctrl-C, a full disk) keeps the last whole file
    save_file(checkpoint_state(merged(model), dtype), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    text = config["text_config"]
    generation = {"bos_token_id": text.get("bos_token_id"), "eos_token_id": text.get("eos_token_id"),
                  "pad_token_id": text.get("pad_token_id")}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_tokenizer(tokenizer, out_dir, tokenizer_config)
    return out_dir


def save_state(path: Path, state: dict) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read the training state ({e}); start again without --resume") from e
