"""One batch job: read the inputs, skip what the journal has, caption the rest, summarize, export.

Where the engines run is the only difference between the three ways: here in this process (one engine), in
`--gpus N` engine processes (multi.py), or as Ray actors (ray.py). In all of them this process alone writes the
journal, decode workers feed the engines through a bounded queue, and every engine runs `EngineLoop`.

Ctrl-C: the first stops feeding new videos; those in the engine finish and are written. A second leaves them for
the next run. Either way every record written is whole, and rerunning the command goes on where it stopped.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from videocap.batch import journal as journal_mod
from videocap.batch.decode import GPU_DECODE_THREADS, DecodePool, DecodeSettings, decode_devices, default_workers
from videocap.batch.engine_loop import EngineLoop, TaskSpec
from videocap.batch.inputs import Item, read_inputs, shard
from videocap.batch.progress import Progress, Summary
from videocap.errors import BatchInputError
from videocap.video import SeekMode
from videocap.video.hardware import check_device, mps_running, parse_device


@dataclass(frozen=True)
class LoadSpec:
    """How each engine process loads the model (videocap.api.load's arguments)."""

    model: str
    device: str | None = None  # --gpus N: cuda:0 .. cuda:N-1, or N engines on "cpu"
    dtype: str | None = None
    allow_pickle: bool = False
    image_view: str = "anyres"
    gpu_memory_fraction: float = 0.9
    eager: bool = False

    def load(self, device: str | None = None):
        from videocap.api import load

        return load(self.model, device=device or self.device, dtype=self.dtype, allow_pickle=self.allow_pickle,
                    image_view=self.image_view, progress=False, gpu_memory_fraction=self.gpu_memory_fraction,
                    eager=self.eager)


@dataclass(frozen=True)
class BatchConfig:
    input: str
    out: str  # the JSONL journal
    load: LoadSpec | None = None  # None: run_batch is given a loaded captioner
    task: TaskSpec = field(default_factory=TaskSpec)
    frames: int | None = None
    seconds: float = 2.0
    seek: SeekMode = SeekMode.EXACT
    max_side: int | None = None
    allow_partial: bool = False
    max_duration: float | None = None
    decode_workers: int | None = None  # default: one per core, less one per engine
    prefetch: int | None = None  # decoded videos waiting for the engine (default: 2 per decode worker, at least 8)
    retry_failed: bool = False
    shard: tuple[int, int] | None = None  # (index, count)
    gpus: int = 1  # engine processes (one per GPU; on CPU, several CPU engines)
    ray: str | None = None  # None: no Ray; "" or "auto": a local/auto-detected cluster; else its address
    export: tuple[str, ...] = ()  # "parquet", "csv"
    quiet: bool = False
    fsync_every: float = 1.0
    decode_device: str | None = None  # None/"cpu", "cuda" (the engines' GPUs) or "cuda:N": where videos decode
    decode_threads: int | None = None  # videos each decode process decodes at once (default: GPU_DECODE_THREADS
    # where a GPU decodes, else 1)

    def __post_init__(self):
        if self.shard is not None:
            i, n = self.shard
            if not 0 <= i < n:
                raise BatchInputError(f"--shard {i}/{n}: the index must be from 0 to {n - 1}")
        if self.gpus < 1:
            raise BatchInputError(f"--gpus must be at least 1, got {self.gpus}")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise BatchInputError(f"--decode-threads must be at least 1, got {self.decode_threads}")
        if self.ray is not None and self.decode_threads not in (None, 1):
            raise BatchInputError("--decode-threads is for local jobs: on Ray each decode task decodes one video")
        if parse_device(self.decode_device) is not None:
            if self.ray is not None:
                raise BatchInputError("--decode-device cuda is for local jobs: Ray's decode tasks run on CPU workers")
            if self.task.mode != "fast":
                raise BatchInputError("--decode-device cuda is for --mode fast: the slide mode decodes its frames "
                                      "in the engine's process, on the CPU")
        for kind in self.export:
            if kind not in ("parquet", "csv"):
                raise BatchInputError(f"unknown export format {kind!r} (use parquet or csv)")

    @property
    def threads(self) -> int:
        """Videos each decode process decodes at once: by default GPU_DECODE_THREADS where a GPU decodes (unless
        --decode-workers alone sets the processes), else 1."""
        if self.decode_threads is not None:
            return self.decode_threads
        gpu = parse_device(self.decode_device) is not None
        return GPU_DECODE_THREADS if gpu and self.decode_workers is None else 1

    @property
    def workers(self) -> int:
        """Decode processes: by default about one video in flight per core (less one core per engine), and at least
        one on each GPU that decodes."""
        if self.decode_workers is not None:
            return self.decode_workers
        return max(len(self.decode_devices or ()), math.ceil(default_workers(self.gpus) / self.threads), 1)

    @property
    def prefetch_size(self) -> int:
        return self.prefetch if self.prefetch is not None else max(8, 2 * self.workers * self.threads)

    @property
    def decode_devices(self) -> tuple[str, ...] | None:
        return decode_devices(self.decode_device, self.gpus, self.load.device if self.load is not None else None)

    def decode_settings(self, family: str) -> DecodeSettings:
        return DecodeSettings(self.task.mode, family, self.frames, self.seconds, self.seek, self.max_side,
                              self.allow_partial, self.max_duration)


def plan_job(config: BatchConfig) -> tuple[list[Item], Summary, journal_mod.JournalState]:
    """The items this run captions (the shard, less what the journal holds), the summary to fill in, and the
    journal as read."""
    items = read_inputs(config.input)
    if config.shard is not None:
        items = shard(items, *config.shard)
    state = journal_mod.read(config.out)
    skip = state.done() if config.retry_failed else set(state.records)
    todo = [it for it in items if it.id not in skip]
    return todo, Summary(inputs=len(items), skipped=len(items) - len(todo)), state


def run_batch(config: BatchConfig, captioner=None, *, log: Callable[[str], None] | None = None) -> Summary:
    """Run the job `config` describes; `captioner`: an already loaded model for the one local engine."""
    t0 = time.perf_counter()
    todo, summary, state = plan_job(config)
    summary.decode_workers = config.workers if todo else 0
    summary.decode_threads = config.threads
    if todo:
        for device in config.decode_devices or ():
            check_device(device)  # an unusable GPU fails the job before it starts, not every video
        created = not os.path.exists(config.out)
        with journal_mod.Journal(config.out, config.fsync_every, state) as journal, Stopper() as stopper:
            if captioner is None and config.load is not None and config.ray is None:
                from videocap.weights import hub

                # A bad --model fails here, before the progress bar, leaving no journal behind; a download
                # happens once, not in each engine process. (On Ray the model is the actors' to find.)
                try:
                    hub.resolve(config.load.model, allow_pickle=config.load.allow_pickle, progress=not config.quiet)
                except BaseException:
                    if created:
                        journal.close()
                        os.remove(config.out)
                    raise
            progress = Progress(summary, len(todo), config.quiet)
            say = log or progress.write
            if journal.dropped_tail:
                say(f"videocap: warning: {config.out}: dropped a record cut short at its end (a crash mid-write)")
            if config.decode_devices and not mps_running():
                say("videocap: note: --decode-device cuda without CUDA MPS: the decode processes' CUDA contexts take "
                    "turns on the GPU with the model's and slow it; start MPS first (nvidia-cuda-mps-control -d)")

            def emit(record: dict) -> None:
                journal.write(record)
                progress.record(record)

            def ready() -> None:  # every engine loaded: the clock of videos/hour starts
                nonlocal t_ready
                t_ready = time.perf_counter()
                summary.load_seconds = t_ready - t0

            t_ready = t0
            stopper.say = say
            try:
                if config.ray is not None:
                    from videocap.batch import ray as ray_mod

                    stats = ray_mod.run(config, todo, emit, stopper.event, say, ready)
                elif config.gpus > 1:
                    from videocap.batch import multi

                    stats = multi.run(config, todo, emit, stopper.event, say, ready)
                else:
                    stats = [run_local(config, todo, emit, stopper.event, say, ready, captioner)]
            finally:
                progress.close()
            summary.wall_seconds = time.perf_counter() - t_ready
            summary.engines = len(stats)
            summary.busy_seconds = sum(s.busy_seconds for s in stats)
            summary.out_of_memory = sum(s.out_of_memory for s in stats)
            summary.interrupted = stopper.event.is_set() and summary.remaining > 0
    if config.export:
        from videocap.batch.export import export

        summary.exported = [export(config.out, kind) for kind in config.export]
    return summary


def run_local(config: BatchConfig, todo: list[Item], emit, stop, say, ready, captioner=None):
    """One engine in this process, fed by the decode pool."""
    from videocap.tasks.captioning import family_of

    if captioner is None:
        assert config.load is not None, "no model to load"
        captioner = config.load.load()
    loop = EngineLoop(captioner, None, config.task, emit, stop, say)  # checks the job's prompts first
    pool = DecodePool(todo, config.decode_settings(family_of(captioner).name), workers=config.workers,
                      prefetch=config.prefetch_size, prepare=picklable_prepare(captioner.processor, say),
                      devices=config.decode_devices, threads=config.threads)
    loop.ready = pool.ready
    ready()
    try:
        return loop.run()
    finally:
        pool.stop()


def picklable_prepare(processor, say=lambda m: None):
    """The processor's `prepare_image` for the decode workers, or None (prepared in the engine's process) when the
    processor cannot travel to them."""
    try:
        pickle.dumps(processor.prepare_image)
    except Exception as e:  # noqa: BLE001 - any pickling failure means the same: prepare here
        say(f"videocap: warning: images are prepared in the engine's process ({type(e).__name__}: {e})")
        return None
    return processor.prepare_image


class Stopper:
    """Ctrl-C while the job runs: the first sets `event` (stop feeding), the second raises KeyboardInterrupt."""

    def __init__(self):
        self.event = threading.Event()
        self.say: Callable[[str], None] = lambda message: print(message, file=sys.stderr)
        self.previous = None

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        self.say("videocap: stopping: the videos in the engine finish and are written; Ctrl-C again leaves them "
                 "for the next run")

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
