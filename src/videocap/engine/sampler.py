"""Choosing the next token from logits, on the device, batched, with no host synchronisation: greedy,
temperature, top-k, top-p, repetition penalty and per-request seeds. Pure functions.

Randomness is counter-based: a row's noise is a hash of (request seed, step, token id), turned into Gumbel noise,
and the sampled token is the argmax of the filtered, temperature-scaled logits plus that noise (the Gumbel-max
trick draws exactly from the softmax). So a request's draws depend on its own seed alone — not on the batch it
shares a step with, on the device's global RNG, or on the order requests arrive — and cost no per-row generator.
"""

from __future__ import annotations

import torch

from videocap.engine.request import SamplingParams

_M32 = 0xFFFFFFFF


def sample(
    logits: torch.Tensor, params: list[SamplingParams], seeds: list[int], steps: list[int],
    histories: list[list[int]] | None = None,
) -> torch.Tensor:
    """(B, V) float32 logits → (B,) token ids on the same device, row b drawn as `params[b]` asks.

    `seeds[b]` and `steps[b]` (tokens the request generated before this one) key row b's noise; `histories[b]`
    (the ids a repetition penalty applies to) is needed only for rows whose penalty is not 1.
    """
    if any(p.repetition_penalty != 1.0 for p in params):
        logits = apply_repetition_penalty(logits, params, histories)
    if all(p.greedy for p in params):
        return logits.argmax(dim=-1)
    device = logits.device
    rows = [b for b, p in enumerate(params) if not p.greedy]
    index = to_device(rows, torch.long, device)
    sub = [params[b] for b in rows]
    temperature = to_device([p.temperature for p in sub], torch.float32, device)
    scaled = logits[index] / temperature[:, None]
    if any(p.top_k or p.top_p < 1.0 for p in sub):
        top_k = to_device([p.top_k for p in sub], torch.long, device)
        top_p = to_device([p.top_p for p in sub], torch.float32, device)
        scaled = filter_logits(scaled, top_k, top_p)
    row_seeds = to_device([seeds[b] for b in rows], torch.long, device)
    noise = gumbel_noise(row_seeds, to_device([steps[b] for b in rows], torch.long, device), logits.shape[-1])
    out = logits.argmax(dim=-1)
    out[index] = (scaled + noise).argmax(dim=-1)
    return out


def filter_logits(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """(B, V) → the same with -inf where a token falls outside row b's top-k (0 = no cut), then outside the
    smallest prefix of the renormalised distribution reaching top-p mass."""
    V = scaled.shape[-1]
    ranked, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=scaled.device)
    k = torch.where(top_k > 0, top_k, V)
    ranked = ranked.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
    probs = ranked.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    ranked = ranked.masked_fill(before >= top_p[:, None], float("-inf"))  # keeps the token that crosses top_p
    return torch.full_like(scaled, float("-inf")).scatter(1, order, ranked)


def filtered_probs(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row's sampling distribution after top-k and top-p (the filter `sample` applies, as probabilities)."""
    row = filter_logits(scaled[None], torch.tensor([top_k]), torch.tensor([top_p]))[0]
    return row.softmax(dim=-1)


def apply_repetition_penalty(
    logits: torch.Tensor, params: list[SamplingParams], histories: list[list[int]] | None
) -> torch.Tensor:
    """transformers' rule: a seen token's logit is divided by the penalty when positive, multiplied when not."""
    assert histories is not None, "a repetition penalty needs each row's history"
    logits = logits.clone()
    for b, p in enumerate(params):
        if p.repetition_penalty == 1.0 or not histories[b]:
            continue
        ids = to_device(sorted(set(histories[b])), torch.long, logits.device)
        seen = logits[b, ids]
        logits[b, ids] = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    return logits


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on `device`, without a host synchronisation: `torch.tensor(values,
    device="cuda")` copies from pageable memory and waits for the stream to drain (every step queued before it),
    which would stall a look-ahead step; a pinned, non-blocking copy is ordered on the stream instead."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(R,) int64 seeds and steps → (R, vocab) float32 Gumbel(0, 1) noise, a pure function of its inputs."""
    row = _mix((seeds & _M32) ^ _mix(((seeds >> 32) & _M32) ^ _mix(steps & _M32)))  # (R,)
    bits = _mix(row[:, None] ^ torch.arange(vocab, device=seeds.device)[None, :])  # (R, vocab), 32 bits each
    u = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # uniform in (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values below 2**32; the products
    stay below 2**59, so nothing overflows."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x
