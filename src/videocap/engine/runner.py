"""Tensors only: turns a scheduled batch into the model's inputs (packed ids, positions, attention metadata,
image embeddings), owns the KV cache, and returns the logits of each sequence's last position.

The vision encoder runs once per request, for all tiles of all newly admitted requests together.
"""

from __future__ import annotations

import time

import torch

from videocap.engine.kv_cache import BlockAllocator, allocate_kv_cache, num_blocks_for
from videocap.engine.scheduler import Batch, Sequence
from videocap.models.layers.attention import AttnMetadata


class ModelRunner:
    def __init__(
        self, model, *, block_size: int = 16, gpu_memory_fraction: float = 0.9, max_cache_tokens: int | None = None
    ):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.block_size = block_size
        layers, kv_heads, head_dim = model.kv_spec()
        bytes_per_block = 2 * layers * block_size * kv_heads * head_dim * param.element_size()
        num_blocks = num_blocks_for(
            self.device, bytes_per_block, gpu_memory_fraction=gpu_memory_fraction, max_tokens=max_cache_tokens,
            block_size=block_size,
        )
        self.kv_caches = allocate_kv_cache(layers, num_blocks, block_size, kv_heads, head_dim, self.device, self.dtype)
        self.allocator = BlockAllocator(num_blocks)

    @property
    def cache_tokens(self) -> int:
        return self.allocator.num_blocks * self.block_size

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """One step: (B, vocab) float32 logits at each sequence's last new token."""
        if batch.prefill:
            self.encode_images([s for s in batch.seqs if s.image_embeds is None and s.request.images is not None])
        ids, positions, slots, q_lens, image_mask = [], [], [], [], []
        for seq in batch.seqs:
            start = seq.num_cached if batch.prefill else len(seq.tokens) - 1
            new = seq.tokens[start:]
            ids += new
            positions += range(start, start + len(new))
            slots += [seq.blocks[p // self.block_size] * self.block_size + p % self.block_size for p in range(start, start + len(new))]
            q_lens.append(len(new))
            if batch.prefill:  # image positions lie in the prompt; a decode step has none
                mask = seq.request.image_mask or [False] * seq.prompt_len
                image_mask += mask[start:] + [False] * (len(seq.tokens) - max(start, len(mask)))
        width = max(len(s.blocks) for s in batch.seqs)
        tables = [s.blocks + [0] * (width - len(s.blocks)) for s in batch.seqs]
        meta = AttnMetadata(
            query_lens=tuple(q_lens),
            context_lens=torch.tensor([len(s.tokens) for s in batch.seqs], device=self.device),
            slot_mapping=torch.tensor(slots, device=self.device),
            block_tables=torch.tensor(tables, device=self.device),
            block_size=self.block_size,
            max_context_len=max(len(s.tokens) for s in batch.seqs),
        )
        embeds = mask_t = None
        if any(image_mask):
            embeds = torch.cat([s.image_embeds for s in batch.seqs if s.image_embeds is not None and s.num_cached == 0])
            mask_t = torch.tensor(image_mask, device=self.device)
        hidden = self.model(
            torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), meta, self.kv_caches,
            embeds, mask_t,
        )
        last = torch.tensor(q_lens, device=self.device).cumsum(0) - 1
        for seq in batch.seqs:
            seq.num_cached = len(seq.tokens)
        return self.model.compute_logits(hidden[last]).float()

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
