"""`--gpus N`: one engine process per GPU (cuda:0 .. cuda:N-1, or N engines on the CPU) over one shared queue.

The parent owns the inputs, the decode pool and the journal; each engine process loads the model on its device,
takes decoded videos from the one ready queue (whichever engine is free takes the next: no static split), and
sends its records back on a results queue for the parent to write. The first engine to load also sends its
processor, which the decode workers need to prepare images, so decoding starts as soon as one model is loaded.
Engine processes ignore Ctrl-C: the parent sets the shared stop event, and they finish what they run. An engine
that fails (its model does not load on its GPU, a CUDA error) is reported and the others go on; the videos it held
get no record, so the next run of the same command captions them, and the decode workers stop decoding on its GPU
(`--decode-device cuda`). Only when every engine has failed does the job fail.
"""

from __future__ import annotations

import pickle
import queue
import signal
import time
from dataclasses import dataclass

from videocap.batch.decode import DecodePool, mp_context
from videocap.batch.engine_loop import EngineLoop, EngineStats
from videocap.errors import VideocapError


@dataclass(frozen=True)
class _Msg:
    kind: str  # "processor" | "ready" | "record" | "log" | "done" | "fatal"
    rank: int
    value: object = None


def devices(config) -> list[str]:
    base = config.load.device
    if base is not None and base.startswith("cpu"):
        return ["cpu"] * config.gpus
    import torch

    if not torch.cuda.is_available():
        raise VideocapError(f"--gpus {config.gpus} needs CUDA GPUs (this torch sees none); --device cpu runs "
                            "that many CPU engines")
    if torch.cuda.device_count() < config.gpus:
        raise VideocapError(f"--gpus {config.gpus}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return [f"cuda:{k}" for k in range(config.gpus)]


def _engine_main(rank: int, device: str, config, ready, results, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        from videocap.batch.pipeline import picklable_prepare
        from videocap.tasks.captioning import family_of

        if device == "cpu":  # N CPU engines share the cores
            import os

            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.gpus))
        captioner = config.load.load(device)
        say = lambda message: results.put(_Msg("log", rank, message))  # noqa: E731
        loop = EngineLoop(captioner, ready, config.task, lambda r: results.put(_Msg("record", rank, r)), stop, say)
        prepare = picklable_prepare(captioner.processor, say)
        results.put(_Msg("processor", rank, (family_of(captioner).name,
                                             pickle.dumps(prepare) if prepare is not None else None)))
        results.put(_Msg("ready", rank))
        stats = loop.run()
        results.put(_Msg("done", rank, stats))
    except BaseException as e:  # noqa: BLE001 - whatever ends this engine, the parent must hear of it
        message = f"engine {rank} ({device}): {' '.join(str(e).split()) or type(e).__name__}"
        results.put(_Msg("fatal", rank, message if isinstance(e, VideocapError) else f"{message} ({type(e).__name__})"))


def run(config, todo, emit, stop_event, say, ready_callback) -> list[EngineStats]:
    ctx = mp_context()
    stop = ctx.Event()
    results = ctx.Queue()
    # The pool's ready queue is made now so that the engines can be handed it at spawn; the pool fills it later.
    ready = ctx.Queue(maxsize=config.prefetch_size)
    engine_devices = devices(config)
    procs = [ctx.Process(target=_engine_main, args=(rank, dev, config, ready, results, stop), daemon=True,
                         name=f"videocap-engine-{rank}") for rank, dev in enumerate(engine_devices)]
    for p in procs:
        p.start()
    pool = None
    stats: dict[int, EngineStats] = {}
    started: set[int] = set()
    failed: dict[int, str] = {}

    def lose(rank: int, why: str) -> None:
        """One engine is gone: the others go on (the videos it held get no record; the next run redoes them)."""
        failed[rank] = why
        if pool is not None:  # its GPU may be what failed: decode elsewhere from now on
            pool.lose_device(engine_devices[rank])
        if len(failed) == len(procs):
            raise VideocapError(why if len(procs) == 1 else f"every engine failed; the last: {why}")
        left = len(procs) - len(failed)
        say(f"videocap: warning: {why}; going on with {left} engine(s) (the videos it held get no record: rerun "
            "the same command for them)")
        maybe_ready()

    announced = False

    def maybe_ready() -> None:
        """Once every engine has loaded or failed (and one has loaded): the job's clock starts."""
        nonlocal announced
        if not announced and started - failed.keys() and len(started | failed.keys()) == len(procs):
            announced = True
            ready_callback()

    try:
        while len(stats) + len(failed) < len(procs):
            if stop_event.is_set() and not stop.is_set():
                stop.set()
                if pool is not None:
                    pool.stop()
            try:
                msg = results.get(timeout=0.2)
            except queue.Empty:
                dead = [k for k, p in enumerate(procs) if not p.is_alive() and k not in stats and k not in failed]
                if dead and results.empty():
                    time.sleep(0.2)  # its last messages may still be in the pipe
                    if results.empty():
                        lose(dead[0], f"engine process {dead[0]} ended without a word "
                                      f"(exit code {procs[dead[0]].exitcode})")
                continue
            if msg.kind == "record":
                emit(msg.value)
            elif msg.kind == "processor" and pool is None:
                family, blob = msg.value
                pool = DecodePool(todo, config.decode_settings(family), workers=config.workers,
                                  prefetch=config.prefetch_size, consumers=len(procs),
                                  prepare=pickle.loads(blob) if blob is not None else None, context=ctx,
                                  ready=ready, devices=config.decode_devices, threads=config.threads,
                                  lost=[engine_devices[rank] for rank in failed])
            elif msg.kind == "ready":
                started.add(msg.rank)
                maybe_ready()
            elif msg.kind == "log":
                say(msg.value)
            elif msg.kind == "done":
                stats[msg.rank] = msg.value
            elif msg.kind == "fatal" and msg.rank not in failed:
                lose(msg.rank, msg.value)
        return [stats[k] for k in sorted(stats)]
    finally:
        stop.set()
        if pool is not None:
            pool.stop()
        _wind_down(procs, results, emit)


def _wind_down(procs, results, emit, grace: float = 10.0) -> None:
    """Let the engines end (they finish what they hold once `stop` is set) while writing the records they still
    send: when one engine fails, the others' finished videos are kept, not redone by the next run. Reading also
    lets an engine exit (a process does not end while its queued messages wait unread). An engine still running
    after `grace` seconds is terminated."""
    deadline = time.monotonic() + grace
    writing = True

    def take(timeout: float | None) -> bool:
        nonlocal writing
        try:
            msg = results.get(timeout=timeout) if timeout else results.get_nowait()
        except queue.Empty:
            return False
        if writing and msg.kind == "record":
            try:
                emit(msg.value)
            except Exception:  # noqa: BLE001 - the journal itself failed; its error is already on its way up
                writing = False
        return True

    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        take(0.2)
    while take(None):  # what was sent just before the last engine exited
        pass
    for p in procs:
        if p.is_alive():
            p.terminate()
        p.join(5)
