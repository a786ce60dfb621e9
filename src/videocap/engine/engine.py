"""The engine loop: schedule → run → postprocess. Requests in, streamed `Output`s out.

Knows nothing of video, prompts or tokenizers: a request is token ids, an image mask and image input. Every
frontend (tasks, CLI, Python API) goes through `Engine.generate`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import torch

from videocap.engine.kv_cache import blocks_needed
from videocap.engine.request import FinishReason, Output, Request
from videocap.engine.runner import ModelRunner
from videocap.engine.sampler import sample
from videocap.engine.scheduler import Batch, Scheduler, Sequence
from videocap.errors import PromptTooLongError


class Engine:
    def __init__(
        self, model, *, block_size: int = 16, gpu_memory_fraction: float = 0.9, max_cache_tokens: int | None = None,
        eager: bool = False, max_num_seqs: int = 256, max_prefill_tokens: int = 16384,
    ):
        """`gpu_memory_fraction` of the free GPU memory becomes KV cache (or `max_cache_tokens` tokens of it);
        `eager` turns CUDA graphs off; `max_num_seqs` caps the sequences decoding together."""
        self.runner = ModelRunner(
            model, block_size=block_size, gpu_memory_fraction=gpu_memory_fraction, max_cache_tokens=max_cache_tokens,
            eager=eager, max_num_seqs=max_num_seqs,
        )
        self.scheduler = Scheduler(self.runner.allocator, block_size, max_prefill_tokens, max_num_seqs)
        # A sequence may grow to what the model or the cache holds (preempting all others, it fits alone).
        self.context = model.max_context()
        self.max_len = self.runner.max_len
        self.block_size = block_size
        self.lock = threading.RLock()  # one step at a time, whichever caller (thread, nested callback) drives it
        self.inboxes: dict[int, deque[Output]] = {}  # outputs for requests a `generate` call is waiting on

    def add(self, request: Request) -> Sequence:
        with self.lock:
            return self._add(request)

    def _add(self, request: Request) -> Sequence:
        n = len(request.token_ids)
        if n >= self.context:  # the model's own limit first: it is the one a user can act on
            raise PromptTooLongError(f"the prompt has {n} tokens; the model's context holds {self.context}")
        if blocks_needed(n + 1, self.block_size) > self.runner.allocator.num_blocks:
            raise PromptTooLongError(f"the prompt has {n} tokens; the KV cache holds {self.runner.cache_tokens}")
        seed = request.sampling.seed
        # A fresh seed for this request only; the caller's global RNG is left alone.
        seed = secrets.randbits(63) if seed is None else seed % (1 << 63)
        seq = Sequence(request, list(request.token_ids), seed, image_embeds=request.image_embeds)
        self.scheduler.add(seq)
        return seq

    def step(self) -> list[Output]:
        with self.lock:
            batch = self.scheduler.schedule()
            logits = self.runner.run(batch)
            outputs = self.postprocess(batch, logits)
        for out in outputs:
            if out.request_id in self.inboxes:
                self.inboxes[out.request_id].append(out)
        return outputs

    def postprocess(self, batch: Batch, logits: torch.Tensor) -> list[Output]:
        params = [s.request.sampling for s in batch.seqs]
        histories = None
        if any(p.repetition_penalty != 1.0 for p in params):
            histories = [s.penalized_tokens() for s in batch.seqs]
        tokens = sample(logits, params, [s.seed for s in batch.seqs], [len(s.generated) for s in batch.seqs],
                        histories).tolist()
        now = time.perf_counter()
        outputs = []
        for seq, token in zip(batch.seqs, tokens):
            params = seq.request.sampling
            if batch.prefill and not seq.generated:
                seq.timings.prefill = now - seq.request.arrival - seq.timings.queued
                seq.timings.first_token = now - seq.request.arrival
                seq.decode_start = now
            new = []
            if token in params.stop_token_ids:
                seq.finish_reason = FinishReason.STOP
            else:
                seq.tokens.append(token)
                new = [token]
                if len(seq.generated) >= params.max_new_tokens:
                    seq.finish_reason = FinishReason.LENGTH
                elif len(seq.tokens) >= self.max_len:
                    seq.finish_reason = FinishReason.CONTEXT
            finished = seq.finish_reason is not None
            if finished:
                self.scheduler.finish(seq)
                steps = len(seq.generated) - 1
                if steps > 0 and now > seq.decode_start:
                    seq.timings.decode_tokens_per_s = steps / (now - seq.decode_start)
            outputs.append(
                Output(
                    seq.request.request_id, list(seq.generated), new, seq.prompt_len, finished, seq.finish_reason,
                    seq.timings, seq.image_embeds if finished else None,
                )
            )
        return outputs

    def generate(self, requests: Iterable[Request]) -> Iterator[Output]:
        """Run `requests` to completion, yielding their outputs step by step (streaming), and only theirs.

        Several callers may share the engine (threads, or a callback that asks again): every step advances
        all running requests, and each output reaches the `generate` waiting for it. If the caller stops early
        (an exception in its loop, Ctrl-C, closing or dropping the generator), its unfinished requests are
        aborted and their cache blocks freed: nothing of them leaks into later generations.
        """
        seqs: list[Sequence] = []
        ids: list[int] = []
        try:
            for request in requests:  # one that cannot be added aborts those added before it
                ids.append(request.request_id)
                self.inboxes[request.request_id] = deque()
                seqs.append(self.add(request))
            inboxes = [self.inboxes[seq.request.request_id] for seq in seqs]
            while True:
                for inbox in inboxes:
                    while inbox:
                        yield inbox.popleft()
                if all(seq.finish_reason is not None for seq in seqs):
                    return
                self.step()
        finally:
            with self.lock:
                for seq in seqs:
                    if seq.finish_reason is None:
                        self.scheduler.abort(seq)
            for request_id in ids:
                self.inboxes.pop(request_id, None)

    def run(self, request: Request) -> Output:
        """One request to completion; returns its final output."""
        final = None
        for out in self.generate([request]):
            final = out
        assert final is not None and final.finished
        return final
