"""Beam search: the engine's beams (sharing the prompt's KV blocks, copied on write) give the answer of a naive
beam search that re-runs every beam's whole sequence through a fresh cache, and of transformers'
`generate(num_beams=3, do_sample=False)` on the same tiny LLaVA-NeXT; several searches and greedy requests in one
batch, preemption of a whole search, every block free afterwards."""

from __future__ import annotations

import pytest
import torch

from llava_tiny import IMAGE_TOKEN, make_hf_model, save_layout

from .test_engine import drive, full_logits, image_request, request_embeds, text_request

from videocap.engine.beam import BeamGroup, BeamSearch
from videocap.engine.engine import Engine
from videocap.engine.kv_cache import BlockAllocator
from videocap.engine.request import FinishReason, Request, SamplingParams
from videocap.engine.scheduler import Scheduler, Sequence
from videocap.errors import PromptTooLongError
from videocap.models.llava_next.weights import load

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # Logits at twice transformers' scale: beams disagree with greedy, yet no candidate ties within float noise.
    hf = make_hf_model(seed=11, head_scale=2.0)
    return hf, load(save_layout(hf, tmp_path_factory.mktemp("ckpt") / "tiny", "hf5"), dtype=torch.float32)


def beams(request: Request, num_beams: int = 3, **kw) -> Request:
    """`request` with beam search."""
    s = request.sampling
    kw = {"max_new_tokens": s.max_new_tokens, "stop_token_ids": s.stop_token_ids, **kw}
    return Request(request.token_ids, SamplingParams(num_beams=num_beams, **kw), request.image_mask, request.images,
                   request.image_embeds)


def naive_beam_search(model, request: Request, logits_of=None) -> tuple[list[int], FinishReason]:
    """Beam search as transformers' BeamSearchScorer lays it out, on full recomputes: every step scores all
    (beam, token) by cumulative float32 log-probability, keeps the top max(2, 1 + stops) * n, files the finished
    ones among the top n as hypotheses (score / new-token count ** length_penalty, the stop token counted), and
    continues the best n others."""
    p = request.sampling
    n, stops = p.num_beams, set(p.stop_token_ids)
    if logits_of is None:  # the tiny model, on the whole sequence
        mask = request.image_mask or [False] * len(request.token_ids)
        embeds = request_embeds(model, request)

        def logits_of(ids: list[int]) -> torch.Tensor:
            return full_logits(model, ids, mask, embeds)

    live: list[tuple[list[int], torch.Tensor]] = [([], torch.tensor(0.0))]  # (new tokens, float32 log-prob)
    hyps: list[tuple[float, list[int], FinishReason]] = []
    for length in range(1, p.max_new_tokens + 1):
        scored = []
        for b, (toks, score) in enumerate(live):
            total = torch.log_softmax(logits_of(list(request.token_ids) + toks), -1) + score
            scored += [(total[t], b, t) for t in range(total.shape[0])]
        scored.sort(key=lambda c: (-c[0].item(), c[1], c[2]))
        following = []
        for rank, (score, b, t) in enumerate(scored[: max(2, 1 + len(stops)) * n]):
            if t in stops or length == p.max_new_tokens:
                if rank < n:
                    reason = FinishReason.STOP if t in stops else FinishReason.LENGTH
                    hyps.append(((score / length**p.length_penalty).item(), live[b][0] + ([] if t in stops else [t]), reason))
            elif len(following) < n:
                following.append((live[b][0] + [t], score))
        hyps = sorted(hyps, key=lambda h: -h[0])[:n]
        if length == p.max_new_tokens:
            break
        best_running = (following[0][1] / length**p.length_penalty).item()
        if len(hyps) == n and (p.early_stopping or best_running <= hyps[-1][0]):
            break
        live = following
    return hyps[0][1], hyps[0][2]


def with_stops(model, request: Request, picks: tuple[int, ...]) -> Request:
    """`request` stopping at the tokens at indices `picks` of its stop-free beam answer (so hypotheses end early)."""
    free, _ = naive_beam_search(model, request)
    stops = tuple(dict.fromkeys(free[i] for i in picks))
    return beams(request, request.sampling.num_beams, max_new_tokens=request.sampling.max_new_tokens,
                 stop_token_ids=stops, length_penalty=request.sampling.length_penalty,
                 early_stopping=request.sampling.early_stopping)


@pytest.mark.parametrize("length_penalty, early_stopping", [(1.0, False), (2.0, False), (0.5, True)])
def test_engine_beams_equal_a_naive_beam_search_in_mixed_batches(tiny, length_penalty, early_stopping):
    _, model = tiny
    kw = dict(length_penalty=length_penalty, early_stopping=early_stopping)
    searches = [
        with_stops(model, beams(text_request(7, 1, 10), **kw), (3, 6)),
        beams(text_request(20, 2, 8), **kw),
        with_stops(model, beams(text_request(33, 3, 9), 2, **kw), (2,)),
        beams(image_request(model, (500, 300), 4, 6), 4, **kw),
    ]
    greedy = [text_request(12, 5, 7), text_request(3, 6, 5)]
    late = {1: [searches[2], greedy[1]], 3: [with_stops(model, beams(text_request(16, 7, 9), **kw), (4,))]}
    engine = Engine(model)
    final = drive(engine, searches[:2] + greedy[:1] + searches[3:], late)
    searches.append(late[3][0])
    differs = 0
    for r in searches:
        out = final[r.request_id]
        expected, reason = naive_beam_search(model, r)
        assert (out.token_ids, out.finish_reason) == (expected, reason), f"prompt of {len(r.token_ids)} tokens"
        assert out.prompt_tokens == len(r.token_ids) and out.new_token_ids == out.token_ids
        t = out.timings
        assert 0 < t.queued <= t.first_token and 0 < t.prefill < t.first_token and t.decode_tokens_per_s > 0
        differs += Engine(model).run(beams(r, 1)).token_ids != out.token_ids  # num_beams=1: greedy
    assert differs, "beam search should find another answer than greedy somewhere"
    if length_penalty <= 1:  # (a penalty of 2 favours the long hypotheses, which reach max_new_tokens)
        assert any(final[r.request_id].finish_reason is FinishReason.STOP for r in searches)
    allocator = engine.runner.allocator
    allocator.check()
    assert allocator.num_free == allocator.num_blocks and not engine.scheduler.has_work()


def hf_beam_search(hf, request: Request, **kw) -> list[int]:
    ids = list(request.token_ids)
    inputs = {"input_ids": torch.tensor([ids])}
    if request.images is not None:
        ids = [IMAGE_TOKEN if m else t for t, m in zip(ids, request.image_mask)]
        (w, h), = request.images.sizes
        inputs = {"input_ids": torch.tensor([ids]), "pixel_values": request.images.pixels[None],
                  "image_sizes": torch.tensor([[h, w]])}
    p = request.sampling
    with torch.no_grad():
        out = hf.generate(
            **inputs, max_new_tokens=p.max_new_tokens, num_beams=p.num_beams, do_sample=False,
            eos_token_id=list(p.stop_token_ids) or None, pad_token_id=0, length_penalty=p.length_penalty,
            early_stopping=p.early_stopping, repetition_penalty=1.0,
        )[0, len(ids):].tolist()
    return out[:-1] if out and out[-1] in p.stop_token_ids else out


def test_engine_beams_equal_transformers_generate(tiny):
    hf, model = tiny
    requests = [
        with_stops(model, beams(text_request(9, 10, 12)), (4, 7)),
        with_stops(model, beams(text_request(25, 11, 12), length_penalty=1.5), (3,)),
        beams(text_request(14, 12, 10)),
        with_stops(model, beams(image_request(model, (672, 336), 13, 10)), (2, 5)),
    ]
    final = drive(Engine(model), requests)
    for r in requests:
        assert final[r.request_id].token_ids == hf_beam_search(hf, r), f"prompt of {len(r.token_ids)} tokens"


def test_beams_share_the_prompt_blocks_and_copy_the_block_they_write(tiny, monkeypatch):
    _, model = tiny
    request = beams(text_request(40, 20, 12))  # 40 tokens: 2 full blocks, then a shared partial one
    engine = Engine(model)
    seen, copies = [], []
    schedule, copy = engine.scheduler.schedule, engine.runner.copy_blocks

    def spy():
        batch = schedule()
        seen.append([list(s.blocks) for s in batch.seqs])
        return batch

    monkeypatch.setattr(engine.scheduler, "schedule", spy)
    monkeypatch.setattr(engine.runner, "copy_blocks", lambda pairs: copies.append(pairs) or copy(pairs))
    out = engine.run(request)
    assert [len(tables) for tables in seen[:2]] == [1, 3]  # the prompt alone, then its three beams
    tables = seen[1]
    assert len({tuple(t[:2]) for t in tables}) == 1, "the full prompt blocks are shared"
    assert len({t[2] for t in tables}) == 3, "each beam writes its own copy of the partial block"
    assert len(copies[0]) == 2  # two beams copy it, the third keeps the original
    assert out.token_ids == naive_beam_search(model, request)[0]
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_a_small_cache_preempts_whole_beam_searches_and_recomputes_them(tiny, monkeypatch):
    _, model = tiny
    requests = [beams(text_request(5 + 9 * i % 23, 30 + i, 6 + i % 5), 2 + i % 2) for i in range(8)]
    requests += [text_request(9 + i, 40 + i, 8) for i in range(4)]
    roomy = drive(Engine(model), requests)
    small = Engine(model, max_cache_tokens=200)  # 13 blocks of 16
    preempted = []
    preempt = small.scheduler.preempt_newest
    monkeypatch.setattr(small.scheduler, "preempt_newest", lambda but: preempted.append(preempt(but)) or preempted[-1])
    cramped = drive(small, requests[:6], {2: requests[6:]})
    assert any(v is not None and v.beam is not None and v.generated for v in preempted)
    for r in requests:
        assert cramped[r.request_id].token_ids == roomy[r.request_id].token_ids
    allocator = small.runner.allocator
    allocator.check()
    assert allocator.num_free == allocator.num_blocks


def test_closing_a_beam_generation_early_frees_its_blocks(tiny):
    _, model = tiny
    engine = Engine(model)
    gen = engine.generate([beams(text_request(30, 50, 40)), text_request(8, 51, 40)])
    next(gen)
    for _ in range(3):
        engine.step()
    gen.close()
    assert not engine.scheduler.has_work() and engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_a_prompt_too_long_for_its_beams_is_refused_at_add(tiny):
    _, model = tiny
    engine = Engine(model, max_cache_tokens=96)  # 7 blocks: 112 tokens alone, 32 for each of 3 beams
    engine.add(text_request(60, 60))
    with pytest.raises(PromptTooLongError, match="3 beams"):
        engine.add(beams(text_request(60, 60)))


def scripted_logits(ids: list[int], vocab: int = 12) -> torch.Tensor:
    """Logits that depend on the whole sequence, with the stop ids 0 and 1 often on top: many candidates finish."""
    g = torch.Generator().manual_seed(hash(tuple(ids)) % (1 << 62))
    logits = 2 * torch.randn(vocab, generator=g)
    logits[:2] += 1.5
    return logits


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", [(3, 1.0, False), (4, 0.7, False), (2, 1.0, True)])
def test_beam_steps_on_scripted_logits_where_stop_tokens_crowd_the_top(num_beams, length_penalty, early_stopping):
    """The beam step alone, on scripted logits: when stop candidates fill the top 2n, the next beams come from the
    (1 + stops) * n candidates kept, and the answer is the naive search's."""
    for prompt in ([5], [7, 3], [2, 9, 4], [11], [6, 6]):
        request = Request(prompt, SamplingParams(max_new_tokens=9, num_beams=num_beams, stop_token_ids=(0, 1),
                                                 length_penalty=length_penalty, early_stopping=early_stopping))
        scheduler = Scheduler(BlockAllocator(64), block_size=2)
        search = BeamSearch(scheduler)
        root = Sequence(request, list(prompt), 0)
        root.beam = BeamGroup(root, max_len=100)
        scheduler.add(root)
        outputs = []
        while not outputs:
            batch = scheduler.schedule()
            for seq in batch.seqs:
                seq.num_cached = len(seq.tokens)
            logits = torch.stack([scripted_logits(s.tokens) for s in batch.seqs])
            outputs = search.step(batch.seqs, logits, batch.prefill, 0.0)
            assert outputs or len(root.beam.beams) == num_beams, "always n beams: enough candidates are kept"
        expected = naive_beam_search(None, request, scripted_logits)
        assert (outputs[0].token_ids, outputs[0].finish_reason) == expected, f"prompt {prompt}"
        assert scheduler.allocator.num_free == 64 and not scheduler.has_work()
