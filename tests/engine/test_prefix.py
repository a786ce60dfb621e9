"""Prefix reuse: a request whose prompt starts like an earlier one takes that prefix's cached KV blocks and
prefills only the rest — with the same logits and answers as without the cache, image positions included (an
image partly or wholly cached); a chat's next turn prefills only its new tokens; eviction of least recently used
blocks under a small cache; preemption never frees blocks another sequence uses; every block free again after
1,000 requests of every kind."""

from __future__ import annotations

import pytest
import torch

from llava_tiny import IMAGE_TOKEN, make_hf_model, save_layout

from .test_engine import capture_logits, drive, image_request, model, reference_generate, text_request  # noqa: F401

from videocap import api
from videocap.engine.engine import Engine
from videocap.engine.request import FinishReason, Request, SamplingParams, image_key

pytest.importorskip("transformers")


def prefixed(prefix: list[int], n: int, draw: int, max_new_tokens: int = 6) -> Request:
    """A request whose prompt is `prefix` then `n` random ids drawn with seed `draw`."""
    return Request(prefix + text_request(n, draw).token_ids, SamplingParams(max_new_tokens=max_new_tokens))


def keyed(request: Request, after: list[int] | None = None, max_new_tokens: int = 6) -> Request:
    """An image request carrying its image's key, optionally with other text after the image."""
    ids, mask = list(request.token_ids), list(request.image_mask)
    if after is not None:
        end = max(i for i, m in enumerate(mask) if m) + 1
        ids, mask = ids[:end] + after, mask[:end] + [False] * len(after)
    return Request(ids, SamplingParams(max_new_tokens=max_new_tokens), mask, request.images,
                   image_key=image_key(request.images))


def all_free(engine: Engine) -> bool:
    engine.runner.allocator.check()
    return not engine.scheduler.has_work() and engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_prefix_hits_give_the_same_logits_and_answers_in_mixed_batches(model, monkeypatch):
    system = text_request(40, 1).token_ids  # a shared "system prompt" of 2.5 blocks
    image = image_request(model, (500, 300), 2)
    first = [prefixed(system, 9, 3), keyed(image), text_request(20, 4)]
    second = [  # after the first wave: hits on the system prompt and on the image, beside requests with none
        prefixed(system, 30, 5), prefixed(system, 2, 6), keyed(image, [7, 8, 9]), text_request(33, 7),
        keyed(image, max_new_tokens=9),
    ]
    runs, encoded = {}, []
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda pixels, sizes: encoded.append(len(sizes)) or encode(pixels, sizes))
    for caching in (True, False):
        engine = Engine(model, prefix_caching=caching)
        logits = capture_logits(engine, monkeypatch)
        encoded.clear()
        runs[caching] = (drive(engine, first, {3: second[:2], 5: second[2:]}), logits, sum(encoded))
        assert all_free(engine)
    (hit, hit_logits, hit_images), (miss, miss_logits, miss_images) = runs[True], runs[False]
    image_end = first[1].image_mask.index(True) + sum(first[1].image_mask)
    partial, whole = len(second[2].token_ids) - 1, len(second[4].token_ids) - 1
    assert partial // 16 * 16 < image_end <= whole // 16 * 16, "one hit ends inside the image, one after it"
    expected = [32, 32, partial // 16 * 16, 0, whole // 16 * 16]  # full blocks, and at least one token to compute
    assert [hit[r.request_id].cached_tokens for r in second] == expected
    assert [miss[r.request_id].cached_tokens for r in second] == [0] * 5
    assert (hit_images, miss_images) == (2, 3), "an image wholly cached is not encoded again"
    for r in second:  # a hit's timings: admitted, then prefill (of the rest) before the first token
        t = hit[r.request_id].timings
        assert 0 < t.queued < t.first_token and 0 < t.prefill <= t.first_token - t.queued + 1e-9
    for r in first + second:
        assert hit[r.request_id].token_ids == miss[r.request_id].token_ids == reference_generate(model, r)
        a, b = hit_logits[r.request_id], miss_logits[r.request_id]
        assert set(a) == set(b)
        for length in a:
            scale = a[length].abs().max().item()
            assert (a[length] - b[length]).abs().max().item() <= 1e-5 * scale, f"at sequence length {length}"


def test_images_are_told_apart_by_their_key(model):
    a, b = image_request(model, (336, 336), 10, 4), image_request(model, (336, 336), 11, 4)
    b = Request(a.token_ids, a.sampling, a.image_mask, b.images)  # the same ids (placeholders), other pixels
    engine = Engine(model)
    engine.run(keyed(a, max_new_tokens=4))
    other = engine.run(keyed(b, max_new_tokens=4))
    unkeyed = engine.run(Request(a.token_ids, a.sampling, a.image_mask, a.images))
    again = engine.run(keyed(a, max_new_tokens=4))
    assert (other.cached_tokens, unkeyed.cached_tokens) == (0, 0)  # the image starts in the first block
    assert again.cached_tokens == (len(a.token_ids) - 1) // 16 * 16
    assert other.token_ids == reference_generate(model, b) and again.token_ids == reference_generate(model, a)
    assert all_free(engine)


def test_least_recently_used_blocks_are_evicted_last_blocks_first(model):
    engine = Engine(model, max_cache_tokens=112)  # 8 blocks of 16
    a, b = text_request(64, 20, 1), text_request(80, 21, 1)
    engine.run(a)  # 4 full blocks cached
    engine.run(b)  # 6 blocks needed, 4 never used: a's last two blocks are evicted
    out = engine.run(Request(a.token_ids, SamplingParams(max_new_tokens=5)))
    assert out.cached_tokens == 32
    assert out.token_ids == reference_generate(model, Request(a.token_ids, SamplingParams(max_new_tokens=5)))
    assert engine.run(Request(b.token_ids, SamplingParams(max_new_tokens=2))).cached_tokens == 48  # b's newest 3
    assert all_free(engine)


def test_preempting_a_sequence_never_frees_blocks_others_still_use(model, monkeypatch):
    system = text_request(48, 30).token_ids  # 3 full blocks every request shares
    requests = [prefixed(system, 3 + 5 * i % 17, 31 + i, 10 + i % 7) for i in range(12)]
    engine = Engine(model, max_cache_tokens=260)  # 18 blocks: preemptions, while the system prompt stays cached
    allocator, preempted = engine.runner.allocator, []
    preempt = engine.scheduler.preempt_newest

    def checked(but):
        victim = preempt(but)
        preempted.append(victim)
        allocator.check()
        for seq in engine.scheduler.running:
            assert all(allocator.refs[b] > 0 for b in seq.blocks), "a running sequence lost a block"
        shared = [b for s in engine.scheduler.running for b in s.blocks[:3]]
        assert all(allocator.refs[b] == shared.count(b) for b in shared)
        return victim

    monkeypatch.setattr(engine.scheduler, "preempt_newest", checked)
    final = drive(engine, requests[:1], {1: requests[1:]})
    assert sum(v is not None for v in preempted) >= 3
    assert all(final[r.request_id].cached_tokens == 48 for r in requests[1:])
    for r in requests:
        assert final[r.request_id].token_ids == reference_generate(model, r)
    assert all_free(engine)


def test_every_block_is_free_after_a_thousand_requests(model):
    """Short requests of every kind — greedy, sampled, beams, shared prefixes, stop ids — through a small cache
    (preemption, eviction, copy on write): nothing leaks, and each ends as it should."""
    g = torch.Generator().manual_seed(0)
    system = text_request(20, 40).token_ids
    requests = []
    for i in range(1000):
        kind = i % 5
        n, new = 1 + int(torch.randint(0, 12, (1,), generator=g)), 1 + i % 4
        ids = text_request(n, 1000 + i).token_ids
        if kind == 1:
            ids = system + ids
        params = dict(max_new_tokens=new)
        if kind == 2:
            params.update(temperature=1.0, seed=i)
        elif kind == 3:
            params.update(num_beams=2 + i % 2, stop_token_ids=(int(ids[-1]),))
        requests.append(Request(ids, SamplingParams(**params)))
    engine = Engine(model, max_cache_tokens=256, max_num_seqs=64)
    preempted = []
    preempt = engine.scheduler.preempt_newest
    engine.scheduler.preempt_newest = lambda but: preempted.append(1) or preempt(but)
    waves = {step: requests[k : k + 50] for step, k in zip(range(0, 400, 4), range(50, len(requests), 50))}
    final = drive(engine, requests[:50], waves)
    assert len(final) == len(requests) and len(preempted) > 10
    for r in requests:
        out = final[r.request_id]
        assert out.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert len(out.token_ids) <= r.sampling.max_new_tokens
    for r in requests[:400:40]:
        if r.sampling.greedy and r.sampling.num_beams == 1:
            assert final[r.request_id].token_ids == reference_generate(model, r)
    assert all_free(engine) and not any(engine.runner.allocator.refs)
