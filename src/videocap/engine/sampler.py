"""Choosing the next token from logits: greedy, temperature, top-k, top-p, per-request seeds. Pure functions."""

from __future__ import annotations

import torch

from videocap.engine.request import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> torch.Tensor:
    """(B, V) logits → (B,) token ids, row b drawn as `params[b]` asks."""
    greedy = logits.argmax(dim=-1)
    if all(p.greedy for p in params):
        return greedy
    out = greedy.clone()
    for b, (p, g) in enumerate(zip(params, generators)):
        if p.greedy:
            continue
        row = logits[b].float()
        probs = filtered_probs((row - row.max()) / p.temperature, p.top_k, p.top_p)  # max first: no inf/inf
        out[b] = torch.multinomial(probs, 1, generator=g)[0]
    return out


def filtered_probs(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Softmax over the tokens that survive top-k, then the smallest prefix reaching top-p mass."""
    if top_k and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= top_p] = 0  # keep the first token that crosses top_p, drop the rest
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs / probs.sum()
