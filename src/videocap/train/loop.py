"""The training loop: settings, the model and data a run starts from, steps, checkpoints, resume.

A run writes into `out/`: `model/` (the llava-hf checkpoint, rewritten every `save_every` steps and at the end),
`state.pt` (fp32 weights, optimizer, step, config and tokenizer: everything a resumed run needs) and `log.jsonl`
(loss, learning rate and rate every `log_every` steps). `--resume` continues from `state.pt`: example i is always
the same example and the learning rate is a function of the step, so a resumed run takes the same steps the
uninterrupted one would have (bit for bit on the CPU). Ctrl-C saves the state before stopping.

Start points: the tiny preset with a tokenizer trained from the synthetic text (default), or `init`, an existing
llava-hf checkpoint, fine-tuned fully or through LoRA adapters (`lora_rank`). bf16 autocast over fp32 weights on
CUDA, fp32 on the CPU. A `time_budget` (seconds) ends the run early and compresses the learning-rate schedule
into it (the device runs use it; such a run is not bit-for-bit reproducible).

`pool` > 0 (pool.py) renders examples 0 .. pool-1 once, before the clock starts (the time budget and the logged
rate count training only), and takes every step from that pool in shuffled epochs. Resuming a pooled run renders
the same pool again and continues with the step the uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader
from tqdm import tqdm

from videocap.errors import CheckpointError, VideocapError
from videocap.models.llava_next.config import parse_config
from videocap.models.llava_next.processor import LlavaNextProcessor
from videocap.models.llava_next.prompt import BOS_TOKEN, EOT_TOKEN, load_tokenizer
from videocap.train import checkpoint, forward, lora, pool
from videocap.train.data import Examples, RecordSource, collate
from videocap.train.examples import SyntheticSource
from videocap.train.synthetic import EVAL_SEED_BASE


@dataclass(frozen=True)
class TrainSettings:
    out: str
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    save_every: int = 500
    log_every: int = 10
    device: str | None = None
    workers: int = 0
    seed: int = 0
    init: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    records: str | None = None
    time_budget: float | None = None
    save_dtype: str = "bf16"
    vocab_size: int = 1024
    preset: str = "tiny"  # tiny.PRESETS: the architecture of a model trained from scratch
    corpus_scenes: int = 3000  # scenes whose text trains the tokenizer
    pool: int = 0  # > 0: render this many examples once and train over them in shuffled epochs (pool.py)

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every", "log_every", "vocab_size"):
            if getattr(self, name) < 1:
                raise VideocapError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup < 0 or self.workers < 0 or self.lora_rank < 0:
            raise VideocapError("--lr must be positive; --warmup, --workers and --lora-rank at least 0")
        if self.lora_rank and self.init is None:
            raise VideocapError("--lora-rank adapts an existing model: give it with --init MODEL")
        from videocap.train.tiny import PRESETS

        if self.preset not in PRESETS:
            raise VideocapError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.save_dtype not in SAVE_DTYPES:
            raise VideocapError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}")
        if self.pool < 0:
            raise VideocapError(f"--pool must be at least 0, got {self.pool}")
        if self.pool and self.pool < self.batch_size:
            raise VideocapError(f"--pool must hold at least one batch ({self.batch_size} examples), got {self.pool}")
        if self.records is None and (self.pool or self.steps * self.batch_size) >= EVAL_SEED_BASE:
            raise VideocapError("steps x batch size would reach the evaluation clips' seeds")


SAVE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Start:
    """What a run trains: the model (fp32), its config.json, tokenizer and tokenizer_config.json."""

    model: torch.nn.Module
    config: dict
    tokenizer: Tokenizer
    tokenizer_config: dict
    processor: LlavaNextProcessor = field(init=False)

    def __post_init__(self):
        self.processor = LlavaNextProcessor(parse_config(self.config), self.tokenizer)


def tiny_start(settings: TrainSettings) -> Start:
    from videocap.train import tiny
    from videocap.train.tokenizer import TOKENIZER_CONFIG, train_tokenizer

    tokenizer = train_tokenizer(settings.vocab_size, settings.corpus_scenes)
    ids = {t: tokenizer.token_to_id(t) for t in (BOS_TOKEN, EOT_TOKEN, "<|end_of_text|>", "<image>")}
    vocab = -(-tokenizer.get_vocab_size() // 64) * 64
    config = tiny.hf_config(tiny.PRESETS[settings.preset], vocab, ids[BOS_TOKEN], [ids[EOT_TOKEN]], ids["<image>"], ids["<|end_of_text|>"])
    _, model = tiny.build(config, settings.seed)
    return Start(model, config, tokenizer, dict(TOKENIZER_CONFIG))


def init_start(spec: str) -> Start:
    from videocap.models.llava_next.weights import load
    from videocap.weights import hub

    folder = hub.resolve(spec)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "llava_next":
        raise CheckpointError(f"{spec}: --init needs a llava-hf checkpoint (config.json with model_type "
                              f"llava_next), not {config.get('model_type')!r}")
    load_tokenizer(folder)  # checks it is a Llama-3 chat tokenizer
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text()) if path.is_file() else {}
    model = load(folder, device="cpu", dtype=torch.float32).train()
    return Start(model, config, tokenizer, tokenizer_config)


def lr_at(settings: TrainSettings, fraction: float, step: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to lr * min_lr_ratio as `fraction` goes to 1."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    floor = settings.lr * settings.min_lr_ratio
    return floor + (settings.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def train(settings: TrainSettings, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or continue) a training run; returns a summary (steps, final loss, seconds, examples per second)."""
    from videocap.api import pick_device

    out = Path(settings.out)
    state_path = out / checkpoint.STATE_FILE
    state = checkpoint.load_state(state_path) if resume else None
    if resume and state is None:
        raise VideocapError(f"{out}: nothing to resume ({state_path} is missing)")
    if not resume and state_path.exists():
        raise VideocapError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if state is not None:
        _check_resumable(state_path, state.get("settings", {}), settings)
    device = pick_device(settings.device)
    if state is not None:
        start = Start(_tiny_shell(state["config"]) if state["init"] is None else init_start(state["init"]).model,
                      state["config"], Tokenizer.from_str(state["tokenizer"]), state["tokenizer_config"])
    else:
        start = init_start(settings.init) if settings.init else tiny_start(settings)
    model = start.model.to(device).train()
    params = lora.add_lora(model, settings.lora_rank, settings.lora_alpha) if settings.lora_rank else \
        [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98),
                                  fused=device.type == "cuda")
    step, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed"]
    source = RecordSource(settings.records, start.processor) if settings.records else SyntheticSource(start.processor)
    pool_seconds = None
    if settings.pool:
        examples, pool_seconds = pool.render(source, settings.pool, workers=settings.workers, device=device,
                                             progress=progress, worker_init_fn=_one_thread)
        loader = pool.batches(examples, settings.batch_size, settings.seed, step, settings.steps)
    else:
        loader = DataLoader(Examples(source, step * settings.batch_size, settings.steps * settings.batch_size),
                            batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers,
                            collate_fn=collate, pin_memory=device.type == "cuda", worker_init_fn=_one_thread,
                            prefetch_factor=8 if settings.workers else None, persistent_workers=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    torch.backends.cuda.matmul.allow_tf32 = True
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a", encoding="utf-8")
    if pool_seconds is not None:
        log.write(json.dumps({"pool": settings.pool, "render_seconds": round(pool_seconds, 1),
                              "examples_per_s": round(settings.pool / max(pool_seconds, 1e-9), 1)}) + "\n")

    def save() -> None:
        checkpoint.save_model(model, start.config, start.tokenizer, start.tokenizer_config, out / "model",
                              SAVE_DTYPES[settings.save_dtype])
        checkpoint.save_state(state_path, {
            "step": step, "elapsed": elapsed, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "config": start.config, "tokenizer": start.tokenizer.to_str(), "tokenizer_config": start.tokenizer_config,
            "init": settings.init, "settings": asdict(settings)})

    t0, seen, window, last = time.perf_counter() - elapsed, 0, [], None
    interrupted = _defer_interrupt()
    bar = tqdm(total=settings.steps, initial=step, desc="training", unit="step", file=sys.stderr, disable=not progress)
    try:
        for batch in loader:
            elapsed = time.perf_counter() - t0
            fraction = step / settings.steps
            if settings.time_budget:
                fraction = max(fraction, elapsed / settings.time_budget)
                if fraction >= 1:
                    break
            lr = lr_at(settings, fraction, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with autocast:
                loss = forward.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            step += 1
            seen += settings.batch_size
            window.append(loss.detach())
            if step % settings.log_every == 0 or step == settings.steps:
                last = float(torch.stack(window).mean())
                window = []
                elapsed = time.perf_counter() - t0
                rate = seen / max(elapsed - (state["elapsed"] if state else 0.0), 1e-9)
                log.write(json.dumps({"step": step, "loss": round(last, 5), "lr": lr, "examples_per_s": round(rate, 1),
                                      "seconds": round(elapsed, 1)}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{last:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.0f}")
            bar.update(1)
            if step % settings.save_every == 0:
                elapsed = time.perf_counter() - t0
                save()
            if interrupted():  # here, between steps: the saved weights, optimizer and step count agree
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        elapsed = time.perf_counter() - t0
        save()
        raise
    finally:
        interrupted.restore()
        bar.close()
        log.close()
    elapsed = time.perf_counter() - t0
    if last is None and window:
        last = float(torch.stack(window).mean())
    save()
    summary = {"steps": step, "loss": last, "seconds": round(elapsed, 1), "model": str(out / "model")}
    if pool_seconds is not None:
        summary["pool_seconds"] = round(pool_seconds, 1)
    return summary


# What a resumed run must share with the run it continues: its examples (which example is step i's), its model's
# shape, where it started. The rest (--steps, --lr, saving, workers, device, time budget) may change.
RESUME_FIXED = ("batch_size", "seed", "init", "lora_rank", "lora_alpha", "records", "preset", "vocab_size", "pool")


def _check_resumable(state_path: Path, saved: dict, settings: TrainSettings) -> None:
    changed = [f"{name} {saved[name]!r} -> {getattr(settings, name)!r}" for name in RESUME_FIXED
               if name in saved and saved[name] != getattr(settings, name)]
    if changed:
        raise VideocapError(f"{state_path}: --resume needs the run's own settings; changed: {', '.join(changed)}")


def _tiny_shell(config: dict) -> torch.nn.Module:
    from videocap.train import tiny

    return tiny.build(config)[1]


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


class _defer_interrupt:
    """Ctrl-C during a step takes effect after it (`interrupted()` turns True), so that a step is saved whole or not
    at all: an interrupt between `optimizer.step()` and the step count would have the resumed run repeat it. A
    second Ctrl-C interrupts at once. Outside the main thread (no signal handlers there) interrupts are not deferred."""

    def __init__(self):
        self.hit = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.hit = True
        self.restore()  # the next Ctrl-C is the default one

    def __call__(self) -> bool:
        return self.hit

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
