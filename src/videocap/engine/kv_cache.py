"""The KV cache: one tensor per layer shaped (2, blocks, block_size, kv_heads, head_dim), and the allocator that
hands blocks to sequences. Sized once, from free GPU memory or a token budget on CPU; never grown."""

from __future__ import annotations

import math

import torch


class BlockAllocator:
    def __init__(self, num_blocks: int):
        self.free = list(range(num_blocks - 1, -1, -1))
        self.num_blocks = num_blocks

    def can_allocate(self, n: int) -> bool:
        return len(self.free) >= n

    def allocate(self, n: int) -> list[int]:
        assert self.can_allocate(n), "caller checks can_allocate first"
        return [self.free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))


def blocks_needed(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)


def num_blocks_for(
    device: torch.device, bytes_per_block: int, *, gpu_memory_fraction: float, max_tokens: int | None, block_size: int
) -> int:
    """Blocks that fit: `max_tokens` when given; on CUDA otherwise `gpu_memory_fraction` of the free memory."""
    if max_tokens is not None:
        return blocks_needed(max_tokens, block_size) + 1
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, int(free * gpu_memory_fraction) // bytes_per_block)
    return blocks_needed(32768, block_size) + 1  # CPU default: room for a few long prompts


def allocate_kv_cache(
    num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> list[torch.Tensor]:
    return [torch.zeros(2, num_blocks, block_size, kv_heads, head_dim, device=device, dtype=dtype) for _ in range(num_layers)]
