"""The pooled data path (`--pool`): examples rendered once, replayed in shuffled epochs; it trains, it is
deterministic, and a resumed pooled run takes the steps the uninterrupted one would have."""

from __future__ import annotations

import json

import pytest
import torch

from videocap.errors import VideocapError
from videocap.train import checkpoint, forward, pool
from videocap.train.loop import TrainSettings, train

DEBUG = dict(preset="debug", corpus_scenes=200, vocab_size=400)
POOLED = dict(pool=6, batch_size=2, steps=12, warmup=1, lr=3e-3, save_every=100, log_every=1, **DEBUG)


def weights(folder):
    return checkpoint.load_state(folder / "state.pt")["model"]


def test_each_epoch_visits_the_pool_once_in_its_own_order():
    a, b = pool.order(50, 0, 0), pool.order(50, 0, 1)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(50))
    assert not torch.equal(a, b)
    assert torch.equal(a, pool.order(50, 0, 0))


def test_a_pooled_run_trains_and_is_deterministic(tmp_path, monkeypatch):
    seen = []
    real = forward.loss

    def spy(model, batch):  # each example's tokens, without the batch's right padding
        seen.append([tuple(row[: int(mask.nonzero().max()) + 1].tolist())
                     for row, mask in zip(batch["input_ids"], batch["labels"] != -100)])
        return real(model, batch)

    monkeypatch.setattr(forward, "loss", spy)
    first = train(TrainSettings(out=str(tmp_path / "a"), **POOLED), progress=False)
    monkeypatch.setattr(forward, "loss", real)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[0]["pool"] == 6 and "render_seconds" in log[0]
    losses = [row["loss"] for row in log[1:]]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3  # epoch 4 vs epoch 1 of the same 6 examples
    # 3 batches an epoch: the pool's examples, each once per epoch (compared by their tokens)
    epoch = {row for batch in seen[:3] for row in batch}
    assert len(epoch) == 6 and epoch == {row for batch in seen[3:6] for row in batch}
    assert seen[:3] != seen[3:6]  # shuffled anew
    assert first["pool_seconds"] >= 0
    second = train(TrainSettings(out=str(tmp_path / "b"), **POOLED), progress=False)
    assert second["loss"] == first["loss"]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_pooled_run_matches_the_uninterrupted_one(tmp_path, monkeypatch):
    settings = {**POOLED, "steps": 7}
    train(TrainSettings(out=str(tmp_path / "a"), **settings), progress=False)
    calls = {"n": 0}
    real = forward.loss

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch 2
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(forward, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainSettings(out=str(tmp_path / "b"), **settings), progress=False)
    monkeypatch.setattr(forward, "loss", real)
    assert checkpoint.load_state(tmp_path / "b" / "state.pt")["step"] == 4
    assert train(TrainSettings(out=str(tmp_path / "b"), **settings), resume=True, progress=False)["steps"] == 7
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(VideocapError, match="changed: pool 6 -> 8"):  # another pool: other batches
        train(TrainSettings(out=str(tmp_path / "b"), **{**settings, "pool": 8}), resume=True, progress=False)


def test_a_pool_smaller_than_a_batch_is_refused(tmp_path):
    with pytest.raises(VideocapError, match="--pool must hold at least one batch"):
        TrainSettings(out=str(tmp_path), pool=3, batch_size=4)


def test_the_pool_keeps_8_bit_tiles_and_steps_see_the_same_bits(tmp_path):
    from videocap.train.examples import SyntheticSource
    from videocap.train.loop import tiny_start

    start = tiny_start(TrainSettings(out=str(tmp_path), **DEBUG))
    source = SyntheticSource(start.processor)
    examples, _ = pool.render(source, 4, workers=0, device=torch.device("cpu"), progress=False)
    with_pixels = [k for k, e in enumerate(examples) if e.pixels is not None]
    assert with_pixels, "the debug source gave no image examples"
    for k in with_pixels:
        assert examples[k].pixels.dtype == torch.uint8  # a quarter of fp32's memory
        assert torch.equal(pool.from_uint8(examples[k].pixels), source(k).pixels)  # normalised again, bit for bit
    [batch] = pool.batches(examples, 4, 0, 0, 1)
    order = pool.order(4, 0, 0).tolist()
    want = torch.cat([source(k).pixels for k in order if k in with_pixels])
    assert batch["pixels"].dtype == torch.float32 and torch.equal(batch["pixels"], want)


def test_pixels_that_are_not_normalised_8_bit_images_stay_as_they_are():
    x = torch.randn(2, 3, 8, 8)
    assert pool.to_uint8(x) is None
    u = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(pool.to_uint8(pool.from_uint8(u)), u)
