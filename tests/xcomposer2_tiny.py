"""Tiny random InternLM-XComposer2-4KHD checkpoints in the trust_remote_code layout, and an independent float64
reference of the decoder written from the reference's modeling_internlm2.py semantics (grouped `wqkv` rows read
with "b q (h gs d)", PLoRA at `im_mask`, rotate-half RoPE, RMSNorm in float32 upcast), with no cache.

Weights are drawn larger than an init would make them (near-equal logits would let a wrong layer "match"); the
LoRA branches are non-zero; the output head can be scaled up for wide greedy margins.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from helpers import SHARED

from videocap.models.layers.attention import AttnMetadata
from videocap.models.xcomposer2.config import PRESETS, XComposer2Config, to_json
from videocap.models.xcomposer2.weights import build, checkpoint_state

INTERNLM2_MODEL = SHARED / "tokenizers" / "internlm2" / "tokenizer.model"
TINY = PRESETS["tiny"]


def random_state(cfg: XComposer2Config = TINY, seed: int = 0, head_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random float32 state dict under the checkpoint's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    names = checkpoint_state(build(cfg, "cpu", torch.float32))
    state = {}
    for key, like in names.items():
        if "norm" in key and key.endswith("weight"):
            value = 1 + 0.1 * torch.randn(like.shape, generator=g)
        elif key.endswith("bias"):
            value = 0.05 * torch.randn(like.shape, generator=g)
        elif key.endswith("position_ids"):
            value = torch.arange(like.numel()).view(like.shape)
        else:
            std = 0.5 if "embed" in key or "GN" in key else 0.12
            value = std * torch.randn(like.shape, generator=g)
        state[key] = value.to(like.dtype)
    state["output.weight"] = state["output.weight"] * head_scale
    return state


def save_checkpoint(state: dict[str, torch.Tensor], cfg: XComposer2Config, out: Path, shards: int = 3,
                    tokenizer: bool = True) -> Path:
    """`state` as sharded safetensors + index json, with config.json (and the real tokenizer.model if present)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    step = -(-len(keys) // shards)
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())}, "weight_map": {}}
    parts = [keys[i : i + step] for i in range(0, len(keys), step)]
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, out / name, metadata={"format": "pt"})
        index["weight_map"].update({k: name for k in part})
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    (out / "config.json").write_text(json.dumps(to_json(cfg)))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    if tokenizer and INTERNLM2_MODEL.is_file():
        shutil.copy(INTERNLM2_MODEL, out / "tokenizer.model")
    return out


def tiny_checkpoint(out: Path, seed: int = 0, head_scale: float = 1.0, **changes) -> Path:
    cfg = replace(TINY, **changes)
    return save_checkpoint(random_state(cfg, seed, head_scale), cfg, out)


# ---- the float64 reference -------------------------------------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.no_grad()
def reference_logits(state: dict[str, torch.Tensor], cfg: XComposer2Config, embeds: torch.Tensor,
                     im_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(T, hidden) input embeddings of one sequence (positions 0..T-1) → (T, vocab) float64 logits."""
    s = {k: v.double() for k, v in state.items()}
    T = embeds.shape[0]
    H, KV, D, g = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
    m = torch.zeros(T, dtype=torch.bool) if im_mask is None else im_mask.bool()
    scaling = cfg.lora_alpha / cfg.lora_rank

    def plora(name: str, x: torch.Tensor) -> torch.Tensor:
        out = x @ s[f"{name}.weight"].T
        if f"{name}.bias" in s:
            out = out + s[f"{name}.bias"]
        lora = (x @ s[f"{name}.Plora_A.weight"].T) @ s[f"{name}.Plora_B.weight"].T * scaling
        return torch.where(m[:, None], out + lora, out)

    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    if cfg.rope_scaling.rope_type == "linear":
        t = torch.arange(T, dtype=torch.float64) / cfg.rope_scaling.factor
    else:
        t = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(t, inv)
    cos, sin = torch.cat((freqs, freqs), -1).cos()[:, None], torch.cat((freqs, freqs), -1).sin()[:, None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = embeds.double()
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        h = _rms(x, s[p + "attention_norm.weight"], cfg.rms_norm_eps)
        qkv = plora(p + "attention.wqkv", h).view(T, KV, g + 2, D)  # "b q (h gs d) -> b q h gs d"
        q = qkv[:, :, :g].reshape(T, H, D)
        k, v = qkv[:, :, -2], qkv[:, :, -1]  # (T, KV, D)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # repeat_kv
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        scores = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("hqk,khd->qhd", scores, v).reshape(T, H * D)
        x = x + plora(p + "attention.wo", attn)
        h = _rms(x, s[p + "ffn_norm.weight"], cfg.rms_norm_eps)
        ff = torch.nn.functional.silu(plora(p + "feed_forward.w1", h)) * plora(p + "feed_forward.w3", h)
        x = x + plora(p + "feed_forward.w2", ff)
    return _rms(x, s["model.norm.weight"], cfg.rms_norm_eps) @ s["output.weight"].T


@torch.no_grad()
def prefill_logits(model, ids: torch.Tensor, embeds: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """videocap's (T, vocab) logits of one whole sequence, run as one prefill through a fresh paged cache."""
    layers, kv, d = model.kv_spec()
    n, bs = len(ids), 16
    blocks = math.ceil(n / bs)
    caches = [torch.zeros(2, blocks, bs, kv, d) for _ in range(layers)]
    meta = AttnMetadata((n,), torch.tensor([n]), torch.arange(n), torch.arange(blocks)[None], bs, context_lens_host=(n,))
    return model.compute_logits(model(ids, torch.arange(n), meta, caches, embeds, mask))
