"""The training forward pass: whole padded sequences through the LLaVA-NeXT model with causal SDPA, and the loss.

The engine's `LlavaNext.forward` works on packed tokens over a paged KV cache; training needs neither, so this
runs the same modules (the model's own vision tower, projector, merge and decoder layers, its fused q/k/v and
gate/up projections and rotary tables) over a (B, T) batch with `is_causal` attention. Sequences are right-padded:
a causal mask already keeps every real token from seeing the padding after it. tests/train check the logits
against the engine path's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from videocap.models.layers.llama import LlamaDecoder
from videocap.models.layers.rope import Rotary
from videocap.models.llava_next.model import LlavaNext


def decoder_hidden(llm: LlamaDecoder, x: torch.Tensor) -> torch.Tensor:
    """(B, T, hidden) input embeddings → (B, T, hidden) final hidden states, causal over each row."""
    B, T, _ = x.shape
    cos, sin = llm.rotary.cos_sin(torch.arange(T, device=x.device), x.dtype)  # (T, D)
    for layer in llm.layers:
        attn = layer.self_attn
        H, KV, D = attn.heads, attn.kv_heads, attn.head_dim
        qkv = attn.qkv_proj(layer.input_layernorm(x))  # (B, T, (H + 2 KV) D)
        qk = Rotary.apply(qkv[..., : (H + KV) * D].view(B, T, H + KV, D), cos, sin)  # (B, T, H + KV, D)
        q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)  # (B, heads, T, D)
        v = qkv[..., (H + KV) * D :].view(B, T, KV, D).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D**-0.5, enable_gqa=KV != H)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, H * D))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return llm.norm(x)


def embed_batch(model: LlavaNext, input_ids: torch.Tensor, image_mask: torch.Tensor, pixels: torch.Tensor | None,
                sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(B, T) ids with each row's image positions filled, in order, by its image's embeddings → (B, T, hidden)."""
    x = model.llm.embed_tokens(input_ids)
    if pixels is not None:
        images = torch.cat(model.encode_images(pixels.to(x.dtype), list(sizes)))  # (image positions, hidden)
        x = x.masked_scatter(image_mask[..., None], images.to(x.dtype))
    return x


def hidden_states(model: LlavaNext, input_ids, image_mask, pixels, sizes) -> torch.Tensor:
    return decoder_hidden(model.llm, embed_batch(model, input_ids, image_mask, pixels, sizes))


def loss(model: LlavaNext, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (labels != -100); the output head runs on those rows only."""
    hidden = hidden_states(model, batch["input_ids"], batch["image_mask"], batch["pixels"], batch["sizes"])
    keep = batch["labels"] != -100
    logits = model.lm_head(hidden[keep]).float()  # (answer tokens, vocab)
    return F.cross_entropy(logits, batch["labels"][keep])
