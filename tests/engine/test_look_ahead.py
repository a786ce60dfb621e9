"""Look-ahead decoding (engine.py): each decode step launched on the device tokens of the one before, the host
reading a step behind. Forced on here on CPU (it is on by default with CUDA graphs): the outputs must be exactly
those of the plain loop, with stops that the look-ahead step overshoots, length limits, streaming, aborts, and
every cache block free afterwards."""

from __future__ import annotations

import pytest

from videocap.engine.engine import PENDING, Engine
from videocap.engine.request import FinishReason, Request, SamplingParams

from .test_engine import drive, image_request, model, reference_generate, text_request  # noqa: F401


def stop_after(model, request: Request, k: int) -> Request:
    """The same request, stopping at the token greedy decoding produces at position k (so it stops early)."""
    token = reference_generate(model, request)[k]
    return Request(request.token_ids, SamplingParams(max_new_tokens=request.sampling.max_new_tokens,
                                                     stop_token_ids=(token,)), request.image_mask, request.images)


def requests(model) -> list[Request]:
    plain = [text_request(5 + 3 * i, 40 + i, 6 + 2 * i) for i in range(5)]
    return [plain[0], stop_after(model, plain[1], 0), plain[2], stop_after(model, plain[3], 4), plain[4],
            image_request(model, (500, 300), 9, max_new_tokens=7),
            Request(text_request(9, 60).token_ids, SamplingParams(max_new_tokens=9, temperature=0.8, seed=5))]


def final_outputs(engine: Engine, reqs: list[Request]) -> list:
    out = drive(engine, reqs)
    return [(o.token_ids, o.finish_reason) for o in (out[r.request_id] for r in reqs)]


def test_look_ahead_gives_the_plain_loops_outputs(model, monkeypatch):
    looked = Engine(model, look_ahead=True)
    launched = []
    step = looked.look_ahead_step
    monkeypatch.setattr(looked, "look_ahead_step", lambda current: launched.append(s := step(current)) or s)
    ahead = final_outputs(looked, requests(model))
    plain = final_outputs(Engine(model, look_ahead=False), requests(model))
    assert ahead == plain
    assert sum(x is not None for x in launched) > 5, "decode steps ran ahead of the host"
    assert ahead[1][1] is FinishReason.STOP and ahead[1][0] == []  # stopped at its first token
    assert ahead[3][1] is FinishReason.STOP and len(ahead[3][0]) == 4
    assert looked.runner.allocator.num_free == looked.runner.allocator.num_blocks
    for seq in looked.scheduler.running:
        assert PENDING not in seq.tokens


def test_streamed_outputs_are_each_token_once(model):
    engine = Engine(model, look_ahead=True)
    r = text_request(12, 77, 10)
    seen = []
    for out in engine.generate([r]):
        seen += out.new_token_ids
        assert out.token_ids == seen
    assert seen == reference_generate(model, r)


def test_abandoning_a_generation_while_a_step_is_in_flight_frees_its_blocks(model):
    engine = Engine(model, look_ahead=True)
    gen = engine.generate([text_request(20, 5, 30), text_request(7, 6, 30)])
    for _, _ in zip(range(4), gen):
        pass
    gen.close()
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks
    # the engine goes on: the step still in flight is read and dropped, later requests are unaffected
    r = text_request(9, 8, 5)
    assert engine.run(r).token_ids == reference_generate(model, r)


def test_a_request_arriving_mid_decode_ends_the_look_ahead_and_joins(model):
    engine = Engine(model, look_ahead=True)
    first, late = text_request(10, 90, 12), image_request(model, (336, 336), 91, max_new_tokens=6)
    final = drive(engine, [first], {4: [late]})
    assert final[first.request_id].token_ids == reference_generate(model, first)
    assert final[late.request_id].token_ids == reference_generate(model, late)
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_look_ahead_under_a_small_cache_preempts_like_the_plain_loop(model, monkeypatch):
    """Look-ahead steps never preempt or copy: where the next block is not free they hand the step back to the
    scheduler, which preempts. Answers, endings and stops are the plain loop's, and every block comes back."""
    reqs = [text_request(5 + (7 * i) % 23, 300 + i, 20 + (5 * i) % 11) for i in range(6)]
    reqs[1], reqs[4] = stop_after(model, reqs[1], 17), stop_after(model, reqs[4], 0)
    plain = final_outputs(Engine(model), reqs)
    small = Engine(model, max_cache_tokens=96, look_ahead=True)
    launched, preempted = [], []
    step, preempt = small.look_ahead_step, small.scheduler.preempt_newest
    monkeypatch.setattr(small, "look_ahead_step", lambda current: launched.append(s := step(current)) or s)
    monkeypatch.setattr(small.scheduler, "preempt_newest", lambda but: preempted.append(1) or preempt(but))
    assert final_outputs(small, reqs) == plain
    assert preempted and sum(x is not None for x in launched) > 3, "both happened"
    small.runner.allocator.check()
    assert small.runner.allocator.num_free == small.runner.allocator.num_blocks


def test_an_answer_decoded_ahead_is_reused_by_the_next_turn(model):
    """A chat's next turn (prompt + answer + more) hits the blocks registered when the look-ahead answer ended:
    the overshot token is neither kept nor registered."""
    engine = Engine(model, look_ahead=True)
    first = text_request(23, 12, 40)
    first = stop_after(model, first, 20)  # ends on a stop token the look-ahead step has already run past
    answer = engine.run(first)
    assert answer.finish_reason is FinishReason.STOP and len(answer.token_ids) == 20
    follow = Request(first.token_ids + answer.token_ids + [5, 6, 7], SamplingParams(max_new_tokens=5))
    out = engine.run(follow)
    assert out.cached_tokens == (len(follow.token_ids) - 1) // 16 * 16 == 32
    assert out.token_ids == reference_generate(model, follow)


def test_a_failing_look_ahead_step_leaves_no_placeholder_behind(model, monkeypatch):
    engine = Engine(model, look_ahead=True)
    gen = engine.generate([text_request(9, 31, 12)])
    next(gen)  # the first token: the next steps run ahead from here
    run = engine.runner.run

    def failing(batch, ids=None):
        if ids is not None:
            raise RuntimeError("out of memory (simulated)")
        return run(batch, ids)

    monkeypatch.setattr(engine.runner, "run", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        for _ in gen:
            pass
    assert all(PENDING not in seq.tokens for seq in engine.scheduler.running + list(engine.scheduler.waiting))
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks  # the abandoned request freed
