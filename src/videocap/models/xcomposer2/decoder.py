"""The InternLM2 decoder of InternLM-XComposer2 with Partial LoRA, over the caller's paged KV cache.

Architecture (modeling_internlm2.py of the trust_remote_code checkpoints): pre-norm layers of RMSNorm →
attention (one fused `wqkv` projection, grouped-query heads, RoPE, `wo`) and RMSNorm → SwiGLU
(`w2(silu(w1(x)) * w3(x))`); every one of wqkv, wo, w1, w2, w3 carries a Partial-LoRA branch that is added only at
image positions (layers/lora.py). Module names are the checkpoint's (`tok_embeddings`, `layers.N.attention_norm`,
`attention.wqkv.Plora_A`, `feed_forward.w2`, `norm`), so the family's key map is a prefix rename.

Two storage choices differ from the checkpoint, for the engine's fast paths (Triton rotary+cache kernel, fused
SiLU·up, paged decode, CUDA graphs) to apply unchanged:
- `wqkv` stores, for each key/value head, its group of query heads then its key then its value head
  ("b q (h gs d)", gs = groups + 2); videocap keeps all query heads, then all keys, then all values, as the
  shared attention expects. `qkv_layout_perm` is the row permutation, applied at load time (RowPermuted views)
  to the weight, its bias and the LoRA `Plora_B` of `wqkv` alike.
- w1 and w3 are one [w1 | w3] projection (`w13`); their LoRA branches stay separate, each adding to its half.
Rows of image positions (`rows`) are None for every decode step and text-only prefill: the plain decoder runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videocap.models.layers import fused
from videocap.models.layers.attention import AttnMetadata, attend
from videocap.models.layers.lora import LoRALinear, PartialLoRA
from videocap.models.layers.mlp import FusedLinear
from videocap.models.layers.norm import RMSNorm
from videocap.models.layers.rope import Rotary
from videocap.models.xcomposer2.config import XComposer2Config
from videocap.weights.loader import RowPermuted


def qkv_layout_perm(heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """(rows,) int64: the videocap row ([q heads | k heads | v heads]) of each checkpoint `wqkv` row (per key/value
    head: its query heads, its key head, its value head)."""
    groups = heads // kv_heads
    cpu = torch.device("cpu")  # also while a model is being built on the meta device
    kv = torch.arange(kv_heads, device=cpu)[:, None, None]  # (KV, 1, 1)
    slot = torch.arange(groups + 2, device=cpu)[None, :, None]  # (1, g + 2, 1): query j < g, then key, then value
    d = torch.arange(head_dim, device=cpu)[None, None, :]
    head = torch.where(slot < groups, kv * groups + slot, torch.where(slot == groups, heads + kv, heads + kv_heads + kv))
    return (head * head_dim + d).reshape(-1)  # checkpoint order: (kv, slot, d) flattened


class RelaidLinear(nn.Linear):
    """A linear layer with [q | k | v] output rows that the checkpoint stores in InternLM2's grouped order, under
    `checkpoint_name` (relative to the parent module): the loader fills it through RowPermuted views."""

    def __init__(self, d_in: int, heads: tuple[int, int, int], checkpoint_name: str, bias: bool = False):
        super().__init__(d_in, (heads[0] + 2 * heads[1]) * heads[2], bias=bias)
        self.heads = heads  # (query heads, key/value heads, head dim)
        self.checkpoint_name = checkpoint_name

    def checkpoint_views(self) -> dict[str, RowPermuted]:
        perm = qkv_layout_perm(*self.heads)
        views = {f"{self.checkpoint_name}.weight": RowPermuted(self.weight, perm)}
        if self.bias is not None:
            views[f"{self.checkpoint_name}.bias"] = RowPermuted(self.bias, perm)
        return views


class Attention(nn.Module):
    def __init__(self, cfg: XComposer2Config):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        out = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        self.qkv = RelaidLinear(cfg.hidden_size, heads, "wqkv", bias=cfg.bias)  # checkpoint: attention.wqkv
        self.wqkv = PartialLoRA(cfg.hidden_size, out, cfg.lora_rank, cfg.lora_alpha)  # its LoRA branch
        self.wqkv.Plora_B = RelaidLinear(cfg.lora_rank, heads, "Plora_B")
        self.wo = LoRALinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, cfg.lora_rank, cfg.lora_alpha,
                             bias=cfg.bias)

    def forward(self, x: torch.Tensor, cos_sin, meta: AttnMetadata, cache: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        qkv = self.wqkv.add_(self.qkv(x), x, rows)  # (T, (H + 2 KV) * D)
        out = attend(qkv, self.heads, self.kv_heads, self.head_dim, cos_sin, meta, cache)
        return self.wo(out, rows)


class FeedForward(nn.Module):
    def __init__(self, cfg: XComposer2Config):
        super().__init__()
        f = cfg.intermediate_size
        self.w13 = FusedLinear(cfg.hidden_size, {"w1": f, "w3": f})  # checkpoint: feed_forward.w1 / .w3 weights
        self.w1 = PartialLoRA(cfg.hidden_size, f, cfg.lora_rank, cfg.lora_alpha)  # their LoRA branches
        self.w3 = PartialLoRA(cfg.hidden_size, f, cfg.lora_rank, cfg.lora_alpha)
        self.w2 = LoRALinear(f, cfg.hidden_size, cfg.lora_rank, cfg.lora_alpha)
        self.intermediate = f

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None, fused_act: bool = False) -> torch.Tensor:
        gate_up = self.w13(x)  # (T, 2F): [w1(x) | w3(x)]
        if rows is not None:
            self.w1.add_(gate_up[:, : self.intermediate], x, rows)
            self.w3.add_(gate_up[:, self.intermediate :], x, rows)
        if fused_act:  # silu(gate) * up in one Triton kernel (CUDA)
            return self.w2(fused.silu_mul(gate_up), rows)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up, rows)


class Layer(nn.Module):
    def __init__(self, cfg: XComposer2Config):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos_sin, meta: AttnMetadata, cache: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos_sin, meta, cache, rows)
        return x + self.feed_forward(self.ffn_norm(x), rows)


class InternLM2Decoder(nn.Module):
    def __init__(self, cfg: XComposer2Config):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata,
                kv_caches: list[torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """(T, hidden) input embeddings of the packed new tokens → (T, hidden) final hidden states. `rows`: the
        packed rows of image positions, where the LoRA branches apply (None: none)."""
        assert len(kv_caches) == len(self.layers), "one KV cache per layer"
        cos_sin = self.rotary.cos_sin(positions, embeds.dtype)
        if meta.fused:  # on CUDA: the same arithmetic in fewer kernels
            return self.forward_fused(embeds, cos_sin, meta, kv_caches, rows)
        x = embeds
        for layer, cache in zip(self.layers, kv_caches):
            x = layer(x, cos_sin, meta, cache, rows)
        return self.norm(x)

    def forward_fused(self, embeds, cos_sin, meta: AttnMetadata, kv_caches: list[torch.Tensor],
                      rows: torch.Tensor | None) -> torch.Tensor:
        """The layers with each residual add fused into the next RMSNorm (layers/fused.py)."""
        norms = [n for layer in self.layers for n in (layer.attention_norm, layer.ffn_norm)] + [self.norm]
        residual, h = fused.add_rms_norm(embeds, None, norms[0].weight, norms[0].eps)
        for i, (layer, cache) in enumerate(zip(self.layers, kv_caches)):
            attn, ffn_norm, nxt = layer.attention, norms[2 * i + 1], norms[2 * i + 2]
            residual, h = fused.add_rms_norm(residual, attn(h, cos_sin, meta, cache, rows), ffn_norm.weight,
                                             ffn_norm.eps)
            residual, h = fused.add_rms_norm(residual, layer.feed_forward(h, rows, fused_act=True), nxt.weight,
                                             nxt.eps)
        return h
