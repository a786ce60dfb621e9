"""The Llama decoder (GQA attention with RoPE, RMSNorm, SwiGLU) as a function of packed tokens, positions,
attention metadata and the caller's per-layer KV caches. Parameter names follow Llama checkpoints
(`embed_tokens`, `layers.N.self_attn.q_proj`, …, `norm`); the output head lives with the family's model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from videocap.models.layers import fused
from videocap.models.layers.attention import AttnMetadata, SelfAttention
from videocap.models.layers.config_checks import positive_ints
from videocap.models.layers.mlp import SwiGLU
from videocap.models.layers.norm import RMSNorm
from videocap.models.layers.rope import RopeScaling, Rotary


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rope_scaling: RopeScaling
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False

    def __post_init__(self):
        positive_ints(self)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.attention_bias)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos_sin, meta: AttnMetadata, cache: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, meta, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata, kv_caches: list[torch.Tensor]
    ) -> torch.Tensor:
        """(T, hidden) input embeddings of the packed new tokens → (T, hidden) final hidden states."""
        assert len(kv_caches) == len(self.layers), "one KV cache per layer"
        cos_sin = self.rotary.cos_sin(positions, embeds.dtype)
        if meta.fused:  # on CUDA: the same arithmetic in fewer kernels
            return self.forward_fused(embeds, cos_sin, meta, kv_caches)
        x = embeds
        for layer, cache in zip(self.layers, kv_caches):
            x = layer(x, cos_sin, meta, cache)
        return self.norm(x)

    def forward_fused(self, embeds, cos_sin, meta: AttnMetadata, kv_caches: list[torch.Tensor]) -> torch.Tensor:
        """The layers with each residual add fused into the next RMSNorm (fused.py)."""
        norms = [n for layer in self.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        norms.append(self.norm)
        residual, h = fused.add_rms_norm(embeds, None, norms[0].weight, norms[0].eps)
        for i, (layer, cache) in enumerate(zip(self.layers, kv_caches)):
            residual, h = fused.add_rms_norm(residual, layer.self_attn(h, cos_sin, meta, cache), norms[2 * i + 1].weight,
                                             norms[2 * i + 1].eps)
            residual, h = fused.add_rms_norm(residual, layer.mlp(h, fused_act=True), norms[2 * i + 2].weight,
                                             norms[2 * i + 2].eps)
        return h
