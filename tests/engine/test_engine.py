"""The engine against a naive reference generate (whole sequence re-run with a fresh cache every step, greedy) on a
tiny LLaVA-NeXT: mixed batches with images and mid-run arrivals, batch-independent logits, preemption under a small
cache with every block returned, stop/length/context endings, prompt limits, and the sampler."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from llava_tiny import IMAGE_TOKEN, make_hf_model, save_layout

from videocap.engine.engine import Engine
from videocap.engine.request import FinishReason, ImageInput, Output, Request, SamplingParams
from videocap.engine.sampler import apply_repetition_penalty, filtered_probs, sample
from videocap.models.layers.attention import AttnMetadata
from videocap.models.llava_next import anyres
from videocap.models.llava_next.weights import load

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    hf = make_hf_model(seed=11, head_scale=8.0)  # large top-1 margins: float noise cannot flip a greedy choice
    return load(save_layout(hf, tmp_path_factory.mktemp("ckpt") / "tiny", "hf5"), dtype=torch.float32)


def text_request(n: int, draw: int, max_new_tokens: int = 8, **sampling) -> Request:
    """`n` random prompt ids drawn with seed `draw`."""
    g = torch.Generator().manual_seed(draw)
    ids = torch.randint(0, IMAGE_TOKEN - 16, (n,), generator=g).tolist()
    return Request(ids, SamplingParams(max_new_tokens=max_new_tokens, **sampling))


def image_request(model, size: tuple[int, int], seed: int, max_new_tokens: int = 6, embeds: bool = False) -> Request:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(model.tiles_per_image(size), 3, 336, 336, generator=g)
    n_image = anyres.image_token_count(size, model.cfg.grid_pinpoints)
    before = torch.randint(0, IMAGE_TOKEN - 16, (5,), generator=g).tolist()
    after = torch.randint(0, IMAGE_TOKEN - 16, (9,), generator=g).tolist()
    ids = before + [IMAGE_TOKEN] * n_image + after
    mask = [False] * len(before) + [True] * n_image + [False] * len(after)
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    if embeds:  # precomputed embeddings, as a chat reusing its video passes them
        with torch.no_grad():
            return Request(ids, sampling, mask, image_embeds=model.encode_images(pixels, [size])[0])
    return Request(ids, sampling, mask, ImageInput(pixels, (size,)))


@torch.no_grad()
def full_logits(model, ids: list[int], mask: list[bool], embeds: torch.Tensor | None) -> torch.Tensor:
    """(vocab,) logits after `ids`, the whole sequence run through a fresh cache."""
    layers, kv_heads, head_dim = model.kv_spec()
    n, bs = len(ids), 16
    blocks = math.ceil(n / bs)
    caches = [torch.zeros(2, blocks, bs, kv_heads, head_dim) for _ in range(layers)]
    meta = AttnMetadata((n,), torch.tensor([n]), torch.arange(n), torch.arange(blocks)[None], bs)
    image_mask = torch.tensor(mask + [False] * (n - len(mask))) if embeds is not None else None
    hidden = model(torch.tensor(ids), torch.arange(n), meta, caches, embeds, image_mask)
    return model.compute_logits(hidden[-1:])[0].float()


@torch.no_grad()
def request_embeds(model, request: Request) -> torch.Tensor | None:
    if request.images is not None:
        return torch.cat(model.encode_images(request.images.pixels, list(request.images.sizes)))
    return request.image_embeds


def reference_generate(model, request: Request) -> list[int]:
    """Greedy, re-running the whole sequence through a fresh cache for every new token."""
    ids = list(request.token_ids)
    mask = request.image_mask or [False] * len(ids)
    embeds = request_embeds(model, request)
    out: list[int] = []
    while len(out) < request.sampling.max_new_tokens:
        token = int(full_logits(model, ids, mask, embeds).argmax())
        if token in request.sampling.stop_token_ids:
            break
        out.append(token)
        ids.append(token)
    return out


def drive(
    engine: Engine, requests: list[Request], arrivals: dict[int, list[Request]] | None = None
) -> dict[int, Output]:
    """Step `engine` until all `requests`, and those in `arrivals` (step index -> requests added before that step),
    are finished; returns each request's final output."""
    arrivals = dict(arrivals or {})
    for r in requests:
        engine.add(r)
    final: dict[int, Output] = {}
    step = 0
    while engine.scheduler.has_work() or arrivals:
        for r in arrivals.pop(step, []):
            engine.add(r)
        if engine.scheduler.has_work():
            for out in engine.step():
                assert out.request_id not in final, "no output after a request finished"
                if out.finished:
                    final[out.request_id] = out
        step += 1
    return final


def test_engine_equals_reference_for_mixed_batches_and_late_arrivals(model):
    first = [text_request(3, 1, 9), text_request(17, 2, 5), image_request(model, (500, 300), 3), text_request(40, 4, 7)]
    late = {
        2: [text_request(11, 5, 6)],
        4: [image_request(model, (336, 672), 6, 5, embeds=True), text_request(1, 7, 8)],
        9: [text_request(25, 8, 4)],
    }
    everything = first + [r for rs in late.values() for r in rs]
    engine, busy = Engine(model), []
    add = engine.add
    engine.add = lambda r: busy.append(len(engine.scheduler.running)) or add(r)
    final = drive(engine, first, late)
    assert busy[len(first):] and all(busy[len(first):]), "late requests join while others decode"
    assert set(final) == {r.request_id for r in everything}
    for r in everything:
        out = final[r.request_id]
        assert out.token_ids == reference_generate(model, r), f"request of {len(r.token_ids)} tokens"
        assert out.finish_reason is FinishReason.LENGTH and out.prompt_tokens == len(r.token_ids)


def capture_logits(engine: Engine, monkeypatch) -> dict[int, dict[int, torch.Tensor]]:
    """request id -> {sequence length when the logits were computed: (vocab,) logits}, for every step."""
    seen: dict[int, dict[int, torch.Tensor]] = defaultdict(dict)
    run = engine.runner.run

    def spy(batch):
        logits = run(batch)
        for seq, row in zip(batch.seqs, logits):
            seen[seq.request.request_id][len(seq.tokens)] = row.clone()
        return logits

    monkeypatch.setattr(engine.runner, "run", spy)
    return seen


def test_logits_do_not_depend_on_the_batch(model, monkeypatch):
    target = text_request(13, 20, 10)
    alone = Engine(model)
    alone_logits = capture_logits(alone, monkeypatch)
    drive(alone, [target])

    crowd = Engine(model)
    crowd_logits = capture_logits(crowd, monkeypatch)
    others = [text_request(31, 21, 12), image_request(model, (336, 336), 22, 12)]
    drive(crowd, [text_request(2, 23, 3), target, others[0]], {3: [others[1]], 5: [text_request(50, 24, 2)]})

    a, b = alone_logits[target.request_id], crowd_logits[target.request_id]
    assert set(a) == set(b) and len(a) == 10
    for length in a:
        # float32 reductions change order with the batch's shapes: allow 1e-5 of the logits' scale (~25 here)
        scale = a[length].abs().max().item()
        assert (a[length] - b[length]).abs().max().item() <= 1e-5 * scale, f"at sequence length {length}"


def test_a_small_cache_preempts_and_recomputes_and_frees_every_block(model, monkeypatch):
    requests = [text_request(3 + (7 * i) % 29, 100 + i, 2 + (5 * i) % 11) for i in range(80)]
    roomy = drive(Engine(model), requests)

    small = Engine(model, max_cache_tokens=96)  # 7 blocks of 16: a handful of sequences at a time
    preempted = []
    preempt = small.scheduler.preempt_newest
    monkeypatch.setattr(small.scheduler, "preempt_newest", lambda but: preempted.append(1) or preempt(but))
    cramped = drive(small, requests[:40], {5: requests[40:60], 30: requests[60:]})

    assert len(preempted) > 5, "the cache was meant to be too small for all requests at once"
    for r in requests:
        assert cramped[r.request_id].token_ids == roomy[r.request_id].token_ids
        assert cramped[r.request_id].finish_reason is FinishReason.LENGTH
    allocator = small.runner.allocator
    allocator.check()
    assert allocator.num_free == allocator.num_blocks


def test_a_preempted_image_request_is_recomputed_from_its_embeddings(model, monkeypatch):
    image = image_request(model, (500, 300), 31, 12)  # 1574 prompt tokens
    texts = [text_request(60, 32, 30), text_request(60, 33, 30)]
    engine = Engine(model, max_cache_tokens=1700)  # all three fit at admission, not as they grow
    victims, encoded = [], []
    preempt, encode = engine.scheduler.preempt_newest, model.encode_images
    monkeypatch.setattr(engine.scheduler, "preempt_newest", lambda but: victims.append(preempt(but)) or victims[-1])
    monkeypatch.setattr(model, "encode_images", lambda *a: encoded.append(1) or encode(*a))
    final = drive(engine, texts + [image])
    assert any(v is not None and v.request is image and v.generated for v in victims), "preempted after decoding"
    assert len(encoded) == 1, "the recompute reuses the image embeddings"
    monkeypatch.undo()
    for r in texts + [image]:
        assert final[r.request_id].token_ids == reference_generate(model, r)
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_a_sequence_that_fills_the_cache_ends_with_context(model):
    engine = Engine(model, max_cache_tokens=40)  # 4 blocks: 64 tokens in all
    request = text_request(50, 30, 40)
    out = drive(engine, [request])[request.request_id]
    assert out.finish_reason is FinishReason.CONTEXT
    assert out.token_ids == reference_generate(model, request)[: len(out.token_ids)]
    assert len(request.token_ids) + len(out.token_ids) == engine.runner.cache_tokens
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks


def test_stop_token_ends_the_request_and_is_left_out(model):
    probe = text_request(9, 40, 12)
    ref = reference_generate(model, probe)
    k = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])  # the first new id from the third token on
    stopped = Request(probe.token_ids, SamplingParams(max_new_tokens=12, stop_token_ids=(ref[k], 10**6)))
    limited = Request(probe.token_ids, SamplingParams(max_new_tokens=3))
    final = drive(Engine(model), [stopped, limited])
    assert final[stopped.request_id].token_ids == ref[:k]
    assert final[stopped.request_id].finish_reason is FinishReason.STOP
    assert final[limited.request_id].token_ids == ref[:3]
    assert final[limited.request_id].finish_reason is FinishReason.LENGTH


def test_stop_token_as_the_first_token_gives_an_empty_answer(model):
    probe = text_request(6, 41, 4)
    first = reference_generate(model, probe)[0]
    out = Engine(model).run(Request(probe.token_ids, SamplingParams(max_new_tokens=4, stop_token_ids=(first,))))
    assert out.token_ids == [] and out.finish_reason is FinishReason.STOP


def test_prompts_too_long_for_the_cache_or_the_context_are_refused_at_add(model):
    engine = Engine(model, max_cache_tokens=64)
    with pytest.raises(ValueError, match="KV cache"):
        engine.add(text_request(engine.runner.cache_tokens, 50))
    engine = Engine(model)
    with pytest.raises(ValueError, match="context"):
        engine.add(Request([1] * model.max_context()))
    assert not engine.scheduler.has_work()


def test_seeded_sampling_through_the_engine_is_reproducible(model):
    def sampled(seed: int) -> list[int]:
        return Engine(model).run(text_request(8, 60, 12, temperature=1.5, top_p=0.9, seed=seed)).token_ids

    assert sampled(3) == sampled(3)
    assert sampled(3) != sampled(4)


# --- the sampler -------------------------------------------------------------------------------------------------


def test_greedy_is_argmax_even_beside_sampled_rows():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    greedy = SamplingParams()
    assert sample(logits, [greedy] * 5, [0] * 5, [0] * 5).tolist() == logits.argmax(-1).tolist()
    hot = SamplingParams(temperature=2.0)
    params = [greedy, hot, greedy, hot, greedy]
    out = sample(logits, params, list(range(5)), [0] * 5)
    assert out[[0, 2, 4]].tolist() == logits.argmax(-1)[[0, 2, 4]].tolist()


@pytest.mark.parametrize("temperature", [0.3, 1.0, 7.0, 1000.0])
def test_top_k_1_is_greedy_at_any_temperature(temperature):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=temperature, top_k=1)] * 4
    for seed in range(5):
        assert sample(logits, params, [seed * 10 + b for b in range(4)], [seed] * 4).tolist() == logits.argmax(-1).tolist()


PROBS = torch.tensor([0.1, 0.5, 0.04, 0.3, 0.06])


@pytest.mark.parametrize("top_p, kept", [
    (0.45, [1]),  # the top token alone reaches 0.45
    (0.55, [1, 3]),  # 0.5 falls short; 0.5 + 0.3 reaches it
    (0.85, [1, 3, 0]),  # 0.8 falls short; 0.9 reaches it
    (0.93, [1, 3, 0, 4]),  # 0.9 falls short; 0.96 reaches it
    (1.0, [1, 3, 0, 4, 2]),
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, kept):
    probs = filtered_probs(PROBS.log(), 0, top_p)
    expected = torch.zeros(5)
    expected[kept] = PROBS[kept] / PROBS[kept].sum()
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def test_top_k_then_top_p():
    probs = filtered_probs(PROBS.log(), 2, 0.95)  # top-2 renormalises {0.5, 0.3} to {0.625, 0.375}: both kept
    torch.testing.assert_close(probs, torch.tensor([0, 0.625, 0, 0.375, 0]), atol=1e-6, rtol=0)
    probs = filtered_probs(PROBS.log(), 2, 0.6)  # 0.625 alone reaches 0.6
    torch.testing.assert_close(probs, torch.tensor([0, 1.0, 0, 0, 0]), atol=1e-6, rtol=0)


def test_sampling_draws_only_kept_tokens_and_is_reproducible_with_a_seed():
    logits = PROBS.log()[None].repeat(64, 1)
    params = [SamplingParams(temperature=1.0, top_p=0.55)] * 64

    def draw(seed: int) -> list[int]:
        return sample(logits, params, [seed + b for b in range(64)], [0] * 64).tolist()

    a = draw(0)
    assert a == draw(0)
    assert a != draw(1000)
    assert set(a) == {1, 3}


def test_sampled_frequencies_follow_the_distribution():
    """Gumbel-max over the hashed noise draws from softmax(logits / T): 20,000 draws land within 2%."""
    n = 20000
    logits = (PROBS.log() * 2)[None].repeat(n, 1)  # temperature 2 undoes the doubling
    out = sample(logits, [SamplingParams(temperature=2.0)] * n, list(range(n)), [7] * n)
    freq = torch.bincount(out, minlength=5).float() / n
    torch.testing.assert_close(freq, PROBS, atol=0.02, rtol=0)


def test_a_rows_draw_depends_on_its_seed_and_step_not_on_its_neighbours():
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=1.0)] * 6
    together = sample(logits, params, [11, 12, 13, 14, 15, 16], [0, 1, 2, 3, 4, 5])
    alone = [sample(logits[b : b + 1], params[:1], [11 + b], [b]).item() for b in range(6)]
    assert together.tolist() == alone
    steps = {sample(logits[:1], params[:1], [11], [step]).item() for step in range(40)}
    assert len(steps) > 1  # a new step draws new noise


def test_repetition_penalty_follows_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(5))
    history = [[3, 7, 7, 12], [0, 29]]
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(repetition_penalty=0.8)]
    ours = apply_repetition_penalty(logits, params, history)
    for b in range(2):
        expected = RepetitionPenaltyLogitsProcessor(params[b].repetition_penalty)(
            torch.tensor([history[b]]), logits[b : b + 1].clone())
        torch.testing.assert_close(ours[b : b + 1], expected)
    assert sample(logits, params, [0, 0], [0, 0], history).tolist() == ours.argmax(-1).tolist()


@pytest.mark.parametrize("bad", [
    dict(max_new_tokens=0), dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0),
    dict(top_p=1.5), dict(top_p=float("nan")), dict(top_k=-1),
    dict(num_beams=0), dict(num_beams=2, temperature=0.7), dict(num_beams=3, repetition_penalty=1.2),
    dict(length_penalty=float("nan")), dict(repetition_penalty=0.0),
])
def test_sampling_params_reject_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.mark.parametrize("pattern", ["aab", "ab", "abb", "aaab"])
def test_interleaved_generate_calls_each_get_every_final_output(model, pattern):
    """Two `generate` calls drained in turn (as the task driver does): one call's request may finish during the
    other's step while the first is paused between its inboxes; it must still yield that final output."""
    engine = Engine(model, max_cache_tokens=2048)
    first = [text_request(6, 1, max_new_tokens=3), text_request(5, 2, max_new_tokens=2)]
    second = [text_request(7, 3, max_new_tokens=9)]
    streams = {"a": engine.generate(first), "b": engine.generate(second)}
    finals: dict[str, set[int]] = {"a": set(), "b": set()}
    live = dict(streams)
    k = 0
    while live:
        key = pattern[k % len(pattern)]
        k += 1
        if key not in live:
            continue
        try:
            out = next(live[key])
        except StopIteration:
            del live[key]
            continue
        if out.finished:
            finals[key].add(out.request_id)
    assert finals == {"a": {r.request_id for r in first}, "b": {second[0].request_id}}
