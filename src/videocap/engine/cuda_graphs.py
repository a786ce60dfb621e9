"""CUDA graphs of one decode step (the whole model forward plus the output head) at bucketed batch sizes.

A decode step of an 8B model launches some 600 kernels; replaying a captured graph costs one launch. Each bucket
is captured the first time a batch of that size (rounded up) decodes, from static input buffers that later steps
fill in place. Rows past the batch are padding: they write their key/value into a scratch block no sequence owns
and attend over one token of it, and their logits are dropped.

Needs the Triton paged decode kernel (its reads follow the block tables and context lengths on the device;
the gather path sizes its tensors from host integers, which a graph would freeze). Prefill always runs eagerly.
"""

from __future__ import annotations

import numpy as np
import torch

from videocap.models.layers import paged_attention
from videocap.models.layers.attention import AttnMetadata

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256)


class DecodeGraphs:
    def __init__(self, model, kv_caches: list[torch.Tensor], *, block_size: int, max_batch: int, max_blocks: int,
                 scratch_block: int, kv_heads: int):
        self.model, self.kv_caches = model, kv_caches
        self.block_size, self.kv_heads = block_size, kv_heads
        self.scratch_slot = scratch_block * block_size  # padding rows write here and read one token of it
        self.scratch_block = scratch_block
        self.buckets = [b for b in BUCKETS if b < max_batch] + [max_batch]
        self.max_batch, self.max_blocks = max_batch, max_blocks
        device = kv_caches[0].device
        # All per-step inputs travel in one copy from pinned host memory: rows ids, positions, slots, lengths.
        self.host = torch.zeros(4, max_batch, dtype=torch.long, pin_memory=True)
        self.host_tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, pin_memory=True)
        self.copied = torch.cuda.Event()  # the host buffers may be rewritten once the last copy has read them
        self.copied.record()
        self.packed = torch.zeros(4, max_batch, dtype=torch.long, device=device)
        self.ids, self.positions, self.slots, self.lens = self.packed
        self.tables = torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def bucket(self, batch: int) -> int:
        return next(b for b in self.buckets if b >= batch)

    def run(self, ids: np.ndarray, positions: np.ndarray, slots: np.ndarray, lens: np.ndarray,
            tables: np.ndarray, device_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step of len(ids) <= max_batch sequences → (B, vocab) logits (a view of the graph's output:
        valid until the next replay). `device_ids`, when given, replace `ids` (tokens still on the device)."""
        B, width = tables.shape
        bucket = self.bucket(B)
        self.copied.synchronize()
        host = self.host.numpy()
        host[:, :B] = (ids, positions, slots, lens)
        host[:, B:bucket] = np.array([[0], [0], [self.scratch_slot], [1]])  # padding rows: one scratch token
        host_tables = self.host_tables.numpy()
        host_tables[:B, :width] = tables
        host_tables[B:bucket, 0] = self.scratch_block
        # The whole (4, max_batch) buffer, a few KiB: a [:, :bucket] slice is not contiguous, and copy_ would stage
        # it through a pageable temporary (no longer one pinned, asynchronous copy). Rows past the bucket are unread.
        self.packed.copy_(self.host, non_blocking=True)
        self.tables[:bucket].copy_(self.host_tables[:bucket], non_blocking=True)
        self.copied.record()
        if device_ids is not None:
            self.ids[:B].copy_(device_ids)
        if bucket not in self.graphs:
            self.capture(bucket)
        graph, out = self.graphs[bucket]
        graph.replay()
        return out[:B]

    def metadata(self, bucket: int) -> AttnMetadata:
        return AttnMetadata(
            query_lens=(1,) * bucket, context_lens=self.lens[:bucket], slot_mapping=self.slots[:bucket],
            block_tables=self.tables[:bucket], block_size=self.block_size,
            paged_splits=paged_attention.num_splits(bucket, self.kv_heads, self.ids.device), fused=True,
        )

    def forward(self, bucket: int, meta: AttnMetadata) -> torch.Tensor:
        hidden = self.model(self.ids[:bucket], self.positions[:bucket], meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    def capture(self, bucket: int) -> None:
        meta = self.metadata(bucket)
        stream = torch.cuda.Stream(self.ids.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture: compiles kernels, builds rotary tables
            self.forward(bucket, meta)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.forward(bucket, meta)
        self.pool = graph.pool()
        self.graphs[bucket] = (graph, out)
