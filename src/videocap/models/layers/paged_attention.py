"""Decode attention over the paged KV cache: a Triton kernel for CUDA (one new query token per sequence).

Each program takes one (sequence, kv head, split): it loads the query heads of that kv head's group together
(grouped-query attention reads each key/value once for the whole group), walks the sequence's block table
BLOCK_N tokens at a time and keeps a running softmax (max, sum, weighted values) in float32. With few sequences
the context is split across programs (flash-decoding) so that every SM streams a share of the cache; a second
kernel merges the splits. Block tables and context lengths are read on the device, so a step needs no host
synchronisation and the kernel can be captured in a CUDA graph.

Does not own the cache layout (attention.py: (2, blocks, block_size, kv_heads, head_dim)) or the choice of
when to use it (the runner decides; CPU and CUDA without Triton use attention.py's gather-and-SDPA path).
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: attention.py falls back to SDPA
    triton = None


@functools.cache
def available() -> bool:
    return triton is not None and torch.cuda.is_available()


def supports(head_dim: int) -> bool:
    """The kernel tiles whole heads: a power of two of at least 16 (tl.dot's smallest inner size)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def num_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Enough programs to give every SM about two (a power of two, at most 32); one when the batch does."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128
    want = -(-2 * sms // (batch * kv_heads))
    return min(32, 1 << max(0, want - 1).bit_length())


def paged_decode(
    q: torch.Tensor, cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
    splits: int, *, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
) -> torch.Tensor:
    """q (B, H, D) one query per sequence; cache (2, blocks, block_size, KV, D) → (B, H, D) in q's dtype."""
    B, H, D = q.shape
    _, _, block_size, KV, _ = cache.shape
    group = H // KV
    group_pad = max(16, triton.next_power_of_2(group))  # tl.dot needs at least 16 rows
    out = torch.empty_like(q)
    k_cache, v_cache = cache[0], cache[1]
    if splits == 1:
        part_ml = part_acc = out  # unused
    else:
        part_ml = torch.empty(B, KV, splits, 2, group, device=q.device, dtype=torch.float32)  # running max, sum
        part_acc = torch.empty(B, KV, splits, group, D, device=q.device, dtype=torch.float32)
    _decode_kernel[(B, KV, splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_ml, part_acc, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        out.stride(0), out.stride(1), GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=D, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, NUM_SPLITS=splits, IEEE=q.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    if splits > 1:
        _merge_kernel[(B, H)](
            part_ml, part_acc, out, out.stride(0), out.stride(1), GROUP=group, HEAD_DIM=D, NUM_SPLITS=splits,
            num_warps=2,
        )
    return out


if triton is not None:

    @triton.jit
    def _decode_kernel(
        q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_ml_ptr, part_acc_ptr, scale,
        stride_qb, stride_qh, stride_cblock, stride_cslot, stride_chead, stride_table, stride_ob, stride_oh,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(lens_ptr + seq)
        chunk = tl.cdiv(tl.cdiv(length, NUM_SPLITS), BLOCK_N) * BLOCK_N  # whole tiles per split
        start = split * chunk
        end = tl.minimum(start + chunk, length)

        g = tl.arange(0, GROUP_PAD)
        d = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + g
        q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=g[:, None] < GROUP, other=0.0)

        m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        s_sum = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid = n < end
            block = tl.load(tables_ptr + seq * stride_table + n // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
            row = block * stride_cblock + (n % BLOCK_SIZE) * stride_cslot + kv_head * stride_chead  # (BLOCK_N,)
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)  # (BLOCK_N, D)
            if IEEE:
                scores = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            scores = tl.where(valid[None, :], scores * scale, float("-inf"))  # (GROUP_PAD, BLOCK_N)
            m_new = tl.maximum(m, tl.max(scores, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            s_sum = s_sum * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new

        if NUM_SPLITS == 1:
            out = acc / s_sum[:, None]
            tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=g[:, None] < GROUP)
        else:
            part = (seq * tl.num_programs(1) + kv_head) * NUM_SPLITS + split  # (B, KV, splits) row-major
            real = g < GROUP
            tl.store(part_ml_ptr + (part * 2) * GROUP + g, m, mask=real)
            tl.store(part_ml_ptr + (part * 2 + 1) * GROUP + g, s_sum, mask=real)
            tl.store(part_acc_ptr + (part * GROUP + g[:, None]) * HEAD_DIM + d[None, :], acc, mask=real[:, None])

    @triton.jit
    def _merge_kernel(
        part_ml_ptr, part_acc_ptr, out_ptr, stride_ob, stride_oh,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
    ):
        """One program per (sequence, query head): all splits' partial results at once."""
        seq = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        g = head % GROUP
        s = tl.arange(0, NUM_SPLITS)
        d = tl.arange(0, HEAD_DIM)
        part = (seq * (tl.num_programs(1) // GROUP) + kv_head) * NUM_SPLITS + s  # (NUM_SPLITS,)
        m = tl.load(part_ml_ptr + (part * 2) * GROUP + g)
        total = tl.load(part_ml_ptr + (part * 2 + 1) * GROUP + g)
        acc = tl.load(part_acc_ptr + (part[:, None] * GROUP + g) * HEAD_DIM + d[None, :])  # (NUM_SPLITS, D)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - tl.max(m, 0)))  # splits past the context weigh nothing
        out = tl.sum(w[:, None] * acc, 0) / tl.sum(w * total, 0)
        tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))
