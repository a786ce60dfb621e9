"""The attention paths attention.py chooses between, against the gather-and-masked-SDPA reference: fresh prefills
(per-sequence causal SDPA on the new keys) and prefills after a reused prefix (per-sequence SDPA over the context
gathered from the cache, bottom-right causal), for packed batches of uneven sequences with grouped heads."""

from __future__ import annotations

import pytest
import torch

from videocap.models.layers.attention import (
    AttnMetadata, attention, cached_attention, fresh_prefill_attention, prefix_prefill_attention, write_kv,
)


def packed_batch(query_lens, context_lens, H=8, KV=2, D=16, bs=16, seed=0):
    """Random queries, keys and values for the new tokens, written into a cache that already holds random
    prefixes; the metadata of that step."""
    g = torch.Generator().manual_seed(seed)
    widths = [-(-c // bs) for c in context_lens]
    blocks = sum(widths) + 2
    cache = torch.randn(2, blocks, bs, KV, D, generator=g)
    order = torch.randperm(blocks, generator=g).tolist()
    tables, slots = [], []
    for n, ctx, w in zip(query_lens, context_lens, widths):
        table = [order.pop() for _ in range(w)]
        tables.append(table + [0] * (max(widths) - w))
        slots += [table[p // bs] * bs + p % bs for p in range(ctx - n, ctx)]
    T = sum(query_lens)
    q, k, v = torch.randn(T, H, D, generator=g), torch.randn(T, KV, D, generator=g), torch.randn(T, KV, D, generator=g)
    meta = AttnMetadata(tuple(query_lens), torch.tensor(context_lens), torch.tensor(slots), torch.tensor(tables), bs,
                        max(context_lens), tuple(context_lens))
    write_kv(cache, k, v, meta.slot_mapping)
    return q, k, v, cache, meta


@pytest.mark.parametrize("query_lens, context_lens", [
    ([5, 40, 1, 17], [37, 40, 30, 17]),  # prefixes of 32, 0, 29 and 0 tokens
    ([33], [65]),
    ([2, 3], [2, 3]),
])
def test_prefix_prefill_equals_the_reference(query_lens, context_lens):
    q, k, v, cache, meta = packed_batch(query_lens, context_lens)
    expected = cached_attention(q, cache, meta, 0.25)
    torch.testing.assert_close(prefix_prefill_attention(q, cache, meta, 0.25), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, cache, meta, 0.25), expected, atol=1e-5, rtol=1e-5)


def test_fresh_prefill_equals_the_reference():
    q, k, v, cache, meta = packed_batch([7, 30, 1], [7, 30, 1], seed=1)
    assert meta.fresh_prefill
    expected = cached_attention(q, cache, meta, 0.25)
    torch.testing.assert_close(fresh_prefill_attention(q, k, v, meta.query_lens, 0.25), expected, atol=1e-5, rtol=1e-5)
