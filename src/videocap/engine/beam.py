"""Beam search with transformers' semantics (`GenerationMixin._beam_search`, transformers 5): the engine runs the
beams of a request as sequences sharing its blocks; this file picks, after each step, which continuations live on.

Per step of a request with `num_beams` = N live beams that have generated g tokens each:
- candidates: the top K = max(2, 1 + number of stop ids) * N of (beam, token) over beams x vocab, by the beam's
  cumulative log-probability plus the token's log-softmax (float32, as transformers adds them);
- a candidate among the first N whose token is a stop id, or any of the first N once g + 1 reaches
  max_new_tokens (or the engine's length limit), becomes a finished hypothesis scored
  sum_logprobs / (g + 1) ** length_penalty — the length counts the new tokens, the stop token included
  (transformers 4.x before the 2024 rewrite divided by the whole sequence, prompt included); the best N are kept;
- the first N candidates that do not finish are the next beams;
- the search ends when every candidate finishes (length), or when N hypotheses are finished and either
  `early_stopping` is set or the best running beam's score / (g + 1) ** length_penalty cannot beat the worst of
  them. The answer is the best hypothesis (its stop token left out).
The first step has one beam (the prompt), as transformers' -1e9 scores for beams 1..N-1 amount to.

Beams are scored on the logits as they come (repetition penalty 1.0); there is nothing to stream before the end,
so a beam request yields a single, final output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videocap.engine.request import FinishReason, Output
from videocap.engine.scheduler import Scheduler, Sequence


@dataclass
class Hypothesis:
    score: float
    tokens: list[int]  # new tokens, without the stop token
    reason: FinishReason


@dataclass(eq=False)
class BeamGroup:
    """The beam search of one request. `root` is the request's handle (the sequence `Engine.add` returned)."""

    root: Sequence
    max_len: int  # the engine's limit on prompt + new tokens for this request
    beams: list[Sequence] = field(default_factory=list)  # live beams, best first
    finished: list[Hypothesis] = field(default_factory=list)  # at most num_beams, best first
    steps: int = 0
    decode_start: float = 0.0

    def __post_init__(self):
        self.beams = [self.root]


class BeamSearch:
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def step(self, seqs: list[Sequence], logits: torch.Tensor, prefill: bool, now: float) -> list[Output]:
        """Advance every beam search with beams among `seqs` (the rows of the (B, V) float32 `logits`)."""
        row = {id(s): i for i, s in enumerate(seqs)}
        groups = list({id(s.beam): s.beam for s in seqs if s.beam is not None}.values())
        assert sum(len(g.beams) for g in groups) == sum(s.beam is not None for s in seqs), "all beams step together"
        buckets: dict[tuple[int, int], list[BeamGroup]] = {}  # searches of equal shape share one set of kernels
        for group in groups:
            params = group.root.request.sampling
            k = min(max(2, 1 + len(params.stop_token_ids)) * params.num_beams, len(group.beams) * logits.shape[-1])
            buckets.setdefault((len(group.beams), k), []).append(group)
        device, picked = logits.device, []
        for (n, k), bucket in buckets.items():
            rows = torch.tensor([row[id(b)] for g in bucket for b in g.beams], device=device)
            logp = torch.log_softmax(logits[rows].float(), dim=-1).view(len(bucket), n, -1)  # (G, beams, V)
            cum = torch.tensor([[b.score for b in g.beams] for g in bucket], dtype=torch.float32, device=device)
            values, index = torch.topk((logp + cum[..., None]).view(len(bucket), -1), k)  # (G, k)
            # Hypothesis scores as transformers computes them: float32 divided by (new tokens) ** length_penalty.
            denom = [(len(g.beams[0].generated) + 1) ** g.root.request.sampling.length_penalty for g in bucket]
            scaled = values / torch.tensor(denom, dtype=torch.float32, device=device)[:, None]
            picked.append(torch.stack([values.double(), index.double(), scaled.double()], 1))  # (G, 3, k), exact
        host = [p.tolist() for p in picked]  # one transfer per bucket
        outputs = []
        for bucket, rows in zip(buckets.values(), host):
            for group, (values, index, scaled) in zip(bucket, rows):
                out = self._advance(group, list(zip(values, map(int, index), scaled)), logits.shape[-1], prefill, now)
                if out is not None:
                    outputs.append(out)
        return outputs

    def _advance(
        self, group: BeamGroup, cands: list[tuple[float, int, float]], vocab: int, prefill: bool, now: float
    ) -> Output | None:
        root, params = group.root, group.root.request.sampling
        n = params.num_beams
        if group.steps == 0 and prefill:
            root.timings.prefill = now - root.request.arrival - root.timings.queued
            root.timings.first_token = now - root.request.arrival
            group.decode_start = now
        group.steps += 1
        length = len(group.beams[0].generated) + 1  # new tokens of every candidate
        at_length = length >= params.max_new_tokens
        at_limit = at_length or len(group.beams[0].tokens) + 1 >= group.max_len
        running: list[tuple[Sequence, int, float, float]] = []  # parent, token, cumulative score, scaled score
        for rank, (value, index, scaled) in enumerate(cands):
            beam, token = divmod(index, vocab)
            parent = group.beams[beam]
            stop = token in params.stop_token_ids
            if stop or at_limit:
                if rank < n:  # only the top num_beams candidates may become hypotheses
                    reason = FinishReason.STOP if stop else FinishReason.LENGTH if at_length else FinishReason.CONTEXT
                    self._add_hypothesis(group, Hypothesis(scaled, parent.generated + ([] if stop else [token]), reason))
            elif len(running) < n:
                running.append((parent, token, value, scaled))
        full = len(group.finished) >= n
        if at_limit or not running or (full and (params.early_stopping or running[0][3] <= group.finished[-1].score)):
            return self._finish(group, now)
        self._reorder(group, running)
        return None

    @staticmethod
    def _add_hypothesis(group: BeamGroup, hyp: Hypothesis) -> None:
        n = group.root.request.sampling.num_beams
        if len(group.finished) < n or hyp.score > group.finished[-1].score:
            group.finished.append(hyp)
            group.finished.sort(key=lambda h: -h.score)  # stable: an earlier hypothesis wins a tie
            del group.finished[n:]

    def _reorder(self, group: BeamGroup, running: list[tuple[Sequence, int, float, float]]) -> None:
        """The chosen continuations become the beams: a parent's first child is the parent itself, extended in
        place; further children are forks sharing its blocks (forked before any parent grows)."""
        taken: set[int] = set()
        children = []
        for parent, token, value, _ in running:
            reuse = id(parent) not in taken
            taken.add(id(parent))
            children.append((parent if reuse else self.scheduler.fork(parent, token), token, value, reuse))
        for child, token, value, reuse in children:
            if reuse:
                child.tokens.append(token)
            child.score = value
        beams = [child for child, *_ in children]
        self.scheduler.replace(group.beams, beams)
        group.beams = beams

    def _finish(self, group: BeamGroup, now: float) -> Output:
        for beam in group.beams:
            self.scheduler.finish(beam)
        group.beams = []
        root, best = group.root, group.finished[0]
        root.tokens = list(root.request.token_ids) + best.tokens
        root.finish_reason = best.reason
        if group.steps > 1 and now > group.decode_start:
            root.timings.decode_tokens_per_s = (group.steps - 1) / (now - group.decode_start)  # beam steps per second
        return Output(
            root.request.request_id, list(best.tokens), list(best.tokens), root.prompt_len, True, best.reason,
            root.timings, root.image_embeds, cached_tokens=root.cached_tokens or 0,
        )
