"""Causal self-attention over a KV cache the caller owns, for packed batches of sequences.

The engine's runner allocates one cache tensor per layer, shaped (2, num_blocks, block_size, kv_heads, head_dim),
and describes each step with `AttnMetadata`: which new tokens belong to which sequence, where each new token's
key/value goes (`slot_mapping`, a flat slot = block * block_size + offset) and which blocks hold each sequence's
context (`block_tables`). Layers write the new keys/values into their slots, then attend over the whole context.
This file never allocates a cache and knows nothing of scheduling.

Four paths, chosen by the metadata the runner builds:
- decode on CUDA (`paged_splits` > 0): the Triton kernel of paged_attention.py reads the cache through the block
  tables on the device (no gather, no host sync; CUDA-graph safe);
- a prefill whose sequences all start fresh (`context_lens_host` equals `query_lens`): causal SDPA per sequence
  on the new keys/values themselves (flash attention where the backend has it), no cache read;
- a prefill after a reused prefix (a chat's next turn, a shared system prompt): per sequence, its context
  gathered from the cache and SDPA with a bottom-right causal mask;
- anything else (decode on CPU): gather each sequence's context from the cache and run masked SDPA — the
  reference the other paths are tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from videocap.models.layers import fused, paged_attention
from videocap.models.layers.mlp import FusedLinear
from videocap.models.layers.rope import Rotary


@dataclass(frozen=True)
class AttnMetadata:
    """One forward step over B sequences whose T new tokens are packed along one axis."""

    query_lens: tuple[int, ...]  # new tokens of each sequence (host ints)
    context_lens: torch.Tensor  # (B,) int64: tokens of each sequence in the cache after this step, new ones included
    slot_mapping: torch.Tensor  # (T,) int64: the cache slot each new token's key/value is written to
    block_tables: torch.Tensor  # (B, max_blocks) int64: cache blocks of each sequence, in order
    block_size: int
    max_context_len: int | None = None  # max(context_lens) known on the host: saves a device sync per layer
    context_lens_host: tuple[int, ...] | None = None  # the same on the host, when the runner knows them
    paged_splits: int = 0  # > 0: decode with the Triton paged kernel, the context split across this many programs
    fused: bool = False  # the Triton element-wise kernels of fused.py (CUDA)

    @property
    def fresh_prefill(self) -> bool:
        """Every sequence's context is exactly its new tokens: attention needs nothing from the cache."""
        return self.context_lens_host is not None and self.context_lens_host == self.query_lens

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @cached_property
    def plan(self) -> GatherPlan:
        """Index tensors shared by every layer of the step (built once, on first use)."""
        return GatherPlan.build(self)


@dataclass
class GatherPlan:
    q_index: torch.Tensor | None  # (B, max_q): packed row of each padded query slot; None when no padding
    out_index: torch.Tensor | None  # (T,): row of each real query among the B * max_q padded ones; None likewise
    slots: torch.Tensor  # (B, max_ctx): cache slot of each context position
    mask: torch.Tensor | None  # (B, 1, max_q, max_ctx) bool: causal, within the sequence's context; None when
    causal: bool  # a lone sequence needs none: all its context is visible (decode) or plain causal (fresh prefill)
    _bias: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask as an additive bias in `dtype`, converted once per step rather than inside every layer."""
        if self.mask is None:
            return None
        if dtype not in self._bias:
            zero = torch.zeros((), dtype=dtype, device=self.mask.device)
            self._bias[dtype] = torch.where(self.mask, zero, torch.finfo(dtype).min)
        return self._bias[dtype]

    @staticmethod
    def build(meta: AttnMetadata) -> GatherPlan:
        device = meta.slot_mapping.device
        max_q = max(meta.query_lens)
        max_ctx = meta.max_context_len if meta.max_context_len is not None else int(meta.context_lens.max())
        pos = torch.arange(max_ctx, device=device)
        blocks = meta.block_tables[:, pos // meta.block_size]  # (B, max_ctx)
        slots = blocks * meta.block_size + pos % meta.block_size
        if len(meta.query_lens) == 1 and (max_q == 1 or max_q == max_ctx):
            return GatherPlan(None, None, slots, None, causal=max_q > 1)
        q_lens = torch.tensor(meta.query_lens, device=device)
        col = torch.arange(max_q, device=device)
        q_index = out_index = None
        if any(n != max_q for n in meta.query_lens):  # ragged (prefill of several): pad, and pack back by index
            starts = torch.cumsum(q_lens, 0) - q_lens
            q_index = (starts[:, None] + col[None, :]).clamp(max=meta.num_tokens - 1)
            rows = [b * max_q + j for b, n in enumerate(meta.query_lens) for j in range(n)]  # host: no device sync
            out_index = torch.tensor(rows, device=device)
        # Query j of sequence b sits at position context_len - query_len + j and sees keys up to that position.
        q_pos = (meta.context_lens - q_lens)[:, None] + col[None, :]  # (B, max_q)
        mask = (pos[None, None, :] <= q_pos[:, :, None]) & (pos[None, None, :] < meta.context_lens[:, None, None])
        return GatherPlan(q_index, out_index, slots, mask[:, None], causal=False)


def write_kv(cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    """Store (T, kv_heads, head_dim) keys and values at flat `slots` of a (2, blocks, block_size, kv, d) cache."""
    flat = cache.view(2, -1, *cache.shape[-2:])  # (2, blocks * block_size, kv, d)
    flat[0, slots] = k.to(cache.dtype)
    flat[1, slots] = v.to(cache.dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: torch.Tensor, meta: AttnMetadata, scale: float
) -> torch.Tensor:
    """Packed new queries/keys/values (T, heads, D) after their keys/values were written → (T, H, D)."""
    if meta.paged_splits:
        return paged_attention.paged_decode(q, cache, meta.block_tables, meta.context_lens, scale, meta.paged_splits)
    if meta.fresh_prefill:
        return fresh_prefill_attention(q, k, v, meta.query_lens, scale)
    if meta.context_lens_host is not None and max(meta.query_lens) > 1:
        return prefix_prefill_attention(q, cache, meta, scale)
    return cached_attention(q, cache, meta, scale)


def fresh_prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_lens: tuple[int, ...], scale: float
) -> torch.Tensor:
    """Causal attention within each packed sequence, one SDPA call per sequence (no padding, no mask tensor)."""
    gqa = k.shape[1] != q.shape[1]
    outs = []
    start = 0
    for n in query_lens:
        qs, ks, vs = (x[start : start + n].transpose(0, 1)[None] for x in (q, k, v))  # (1, heads, n, D)
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=n > 1, scale=scale, enable_gqa=gqa)
        outs.append(out[0].transpose(0, 1))  # (n, H, D)
        start += n
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def prefix_prefill_attention(q: torch.Tensor, cache: torch.Tensor, meta: AttnMetadata, scale: float) -> torch.Tensor:
    """A prefill after a reused prefix: each sequence's new queries over its whole context (the cached prefix and
    the keys just written), causal from the bottom right, one SDPA call per sequence. Keys and values are expanded
    to every query head so that the fused kernels take the bottom-right mask; no (queries x context) mask tensor
    is ever built."""
    flat = cache.view(2, -1, *cache.shape[-2:])  # (2, blocks * block_size, KV, D)
    H, KV, bs = q.shape[1], cache.shape[-2], meta.block_size
    offsets = torch.arange(bs, device=q.device)
    outs, start = [], 0
    for i, (n, ctx) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
        blocks = meta.block_tables[i, : -(-ctx // bs)]
        slots = (blocks[:, None] * bs + offsets).flatten()[:ctx]
        k, v = (x.transpose(0, 1).repeat_interleave(H // KV, dim=0)[None].to(q.dtype) for x in flat[:, slots])
        qs = q[start : start + n].transpose(0, 1)[None]  # (1, H, n, D)
        mask = None if n == ctx else causal_lower_right(n, ctx)
        out = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, is_causal=n == ctx, scale=scale)
        outs.append(out[0].transpose(0, 1))  # (n, H, D)
        start += n
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def cached_attention(q: torch.Tensor, cache: torch.Tensor, meta: AttnMetadata, scale: float) -> torch.Tensor:
    """Causal attention of packed queries (T, H, D) over each sequence's cached context; returns (T, H, D)."""
    plan = meta.plan
    T, H, D = q.shape
    B = len(meta.query_lens)
    kv = cache.view(2, -1, cache.shape[-2], D)[:, plan.slots].to(q.dtype)  # (2, B, max_ctx, kv_heads, D)
    k, v = kv[0], kv[1]
    q_pad = q.view(B, -1, H, D) if plan.q_index is None else q[plan.q_index]  # (B, max_q, H, D)
    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=plan.bias(q.dtype),
        is_causal=plan.causal, scale=scale,
        enable_gqa=k.shape[2] != H,  # grouped-query attention without copying kv heads
    )  # (B, H, max_q, D)
    out = out.transpose(1, 2).reshape(-1, H, D)  # (B * max_q, H, D)
    return out if plan.out_index is None else out[plan.out_index]  # (T, H, D), packed back in the input order


class SelfAttention(nn.Module):
    """Llama-style attention: q/k/v (one fused projection; checkpoints' q_proj/k_proj/v_proj load into its rows),
    grouped-query heads, rotary positions, o_proj."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, bias: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        q, kv = heads * head_dim, kv_heads * head_dim
        self.qkv_proj = FusedLinear(hidden, {"q_proj": q, "k_proj": kv, "v_proj": kv}, bias=bias)
        self.o_proj = nn.Linear(q, hidden, bias=bias)

    def forward(
        self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], meta: AttnMetadata, cache: torch.Tensor
    ) -> torch.Tensor:
        out = attend(self.qkv_proj(x), self.heads, self.kv_heads, self.head_dim, cos_sin, meta, cache)
        return self.o_proj(out)


def attend(
    qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, cos_sin: tuple[torch.Tensor, torch.Tensor],
    meta: AttnMetadata, cache: torch.Tensor,
) -> torch.Tensor:
    """Projected (T, (H + 2 KV) * D) queries/keys/values, heads in order [q | k | v] → (T, H * D) attention output:
    rotary positions, the new keys/values written to `cache`, causal attention over each sequence's context."""
    T, H, KV, D = qkv.shape[0], heads, kv_heads, head_dim
    v = qkv[:, (H + KV) * D :].view(T, KV, D)
    if meta.fused:  # rotary and the cache write in one kernel; the keys come back only where attention reads them
        q, k = fused.rope_and_cache(qkv, *cos_sin, cache, meta.slot_mapping, H, KV, keys=meta.fresh_prefill)
    else:
        qk = Rotary.apply(qkv[:, : (H + KV) * D].view(T, H + KV, D), *cos_sin)  # q and k rotated in one pass
        q, k = qk[:, :H], qk[:, H:]
        write_kv(cache, k, v, meta.slot_mapping)
    return attention(q, k, v, cache, meta, D**-0.5).reshape(T, H * D)
