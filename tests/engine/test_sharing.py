"""One engine, several callers: each `generate` gets exactly its own requests' outputs, whoever drives the steps,
and a caller that fails or stops early leaves nothing queued or allocated."""

from __future__ import annotations

import pytest
import torch

from llava_tiny import make_hf_model, save_layout

from videocap.engine.engine import Engine
from videocap.engine.request import Request, SamplingParams
from videocap.errors import PromptTooLongError
from videocap.models.llava_next.weights import load

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = load(save_layout(make_hf_model(seed=2, head_scale=8.0), tmp_path_factory.mktemp("m") / "m", "hf5"),
                 dtype=torch.float32)
    return Engine(model, max_cache_tokens=2048)


def request(n_prompt: int, n_new: int, first: int = 5) -> Request:
    return Request(list(range(first, first + n_prompt)), SamplingParams(max_new_tokens=n_new))


def all_free(engine: Engine) -> bool:
    return not engine.scheduler.has_work() and engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_interleaved_generators_each_receive_their_final_output(engine):
    alone_a = engine.run(request(9, 6)).token_ids
    alone_b = engine.run(request(4, 3, first=40)).token_ids
    ga, gb = engine.generate([request(9, 6)]), engine.generate([request(4, 3, first=40)])
    next(ga)
    next(gb)
    outs_b = list(gb)  # b's steps also advance a
    outs_a = list(ga)
    assert outs_b[-1].finished and outs_b[-1].token_ids == alone_b
    assert outs_a[-1].finished and outs_a[-1].token_ids == alone_a
    assert all_free(engine)


def test_a_generate_nested_in_another_callers_loop(engine):
    expected_outer = engine.run(request(12, 8)).token_ids
    expected_inner = engine.run(request(5, 4, first=60)).token_ids
    inner = []
    outer = []
    for out in engine.generate([request(12, 8)]):
        outer = out.token_ids
        if len(out.token_ids) == 2:  # a callback asking something else mid-answer
            inner = engine.run(request(5, 4, first=60)).token_ids
    assert outer == expected_outer and inner == expected_inner
    assert all_free(engine)


def test_a_request_that_cannot_be_added_takes_the_earlier_ones_with_it(engine):
    with pytest.raises(PromptTooLongError):
        list(engine.generate([request(5, 3), request(5000, 3)]))
    assert all_free(engine) and not engine.inboxes


def test_closing_a_generator_early_aborts_its_requests(engine):
    gen = engine.generate([request(7, 50), request(3, 50, first=30)])
    next(gen)
    gen.close()
    assert all_free(engine) and not engine.inboxes
