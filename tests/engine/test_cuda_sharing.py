"""Beams and prefix hits on the GPU machine (skipped elsewhere): with CUDA graphs, eagerly and on the CPU, the
engine gives the same beam answers and greedy answers with prefix hits — copy-on-write of beam blocks happens on
the device before a replayed graph step."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from .test_beam import beams, tiny  # noqa: E402,F401  (the tiny-model fixture)
from .test_engine import drive, image_request, text_request  # noqa: E402
from .test_prefix import all_free, keyed, prefixed  # noqa: E402

from videocap.engine.engine import Engine  # noqa: E402


def requests(model):
    system = text_request(40, 1).token_ids
    image = keyed(image_request(model, (500, 300), 2), max_new_tokens=8)
    return (
        [beams(text_request(9, 3, 12)), beams(text_request(30, 4, 10), 4), prefixed(system, 5, 5, 12), image],
        {3: [prefixed(system, 17, 6, 9), keyed(image_request(model, (500, 300), 2), [4, 5, 6]),
             beams(prefixed(system, 8, 7, 10), 2)]},
    )


def test_beams_and_prefix_hits_agree_with_graphs_eagerly_and_on_the_cpu(tiny):
    _, model = tiny
    try:
        outs = {}
        for name, device, eager in (("cpu", "cpu", True), ("eager", "cuda", True), ("graphs", "cuda", False)):
            engine = Engine(model.to(device), max_cache_tokens=8192, eager=eager)
            first, late = requests(model)
            final = drive(engine, first, late)
            outs[name] = [final[r.request_id].token_ids for r in first + [r for rs in late.values() for r in rs]]
            hits = [final[r.request_id].cached_tokens for rs in late.values() for r in rs]
            assert hits[0] == 32 and hits[1] > 1000 and hits[2] == 32, name
            assert all_free(engine), name
        assert outs["graphs"] == outs["eager"] == outs["cpu"]
    finally:
        model.to("cpu")
