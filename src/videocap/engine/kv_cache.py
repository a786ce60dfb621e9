"""The KV cache: one tensor per layer shaped (2, blocks, block_size, kv_heads, head_dim), and the allocator that
hands blocks to sequences. Sized once, from free GPU memory or a token budget on CPU; never grown.

Blocks are reference-counted: the beams of one request share their prompt's blocks, and requests with a common
prefix share its full blocks. A full block whose keys/values are computed can be registered under the hash of its
content and everything before it (`block_hash`); when its last user lets go it stays cached, unreferenced, and a
later sequence with the same prefix takes it instead of recomputing it (`lookup`). Cached blocks are handed out
again, least recently used first, only once no never-used block is left. Knows nothing of sequences or scheduling.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import OrderedDict

import torch


class BlockAllocator:
    def __init__(self, num_blocks: int, *, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.prefix_caching = prefix_caching
        self.refs = [0] * num_blocks
        self.free = list(range(num_blocks - 1, -1, -1))  # unreferenced and holding nothing reusable; pop() = next
        self.cached: OrderedDict[int, None] = OrderedDict()  # unreferenced registered blocks, least recent first
        self.hash_of: dict[int, bytes] = {}
        self.block_of: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks `allocate` can hand out: never-used ones and cached ones nobody references."""
        return len(self.free) + len(self.cached)

    def can_allocate(self, n: int) -> bool:
        return self.num_free >= n

    def allocate(self, n: int) -> list[int]:
        """`n` blocks, each referenced once, contents undefined (a cached block loses its registration)."""
        assert self.can_allocate(n), "caller checks can_allocate first"
        out = []
        for _ in range(n):
            if self.free:
                block = self.free.pop()
            else:
                block, _ = self.cached.popitem(last=False)
                del self.block_of[self.hash_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def share(self, blocks: list[int]) -> None:
        """One more reference to each of `blocks` (a forked beam)."""
        for block in blocks:
            assert self.refs[block] > 0, "only a referenced block can be shared"
            self.refs[block] += 1

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each of `blocks`. Unreferenced registered blocks stay cached; the later blocks of
        a sequence are the first to go (released in reverse, they are the least recently used)."""
        for block in reversed(blocks):
            assert self.refs[block] > 0, f"block {block} released more often than referenced"
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.hash_of:
                    self.cached[block] = None
                else:
                    self.free.append(block)

    def lookup(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes`, each now referenced once more by the caller."""
        out = []
        for h in hashes:
            block = self.block_of.get(h)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.cached[block]
            self.refs[block] += 1
            out.append(block)
        return out

    def register(self, block: int, h: bytes) -> None:
        """`block` is full and its keys/values computed: offer it to later `lookup`s of `h`. The first block
        registered for a content keeps it (a duplicate computed alongside it is freed as usual)."""
        if self.prefix_caching and block not in self.hash_of and h not in self.block_of:
            assert self.refs[block] > 0, "register a block while holding it"
            self.hash_of[block] = h
            self.block_of[h] = block

    def check(self) -> None:
        """Internal consistency (tests): every block is exactly one of referenced, free or cached."""
        free, cached = set(self.free), set(self.cached)
        assert len(free) == len(self.free) and not free & cached
        for block, refs in enumerate(self.refs):
            assert refs >= 0 and (refs > 0) + (block in free) + (block in cached) == 1, f"block {block}"
            assert block not in cached or block in self.hash_of
        assert all(self.block_of[h] == b for b, h in self.hash_of.items()) and len(self.block_of) == len(self.hash_of)


def block_hash(parent: bytes, tokens: list[int], image_mask: list[bool] | None, image_key: bytes | None) -> bytes | None:
    """The identity of a full block given everything before it (`parent`: the previous block's hash, b"" for the
    first): its token ids and, where it holds image positions (which carry a placeholder id), which positions those
    are and the image's identity `image_key`. None for image positions without a key: such a block is not shared."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", tokens).tobytes())
    if image_mask is not None and any(image_mask):
        if image_key is None:
            return None
        h.update(bytes(image_mask))
        h.update(image_key)
    return h.digest()


def blocks_needed(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)


def num_blocks_for(
    device: torch.device, bytes_per_block: int, *, gpu_memory_fraction: float, max_tokens: int | None, block_size: int,
    reserve_bytes: int = 0,
) -> int:
    """Blocks that fit: `max_tokens` when given; on CUDA otherwise `gpu_memory_fraction` of the free memory less
    `reserve_bytes` (what the largest prefill step needs for its activations)."""
    if max_tokens is not None:
        return blocks_needed(max_tokens, block_size) + 1
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, (int(free * gpu_memory_fraction) - reserve_bytes) // bytes_per_block)
    return blocks_needed(32768, block_size) + 1  # CPU default: room for a few long prompts


def allocate_kv_cache(
    num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> list[torch.Tensor]:
    return [torch.zeros(2, num_blocks, block_size, kv_heads, head_dim, device=device, dtype=dtype) for _ in range(num_layers)]
