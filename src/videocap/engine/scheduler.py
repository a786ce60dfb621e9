"""Which sequences run in the next step: admission of waiting requests while KV blocks are free (prefill), else
one decode step for every running sequence, preempting the newest request when the cache runs out (it is
recomputed later, never truncated).

Admission takes the longest cached prefix of a sequence's blocks (prefix reuse) and prefills only the rest. The
decode step gives each sequence the block its new token is written to, its own: a block shared with another
beam is copied first (copy on write; the runner copies before the step). The beams of one request (same
`Request` object) are preempted and re-admitted together. Full computed blocks are registered with the
allocator's prefix cache as sequences run, finish or are preempted.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from videocap.engine.kv_cache import BlockAllocator, block_hash, blocks_needed
from videocap.engine.request import FinishReason, Request, Timings

if TYPE_CHECKING:
    from videocap.engine.beam import BeamGroup


@dataclass(eq=False)
class Sequence:
    request: Request
    tokens: list[int]  # prompt, then generated tokens
    seed: int  # keys the request's sampling noise (sampler.py)
    blocks: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose keys/values are in the cache
    image_embeds: torch.Tensor | None = None
    timings: Timings = field(default_factory=Timings)
    decode_start: float = 0.0
    finish_reason: FinishReason | None = None
    hashes: list[bytes | None] = field(default_factory=list)  # content hash of each full block, as far as known
    num_registered: int = 0  # leading blocks offered to the prefix cache
    cached_tokens: int | None = None  # prompt tokens taken from the prefix cache at first admission
    beam: BeamGroup | None = None  # the beam search this sequence is a beam (or the request handle) of
    score: float = 0.0  # a beam's cumulative log-probability

    @property
    def prompt_len(self) -> int:
        return len(self.request.token_ids)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    def penalized_tokens(self) -> list[int]:
        """The ids a repetition penalty applies to: the prompt's text tokens (not image placeholders) and the
        answer so far."""
        mask = self.request.image_mask
        prompt = self.request.token_ids if mask is None else [t for t, image in zip(self.request.token_ids, mask) if not image]
        return prompt + self.generated


@dataclass(frozen=True)
class Batch:
    seqs: list[Sequence]
    prefill: bool
    copies: tuple[tuple[int, int], ...] = ()  # (source, destination) blocks to copy before the step


class Scheduler:
    def __init__(self, allocator: BlockAllocator, block_size: int, max_prefill_tokens: int = 16384,
                 max_num_seqs: int = 256):
        self.allocator = allocator
        self.block_size = block_size
        self.max_prefill_tokens = max_prefill_tokens
        self.max_num_seqs = max_num_seqs  # running at once: the largest decode batch (and CUDA graph)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch:
        for seq in self.running:
            self._register(seq)
        admitted = self._admit()
        if admitted:
            self.running.extend(admitted)
            return Batch(admitted, prefill=True)
        assert self.running, "schedule() called with no work, or a waiting request larger than the cache"
        copies: list[tuple[int, int]] = []
        for seq in list(self.running):  # room for the token each running sequence writes this step
            if seq.blocks:  # else preempted for an earlier one: it must neither take blocks nor preempt
                self._make_room(seq, copies)
        return Batch(list(self.running), prefill=False, copies=tuple(copies))

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        seats = self.max_num_seqs - len(self.running)  # a beam search takes num_beams of them from the start
        while self.waiting:
            request = self.waiting[0].request
            unit = []  # the waiting beams of one request enter together
            for seq in self.waiting:
                if seq.request is not request:
                    break
                unit.append(seq)
            if request.sampling.num_beams > seats and (admitted or self.running):
                break
            tokens = self._allocate(unit, budget if admitted else None)
            if tokens is None:
                break
            seats -= request.sampling.num_beams
            now = time.perf_counter()
            for seq in unit:
                self.waiting.popleft()
                if seq.cached_tokens is None:  # first admission (not a recompute after preemption)
                    seq.timings.queued = now - seq.request.arrival
                    seq.cached_tokens = seq.num_cached
            budget -= tokens
            admitted += unit
        return admitted

    def _allocate(self, unit: list[Sequence], budget: int | None) -> int | None:
        """Blocks for every sequence of `unit`, cached prefix first; the tokens left to prefill, or None (nothing
        taken) when the blocks or the prefill `budget` do not suffice."""
        tokens = 0
        for i, seq in enumerate(unit):
            n = len(seq.tokens)
            hashes = self._hashes(seq, (n - 1) // self.block_size) if self.allocator.prefix_caching else []
            hit = self.allocator.lookup(hashes)  # at least the last token is computed: it gives the logits
            need = blocks_needed(n + 1, self.block_size) - len(hit)
            tokens += n - len(hit) * self.block_size
            if (budget is not None and tokens > budget) or not self.allocator.can_allocate(need):
                self.allocator.release(hit)
                for done in unit[:i]:
                    self.allocator.release(done.blocks)
                    done.blocks, done.num_cached, done.num_registered = [], 0, 0
                return None
            seq.blocks = hit + self.allocator.allocate(need)
            seq.num_cached, seq.num_registered = len(hit) * self.block_size, len(hit)
        return tokens

    def _make_room(self, seq: Sequence, copies: list[tuple[int, int]]) -> None:
        """The block this step writes `seq`'s new token into: present, and referenced by `seq` alone."""
        i = (len(seq.tokens) - 1) // self.block_size
        if i < len(seq.blocks) and self.allocator.refs[seq.blocks[i]] == 1:
            return
        while not self.allocator.can_allocate(1):
            # The engine's length limits let every request grow alone; others' blocks are the ones to take.
            victim = self.preempt_newest(but=seq)  # not inside the assert: `python -O` would skip the call
            assert victim is not None, "a request outgrew the cache on its own"
            # The victim's planned copies write blocks that are free again (and may be handed out next): drop them.
            copies[:] = [(src, dst) for src, dst in copies if self.allocator.refs[dst]]
        [block] = self.allocator.allocate(1)
        if i == len(seq.blocks):
            seq.blocks.append(block)
        else:  # shared with another beam: write into a copy
            copies.append((seq.blocks[i], block))
            self.allocator.release([seq.blocks[i]])
            seq.blocks[i] = block

    def room_without_preempting(self, seq: Sequence, position: int) -> bool:
        """Make sure the block holding `position` of `seq` is present and `seq`'s own, taking a free block if
        needed; False (nothing taken) when that would need a preemption or a copy (look-ahead steps do neither)."""
        i = position // self.block_size
        if i < len(seq.blocks):
            return self.allocator.refs[seq.blocks[i]] == 1
        if i > len(seq.blocks) or not self.allocator.can_allocate(1):
            return False
        seq.blocks += self.allocator.allocate(1)
        return True

    def preempt_newest(self, but: Sequence) -> Sequence | None:
        """Free the blocks of the most recently admitted other request (all its beams); it waits at the front to be
        recomputed."""
        victims = [s for s in self.running if s.request is not but.request]
        if not victims:
            return None
        victim = victims[-1]
        beams = [s for s in self.running if s.request is victim.request]
        for seq in beams:
            self.running.remove(seq)
            self._release(seq)
        self.waiting.extendleft(reversed(beams))
        return victim

    def fork(self, parent: Sequence, token: int) -> Sequence:
        """A new beam: `parent`'s tokens and `token`, sharing `parent`'s blocks (the shared block being written
        is copied first). Not yet running: see `replace`."""
        child = Sequence(
            parent.request, parent.tokens + [token], parent.seed, list(parent.blocks), parent.num_cached,
            parent.image_embeds, parent.timings, parent.decode_start, hashes=list(parent.hashes),
            num_registered=parent.num_registered, cached_tokens=parent.cached_tokens, beam=parent.beam,
        )
        self.allocator.share(child.blocks)
        return child

    def replace(self, old: list[Sequence], new: list[Sequence]) -> None:
        """A beam step: running sequences `old` give way to `new` (some of them, and forks of them); the blocks of
        those left out are released."""
        at = self.running.index(old[0])  # a request's beams run side by side: admitted and replaced together
        assert all(a is b for a, b in zip(self.running[at : at + len(old)], old))
        self.running[at : at + len(old)] = new
        kept = set(map(id, new))
        for seq in old:
            if id(seq) not in kept:
                self._release(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a request its caller gave up on, wherever its sequences are; their blocks are freed."""
        for s in [s for s in self.running if s.request is seq.request]:
            self.finish(s)
        for s in [s for s in self.waiting if s.request is seq.request]:
            self.waiting.remove(s)
        seq.finish_reason = seq.finish_reason or FinishReason.ABORTED

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        self._register(seq)
        self.allocator.release(seq.blocks)
        seq.blocks, seq.num_cached, seq.num_registered = [], 0, 0

    def _register(self, seq: Sequence) -> None:
        """Offer `seq`'s full blocks whose keys/values are computed to the prefix cache."""
        full = seq.num_cached // self.block_size
        if full <= seq.num_registered or not self.allocator.prefix_caching:
            return
        for i, h in enumerate(self._hashes(seq, full)[seq.num_registered :], seq.num_registered):
            self.allocator.register(seq.blocks[i], h)
        seq.num_registered = full

    def _hashes(self, seq: Sequence, n: int) -> list[bytes]:
        """The hashes of `seq`'s first `n` full blocks, fewer where an image without a key ends the chain."""
        bs, mask = self.block_size, seq.request.image_mask
        while len(seq.hashes) < n and (not seq.hashes or seq.hashes[-1] is not None):
            i = len(seq.hashes)
            parent = seq.hashes[-1] if seq.hashes else b""
            seq.hashes.append(block_hash(
                parent, seq.tokens[i * bs : (i + 1) * bs], mask[i * bs : (i + 1) * bs] if mask else None,
                seq.request.image_key,
            ))
        out = seq.hashes[:n]
        return out[: out.index(None)] if None in out else out
