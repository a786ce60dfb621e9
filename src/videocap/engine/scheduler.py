"""Which sequences run in the next step: admission of waiting requests while KV blocks are free (prefill), else
one decode step for every running sequence, preempting the newest when the cache runs out (it is recomputed
later, never truncated)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from videocap.engine.kv_cache import BlockAllocator, blocks_needed
from videocap.engine.request import FinishReason, Request, Timings


@dataclass
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
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) + len(admitted) < self.max_num_seqs:
            seq = self.waiting[0]
            need = blocks_needed(len(seq.tokens) + 1, self.block_size)
            if not self.allocator.can_allocate(need) or (admitted and len(seq.tokens) > budget):
                break
            self.waiting.popleft()
            seq.blocks = self.allocator.allocate(need)
            seq.timings.queued = time.perf_counter() - seq.request.arrival
            budget -= len(seq.tokens)
            admitted.append(seq)
        if admitted:
            self.running.extend(admitted)
            return Batch(admitted, prefill=True)
        assert self.running, "schedule() called with no work, or a waiting request larger than the cache"
        for seq in list(self.running):  # room for the token each running sequence writes this step
            if seq not in self.running:  # preempted for an earlier one: it must neither take blocks nor preempt
                continue
            while blocks_needed(len(seq.tokens), self.block_size) > len(seq.blocks):
                if self.allocator.can_allocate(1):
                    seq.blocks += self.allocator.allocate(1)
                elif self.preempt_newest(but=seq) is None:
                    break
        return Batch([s for s in self.running], prefill=False)

    def preempt_newest(self, but: Sequence) -> Sequence | None:
        """Free the most recently admitted other sequence's blocks; it waits at the front to be recomputed."""
        victims = [s for s in self.running if s is not but]
        if not victims:
            return None
        victim = victims[-1]
        self.running.remove(victim)
        self.allocator.release(victim.blocks)
        victim.blocks, victim.num_cached = [], 0
        self.waiting.appendleft(victim)
        return victim

    def abort(self, seq: Sequence) -> None:
        """Drop a request its caller gave up on, wherever it is; its blocks are freed."""
        if seq in self.running:
            self.finish(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.finish_reason = seq.finish_reason or FinishReason.ABORTED

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.allocator.release(seq.blocks)
        seq.blocks = []
