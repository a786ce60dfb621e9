"""Training the tiny model: the training forward against the engine's, loss going down, checkpoints that load
identically in videocap and transformers, resume, LoRA."""

from __future__ import annotations

import math
import os
import random
import signal

import pytest
import torch

import videocap
from videocap.errors import VideocapError
from videocap.models.layers.attention import AttnMetadata
from videocap.models.llava_next.weights import load
from videocap.train import checkpoint, forward, lora
from videocap.train.data import collate
from videocap.train.examples import Task, encode, synthetic_prompted
from videocap.train.loop import TrainSettings, tiny_start, train
from videocap.train.scene import sample_scene


DEBUG = dict(preset="debug", corpus_scenes=200, vocab_size=400)  # a small model and tokenizer: seconds on a CPU


@pytest.fixture(scope="module")
def start():
    return tiny_start(TrainSettings(out="unused", **DEBUG))


def example(start, seed: int, task: Task):
    return encode(start.processor, synthetic_prompted(sample_scene(seed), task, random.Random(seed)))


@torch.no_grad()
def engine_logits(model, e) -> torch.Tensor:
    """The engine path: one fresh prefill of the whole sequence through a paged cache."""
    n, bs = len(e.input_ids), 16
    blocks = math.ceil(n / bs)
    layers, kv, d = model.kv_spec()
    caches = [torch.zeros(2, blocks, bs, kv, d) for _ in range(layers)]
    meta = AttnMetadata((n,), torch.tensor([n]), torch.arange(n), torch.arange(blocks)[None], bs,
                        context_lens_host=(n,))
    embeds = torch.cat(model.encode_images(e.pixels, [e.size])) if e.pixels is not None else None
    hidden = model(e.input_ids, torch.arange(n), meta, caches, embeds, e.image_mask if embeds is not None else None)
    return model.compute_logits(hidden)


@torch.no_grad()
def train_logits(model, examples) -> torch.Tensor:
    b = collate(examples)
    return model.lm_head(forward.hidden_states(model, b["input_ids"], b["image_mask"], b["pixels"], b["sizes"]))


def test_training_forward_matches_the_engine(start):
    model = start.model.eval()
    a, b = example(start, 1, Task.FAST), example(start, 2, Task.SUMMARY)  # an image and text only, padded together
    logits = train_logits(model, [a, b])
    for row, e in enumerate((a, b)):
        torch.testing.assert_close(logits[row, : len(e.input_ids)], engine_logits(model, e), atol=2e-5, rtol=1e-4)


def test_a_few_steps_lower_the_loss(start):
    _, model = __import__("videocap.train.tiny", fromlist=["build"]).build(start.config, seed=1)
    batch = collate([example(start, 3, Task.PAIR), example(start, 4, Task.RECAPTION)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = forward.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_save_then_load_gives_identical_logits(start, tmp_path):
    model = start.model.eval()
    e = example(start, 5, Task.QA)
    checkpoint.save_model(model, start.config, start.tokenizer, start.tokenizer_config, tmp_path / "fp32", torch.float32)
    loaded = load(tmp_path / "fp32", dtype=torch.float32)
    assert torch.equal(engine_logits(loaded, e), engine_logits(model, e))
    checkpoint.save_model(model, start.config, start.tokenizer, start.tokenizer_config, tmp_path / "bf16")
    rounded = load(tmp_path / "bf16", dtype=torch.bfloat16).float()  # bf16 on disk, upcast as the CPU load does
    assert torch.equal(engine_logits(load(tmp_path / "bf16", dtype=torch.float32), e), engine_logits(rounded, e))
    captioner = videocap.load(tmp_path / "fp32", device="cpu", progress=False)
    assert captioner.processor.tokenizer.get_vocab_size() == start.tokenizer.get_vocab_size()


def test_transformers_reads_the_checkpoint(start, tmp_path):
    from transformers import LlavaNextForConditionalGeneration

    model = start.model.eval()
    checkpoint.save_model(model, start.config, start.tokenizer, start.tokenizer_config, tmp_path, torch.float32)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    e = example(start, 6, Task.SUMMARY)  # text only: the same decoder, token for token
    with torch.no_grad():
        theirs = hf(input_ids=e.input_ids[None]).logits[0]
        pixels = torch.randn(2, 3, 56, 56)
        vision = hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(theirs, engine_logits(model, e), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vision, model.vision.features(pixels, -1), atol=1e-4, rtol=1e-4)


RESUME_SETTINGS = dict(steps=4, batch_size=1, warmup=1, lr=3e-3, save_every=100, log_every=1, **DEBUG)


def interrupt_then_resume(tmp_path, monkeypatch, on_loss_call: dict) -> int:
    """Train straight into a/, then into b/ with `on_loss_call[n]` run at the n-th loss call until the run ends with
    KeyboardInterrupt, then resume b/ and check it ends with a/'s weights. Returns b/'s step count at the stop."""
    straight = train(TrainSettings(out=str(tmp_path / "a"), **RESUME_SETTINGS), progress=False)
    calls = {"n": 0}
    real = forward.loss

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] in on_loss_call:
            on_loss_call[calls["n"]]()
        return real(model, batch)

    monkeypatch.setattr(forward, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        train(TrainSettings(out=str(tmp_path / "b"), **RESUME_SETTINGS), progress=False)
    stopped_at = checkpoint.load_state(tmp_path / "b" / "state.pt")["step"]
    monkeypatch.setattr(forward, "loss", real)
    resumed = train(TrainSettings(out=str(tmp_path / "b"), **RESUME_SETTINGS), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 4
    a = checkpoint.load_state(tmp_path / "a" / "state.pt")["model"]
    b = checkpoint.load_state(tmp_path / "b" / "state.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return stopped_at


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    def stop():
        raise KeyboardInterrupt

    assert interrupt_then_resume(tmp_path, monkeypatch, {3: stop}) == 2
    assert (tmp_path / "b" / "model" / "model.safetensors").is_file()
    with pytest.raises(VideocapError, match="changed: batch_size 1 -> 2"):  # step i would be other examples
        train(TrainSettings(out=str(tmp_path / "b"), **{**RESUME_SETTINGS, "batch_size": 2}), resume=True,
              progress=False)


def test_ctrl_c_mid_step_ends_the_run_after_that_step(tmp_path, monkeypatch):
    """A real SIGINT while a step computes: the step is applied and counted, then the run saves and stops; resuming
    gives the uninterrupted run's weights (no step applied twice)."""
    ctrl_c = {2: lambda: os.kill(os.getpid(), signal.SIGINT)}  # Ctrl-C arrives while step 2 computes
    assert interrupt_then_resume(tmp_path, monkeypatch, ctrl_c) == 2  # step 2 finished and was counted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    assert not list((tmp_path / "b" / "model").glob("*.tmp"))


def test_lora_trains_adapters_and_merges(start):
    _, model = __import__("videocap.train.tiny", fromlist=["build"]).build(start.config, seed=2)
    e = example(start, 7, Task.FIRST)
    before = engine_logits(model.eval(), e)
    base = model.llm.layers[0].mlp.down_proj.weight.detach().clone()
    params = lora.add_lora(model, rank=4)
    assert torch.equal(engine_logits(model, e), before)  # B starts at zero
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        loss = forward.loss(model.train(), collate([e]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapted = engine_logits(model.eval(), e)
    lora.merge(model)
    assert not lora.has_lora(model) and not torch.equal(model.llm.layers[0].mlp.down_proj.weight, base)
    torch.testing.assert_close(engine_logits(model, e), adapted, atol=1e-5, rtol=1e-5)


def test_tiny_hd_gives_each_frame_of_the_grid_more_pixels():
    """--preset tiny-hd: the same model, pinpoints up to 6x6 tiles: the generator's 16-frame grids are shown at
    about 1.5x the side (so each frame gets about twice the patches or more), whatever the frame size."""
    from videocap.models.llava_next.anyres import select_best_resolution
    from videocap.train.scene import FRAME_SIZES
    from videocap.train.tiny import PRESETS
    from videocap.video.layout import grid_size

    tiny, hd = PRESETS["tiny"], PRESETS["tiny-hd"]
    assert (hd.tile, hd.patch, hd.hidden, hd.layers) == (tiny.tile, tiny.patch, tiny.hidden, tiny.layers)
    for w, h in FRAME_SIZES:
        size = grid_size(16, w, h)
        a, b = select_best_resolution(size, tiny.pinpoints), select_best_resolution(size, hd.pinpoints)
        assert b[0] * b[1] >= 2 * a[0] * a[1], (w, h, a, b)
    TrainSettings(out="x", preset="tiny-hd")  # accepted
    with pytest.raises(VideocapError, match="--preset must be one of tiny, tiny-hd, debug"):
        TrainSettings(out="x", preset="huge")
