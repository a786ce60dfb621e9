"""The engine loop: schedule → run → postprocess. Requests in, streamed `Output`s out.

Knows nothing of video, prompts or tokenizers: a request is token ids, an image mask and image input. Every
frontend (tasks, CLI, Python API) goes through `Engine.generate`.

Look-ahead (on with CUDA graphs): while every running sequence is decoding and nothing waits, the next decode
step is launched on the tokens just sampled, still on the device, before the host reads them; the host then reads
step N's tokens (a copy that waits for step N only), checks stops and streams them while the GPU runs step N+1.
So the decode loop has no per-token host synchronisation. A sequence that turns out to have stopped at step N
was computed one token too far in step N+1; that token is dropped, its cache slot was its own.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from videocap.engine.beam import BeamGroup, BeamSearch
from videocap.engine.request import FinishReason, Output, Request, SamplingParams
from videocap.engine.runner import ModelRunner
from videocap.engine.sampler import sample, to_device
from videocap.engine.scheduler import Batch, Scheduler, Sequence
from videocap.errors import PromptTooLongError


PENDING = -1  # a look-ahead placeholder in Sequence.tokens: the token is sampled, not yet read by the host


@dataclass
class InFlight:
    """A decode step whose tokens were sampled on the device and are on their way to the host."""

    seqs: list[Sequence]
    tokens: torch.Tensor  # (B,) on the device
    host: torch.Tensor  # (B,) the copy the host reads (pinned on CUDA)
    copied: torch.cuda.Event | None


class Engine:
    def __init__(
        self, model, *, block_size: int = 16, gpu_memory_fraction: float = 0.9, max_cache_tokens: int | None = None,
        eager: bool = False, max_num_seqs: int = 256, max_prefill_tokens: int = 16384, prefix_caching: bool = True,
        look_ahead: bool | None = None,
    ):
        """`gpu_memory_fraction` of the free GPU memory becomes KV cache (or `max_cache_tokens` tokens of it);
        `eager` turns CUDA graphs off; `max_num_seqs` caps the sequences decoding together; `prefix_caching`
        keeps computed blocks for later requests with the same prefix (a chat's next turn, a shared system
        prompt); `look_ahead` launches each decode step before the host has read the last one's tokens (default:
        with CUDA graphs)."""
        self.runner = ModelRunner(
            model, block_size=block_size, gpu_memory_fraction=gpu_memory_fraction, max_cache_tokens=max_cache_tokens,
            eager=eager, max_num_seqs=max_num_seqs, max_prefill_tokens=max_prefill_tokens,
        )
        self.runner.allocator.prefix_caching = prefix_caching
        self.scheduler = Scheduler(self.runner.allocator, block_size, max_prefill_tokens, max_num_seqs)
        self.beams = BeamSearch(self.scheduler)
        # A sequence may grow to what the model or the cache holds (preempting all others, it fits alone).
        self.context = model.max_context()
        self.max_len = self.runner.max_len
        self.block_size = block_size
        self.lock = threading.RLock()  # one step at a time, whichever caller (thread, nested callback) drives it
        self.inboxes: dict[int, deque[Output]] = {}  # outputs for requests a `generate` call is waiting on
        self.look_ahead = self.runner.graphs is not None if look_ahead is None else look_ahead
        self.in_flight: InFlight | None = None
        self.busy_seconds = 0.0  # wall time inside step() (batch reports it over its own wall time: GPU-busy)

    def add(self, request: Request) -> Sequence:
        with self.lock:
            return self._add(request)

    def _add(self, request: Request) -> Sequence:
        n = len(request.token_ids)
        if n >= self.context:  # the model's own limit first: it is the one a user can act on
            raise PromptTooLongError(f"the prompt has {n} tokens; the model's context holds {self.context}")
        if n + 1 > self.length_limit(request.sampling):
            beams = request.sampling.num_beams
            per_beam = f", {self.length_limit(request.sampling)} for each of {beams} beams" if beams > 1 else ""
            raise PromptTooLongError(
                f"the prompt has {n} tokens; the KV cache holds {self.runner.cache_tokens}{per_beam}"
            )
        seed = request.sampling.seed
        # A fresh seed for this request only; the caller's global RNG is left alone.
        seed = secrets.randbits(63) if seed is None else seed % (1 << 63)
        seq = Sequence(request, list(request.token_ids), seed, image_embeds=request.image_embeds)
        if request.sampling.num_beams > 1:
            seq.beam = BeamGroup(seq, self.length_limit(request.sampling))
        self.scheduler.add(seq)
        return seq

    def length_limit(self, params: SamplingParams) -> int:
        """The longest a sequence of this request may grow (prompt + new tokens). The beams of a search must fit
        the cache together, each on its own blocks (after a preemption they are recomputed unshared)."""
        per_beam = self.runner.allocator.num_blocks // params.num_beams * self.block_size
        return min(self.max_len, per_beam)

    def step(self) -> list[Output]:
        with self.lock:
            t0 = time.perf_counter()
            try:
                outputs = self._step()
            finally:
                self.busy_seconds += time.perf_counter() - t0
        for out in outputs:
            if out.request_id in self.inboxes:
                self.inboxes[out.request_id].append(out)
        return outputs

    def _step(self) -> list[Output]:
        if self.in_flight is None:
            batch = self.scheduler.schedule()
            logits = self.runner.run(batch)
            if self.can_look_ahead(batch):
                self.in_flight = self.launch_sampling(batch.seqs, logits)
            else:
                outputs = self.postprocess(batch, logits)
        if self.in_flight is not None:
            current, self.in_flight = self.in_flight, None
            self.in_flight = self.look_ahead_step(current)  # step N+1 runs while the host reads step N
            outputs = self.collect(current)
        return outputs

    def postprocess(self, batch: Batch, logits: torch.Tensor) -> list[Output]:
        plain = [i for i, s in enumerate(batch.seqs) if s.beam is None]
        outputs = []
        if plain:
            if len(plain) == len(batch.seqs):
                outputs = self.sampled(batch.seqs, logits, batch.prefill)
            else:
                outputs = self.sampled([batch.seqs[i] for i in plain], logits[plain], batch.prefill)
        if len(plain) < len(batch.seqs):
            outputs += self.beams.step(batch.seqs, logits, batch.prefill, time.perf_counter())
        return outputs

    def sampled(self, seqs: list[Sequence], logits: torch.Tensor, prefill: bool) -> list[Output]:
        """Sample one token for each of `seqs` (rows of `logits`) and advance them."""
        return self.advance(seqs, self.draw(seqs, logits).tolist(), prefill)

    def draw(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each of `seqs`, on the device."""
        params = [s.request.sampling for s in seqs]
        histories = None
        if any(p.repetition_penalty != 1.0 for p in params):
            histories = [s.penalized_tokens() for s in seqs]
        return sample(logits, params, [s.seed for s in seqs], [len(s.generated) for s in seqs], histories)

    # --- look-ahead decoding ----------------------------------------------------------------------------------

    def can_look_ahead(self, batch: Batch) -> bool:
        """A decode step of every running sequence, nothing waiting, plain sampling: the next step is known."""
        return (
            self.look_ahead and not batch.prefill and not self.scheduler.waiting
            and len(batch.seqs) == len(self.scheduler.running)
            and all(s.beam is None and s.request.sampling.repetition_penalty == 1.0 for s in batch.seqs)
        )

    def launch_sampling(self, seqs: list[Sequence], logits: torch.Tensor) -> InFlight:
        tokens = self.draw(seqs, logits)
        if tokens.device.type != "cuda":
            return InFlight(seqs, tokens, tokens, None)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return InFlight(seqs, tokens, host, copied)

    def look_ahead_step(self, current: InFlight) -> InFlight | None:
        """Launch the decode step after `current` on its device tokens, for the sequences sure to go on (a stop token
        is not known yet; the length limits are). None when that step cannot be planned without the host."""
        if not self.look_ahead or self.scheduler.waiting:
            return None
        rows = [
            i for i, s in enumerate(current.seqs)
            if s.finish_reason is None and len(s.generated) + 1 < s.request.sampling.max_new_tokens
            and len(s.tokens) + 1 < self.max_len
        ]
        if not rows or len(rows) != len(self.scheduler.running):
            return None  # others run too (or none goes on): the next step is the scheduler's to plan
        seqs = [current.seqs[i] for i in rows]
        if not all(self.scheduler.room_without_preempting(s, len(s.tokens)) for s in seqs):
            return None
        for seq in seqs:
            seq.tokens.append(PENDING)  # the token `current` sampled: known on the device only, for now
        ids = current.tokens  # (B,) on the device
        if len(rows) < len(current.seqs):
            ids = ids[to_device(rows, torch.long, ids.device)]
        try:
            logits = self.runner.run(Batch(seqs, prefill=False), ids)
            return self.launch_sampling(seqs, logits)
        except BaseException:  # e.g. out of memory: leave the sequences as the plain loop would find them
            for seq in seqs:
                seq.tokens.pop()
                seq.num_cached = min(seq.num_cached, len(seq.tokens))
            raise

    def collect(self, current: InFlight) -> list[Output]:
        """Read `current`'s tokens on the host and advance its sequences (those still running)."""
        if current.copied is not None:
            current.copied.synchronize()
        tokens = current.host.tolist()
        live = [(s, t) for s, t in zip(current.seqs, tokens) if s.finish_reason is None]
        return self.advance([s for s, _ in live], [t for _, t in live], prefill=False)

    def advance(self, seqs: list[Sequence], tokens: list[int], prefill: bool) -> list[Output]:
        """Append each sequence's new token (or fill in its look-ahead placeholder), end those that stop."""
        now = time.perf_counter()
        outputs = []
        for seq, token in zip(seqs, tokens):
            params = seq.request.sampling
            if prefill and not seq.generated:
                seq.timings.prefill = now - seq.request.arrival - seq.timings.queued
                seq.timings.first_token = now - seq.request.arrival
                seq.decode_start = now
            new = []
            pending = seq.tokens[-1] == PENDING
            if token in params.stop_token_ids:
                seq.finish_reason = FinishReason.STOP
                if pending:  # the look-ahead step went one token too far for this one: drop its placeholder
                    seq.tokens.pop()
                    seq.num_cached = min(seq.num_cached, len(seq.tokens))
            else:
                if pending:
                    seq.tokens[-1] = token
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
                    seq.timings, seq.image_embeds if finished else None, seq.cached_tokens or 0,
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
                    if not any(inboxes):
                        return
                    continue  # another caller's step finished one while this call was paused at a yield
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
