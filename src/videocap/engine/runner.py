"""Tensors only: turns a scheduled batch into the model's inputs (packed ids, positions, attention metadata,
image embeddings), owns the KV cache, and returns the logits of each sequence's last position.

The vision encoder runs once per request, for all tiles of all newly admitted requests together. Prefill runs
eagerly; decode on CUDA uses the Triton paged kernel and, unless `eager`, replays a CUDA graph of the step
(cuda_graphs.py). Host-side inputs are built with numpy: at a few hundred sequences, Python lists of block
tables cost milliseconds a step.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from videocap.engine.cuda_graphs import DecodeGraphs
from videocap.engine.kv_cache import BlockAllocator, allocate_kv_cache, num_blocks_for
from videocap.engine.scheduler import Batch, Sequence
from videocap.models.layers import paged_attention
from videocap.models.layers.attention import AttnMetadata


class ModelRunner:
    def __init__(
        self, model, *, block_size: int = 16, gpu_memory_fraction: float = 0.9, max_cache_tokens: int | None = None,
        eager: bool = False, max_num_seqs: int = 256, paged_kernel: bool | None = None, max_prefill_tokens: int = 16384,
    ):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.block_size = block_size
        layers, self.kv_heads, head_dim = model.kv_spec()
        bytes_per_block = 2 * layers * block_size * self.kv_heads * head_dim * param.element_size()
        if paged_kernel is None:
            paged_kernel = self.device.type == "cuda" and paged_attention.available() and paged_attention.supports(head_dim)
        self.paged_kernel = paged_kernel  # and the fused element-wise kernels with it
        reserve = 0
        if self.device.type == "cuda" and max_cache_tokens is None:
            reserve = self.measure_activations(max_prefill_tokens)
        num_blocks = num_blocks_for(
            self.device, bytes_per_block, gpu_memory_fraction=gpu_memory_fraction, max_tokens=max_cache_tokens,
            block_size=block_size, reserve_bytes=reserve,
        )
        # One block more than the allocator hands out: the scratch block that padding rows of a graph write to.
        self.kv_caches = allocate_kv_cache(layers, num_blocks + 1, block_size, self.kv_heads, head_dim, self.device,
                                           self.dtype)
        self.allocator = BlockAllocator(num_blocks)
        self.max_len = min(model.max_context(), self.cache_tokens)
        self.graphs = None
        if self.paged_kernel and not eager:
            self.graphs = DecodeGraphs(
                model, self.kv_caches, block_size=block_size, max_batch=max_num_seqs,
                max_blocks=-(-self.max_len // block_size) + 1, scratch_block=num_blocks, kv_heads=self.kv_heads,
            )

    @torch.inference_mode()
    def measure_activations(self, tokens: int) -> int:
        """Peak memory of the largest step the scheduler may run — a prefill of `tokens` prompt tokens (8 sequences,
        through a scratch cache) and the vision encoder over as many tiles as those prompts could hold — so that
        the KV cache leaves room for it."""
        layers, kv_heads, head_dim = self.model.kv_spec()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        seqs = 8
        per_seq = -(-tokens // seqs)
        blocks = seqs * -(-per_seq // self.block_size)
        caches = allocate_kv_cache(layers, blocks, self.block_size, kv_heads, head_dim, self.device, self.dtype)
        cache_bytes = sum(c.numel() * c.element_size() for c in caches)
        n = per_seq * seqs
        tables = torch.arange(blocks, device=self.device).view(seqs, -1)
        meta = AttnMetadata(
            query_lens=(per_seq,) * seqs, context_lens=torch.full((seqs,), per_seq, device=self.device),
            slot_mapping=torch.arange(n, device=self.device), block_tables=tables, block_size=self.block_size,
            max_context_len=per_seq, context_lens_host=(per_seq,) * seqs, fused=self.paged_kernel,
        )
        hidden = self.model(torch.zeros(n, dtype=torch.long, device=self.device),
                            torch.arange(per_seq, device=self.device).repeat(seqs), meta, caches)
        self.model.compute_logits(hidden[:seqs])
        del hidden, caches
        size = getattr(getattr(getattr(self.model, "cfg", None), "vision", None), "image_size", None)
        if size is not None and hasattr(self.model, "encode_images"):
            tiles = -(-tokens // 256)  # generous: a tile yields 300-600 tokens after merging
            pixels = torch.zeros(tiles, 3, size, size, device=self.device, dtype=self.dtype)
            self.model.encode_images(pixels, [None] * tiles)
            del pixels
        peak = torch.cuda.max_memory_allocated(self.device) - before - cache_bytes
        torch.cuda.empty_cache()
        return int(peak * 1.2) + (256 << 20)  # and some slack for fragmentation, graphs, sampling

    @property
    def cache_tokens(self) -> int:
        return self.allocator.num_blocks * self.block_size

    @torch.inference_mode()
    def run(self, batch: Batch, ids: torch.Tensor | None = None) -> torch.Tensor:
        """One step: (B, vocab) float32 logits at each sequence's last new token. A decode step may take its input
        ids as a device tensor (`ids`, the tokens just sampled, not yet known on the host)."""
        if batch.copies:
            self.copy_blocks(batch.copies)
        logits = self.prefill(batch.seqs) if batch.prefill else self.decode(batch.seqs, ids)
        for seq in batch.seqs:
            seq.num_cached = len(seq.tokens)
        return logits.float()

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        self.encode_images([s for s in seqs if s.image_embeds is None and s.request.images is not None
                            and any((s.request.image_mask or ())[s.num_cached :])])  # not all cached
        ids, positions, slots, q_lens, image_mask = [], [], [], [], []
        for seq in seqs:
            start = seq.num_cached
            n = len(seq.tokens) - start
            ids += seq.tokens[start:]
            pos = np.arange(start, start + n)
            positions.append(pos)
            slots.append(self.slot_of(seq, pos))
            q_lens.append(n)
            mask = seq.request.image_mask or [False] * seq.prompt_len  # image positions lie in the prompt
            image_mask += mask[start:] + [False] * (len(seq.tokens) - max(start, len(mask)))
        context = [len(s.tokens) for s in seqs]
        meta = AttnMetadata(
            query_lens=tuple(q_lens), context_lens=self.tensor(context), slot_mapping=self.tensor(np.concatenate(slots)),
            block_tables=self.tensor(self.block_tables(seqs)), block_size=self.block_size,
            max_context_len=max(context), context_lens_host=tuple(context), fused=self.paged_kernel,
        )
        embeds = mask_t = None
        if any(image_mask):
            embeds = torch.cat([e for e in map(self.uncached_image_embeds, seqs) if e is not None])
            mask_t = torch.tensor(image_mask, device=self.device)
        hidden = self.model(self.tensor(ids), self.tensor(np.concatenate(positions)), meta, self.kv_caches, embeds, mask_t)
        last = torch.tensor(np.cumsum(q_lens) - 1, device=self.device)
        return self.model.compute_logits(hidden[last])

    def decode(self, seqs: list[Sequence], device_ids: torch.Tensor | None = None) -> torch.Tensor:
        lens = np.fromiter((len(s.tokens) for s in seqs), dtype=np.int64, count=len(seqs))
        ids = np.fromiter((s.tokens[-1] for s in seqs), dtype=np.int64, count=len(seqs))
        if device_ids is not None:
            ids[:] = 0  # placeholders on the host; the device tensor replaces them
        positions = lens - 1
        tables = self.block_tables(seqs)
        slots = tables[np.arange(len(seqs)), positions // self.block_size] * self.block_size + positions % self.block_size
        if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
            return self.graphs.run(ids, positions, slots, lens.astype(np.int32), tables.astype(np.int32), device_ids)
        meta = AttnMetadata(
            query_lens=(1,) * len(seqs), context_lens=self.tensor(lens), slot_mapping=self.tensor(slots),
            block_tables=self.tensor(tables), block_size=self.block_size, max_context_len=int(lens.max()),
            context_lens_host=tuple(lens.tolist()),
            paged_splits=paged_attention.num_splits(len(seqs), self.kv_heads, self.device) if self.paged_kernel else 0,
            fused=self.paged_kernel,
        )
        ids_t = device_ids if device_ids is not None else self.tensor(ids)
        hidden = self.model(ids_t, self.tensor(positions), meta, self.kv_caches)
        return self.model.compute_logits(hidden)

    def copy_blocks(self, pairs: tuple[tuple[int, int], ...]) -> None:
        """Copy-on-write of blocks shared by beams: block dst gets src's keys/values in every layer (all reads
        before any write, so the pairs may chain)."""
        src, dst = (torch.tensor(side, device=self.device) for side in zip(*pairs))
        for cache in self.kv_caches:  # (2, blocks, block_size, kv_heads, head_dim)
            cache[:, dst] = cache[:, src]

    @staticmethod
    def uncached_image_embeds(seq: Sequence) -> torch.Tensor | None:
        """The embeddings of `seq`'s image positions from `num_cached` on (a cached prefix holds the earlier ones),
        or None when it has none left to prefill."""
        mask = seq.request.image_mask
        if not mask or not any(mask[seq.num_cached :]):
            return None
        return seq.image_embeds[sum(mask[: seq.num_cached]) :]

    def block_tables(self, seqs: list[Sequence]) -> np.ndarray:
        width = max(len(s.blocks) for s in seqs)
        tables = np.zeros((len(seqs), width), dtype=np.int64)
        for row, seq in zip(tables, seqs):
            row[: len(seq.blocks)] = seq.blocks
        return tables

    def slot_of(self, seq: Sequence, positions: np.ndarray) -> np.ndarray:
        blocks = np.asarray(seq.blocks, dtype=np.int64)
        return blocks[positions // self.block_size] * self.block_size + positions % self.block_size

    def tensor(self, values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.int64)).to(self.device, non_blocking=True)

    def encode_images(self, seqs: list[Sequence]) -> None:
        if not seqs:
            return
        t0 = time.perf_counter()
        pixels = torch.cat([s.request.images.pixels for s in seqs]).to(self.device, self.dtype)
        sizes = [size for s in seqs for size in s.request.images.sizes]
        per_image = self.model.encode_images(pixels, sizes)
        i = 0
        for seq in seqs:
            n = len(seq.request.images.sizes)
            seq.image_embeds = torch.cat(per_image[i : i + n])
            i += n
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for seq in seqs:
            seq.timings.vision = time.perf_counter() - t0
