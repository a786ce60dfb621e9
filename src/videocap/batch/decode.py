"""Decode workers: processes that probe, plan, decode and lay out videos ahead of the engine.

Each worker is handed items over a pipe of its own, turns each into a `Decoded` (the plan and, for the fast mode,
the layout image already prepared by the family's processor — pixels ready for the engine; or an error record's
reason) and sends it back pickled; the pool's relay thread moves it to a bounded ready queue. A full ready queue
stops the relay, and so the workers: that is the prefetch bound, and it caps the memory decoded videos hold. The
engine side never decodes in the fast mode.
The sliding mode decodes its frames as its steps need them (two at a time, conditioned on the captions before),
so its workers only probe and plan; its frames are decoded in the engine's process.

Workers are forked from a fork server (a clean process started once, with videocap's decoding modules imported:
the parent may hold CUDA and threads, which a plain fork would copy), ignore Ctrl-C (the parent decides), decode
with one thread each (one process per core scales better than threads within one decoder), and run at a lower
CPU priority than the engine's process (`WORKER_NICE`). A worker may take several videos at once in threads
(`threads`): FFmpeg decodes and converts without holding the GIL, and where the GPU decodes, one process's CUDA
context then serves them all.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import wait

from videocap.batch import records
from videocap.batch.inputs import Item
from videocap.errors import VideocapError
from videocap.video import SeekMode

END = b"end"  # on the ready queue: no more items for this consumer
# Decode workers yield the CPU to the engine's process: its host thread launches every GPU step, and a step it
# launches late idles the GPU, while a worker that waits a little still keeps the queue ahead of the engine.
WORKER_NICE = 10
_niced = False


@dataclass(frozen=True)
class DecodeSettings:
    """How every video of the job is planned and decoded."""

    mode: str  # "fast" or "slide"
    family: str  # the model family (its layout)
    frames: int | None = None  # fast: frames in the layout (default 16)
    seconds: float = 2.0  # slide: a frame every `seconds`
    seek: SeekMode = SeekMode.EXACT
    max_side: int | None = None
    allow_partial: bool = False
    max_duration: float | None = None  # seconds; longer videos (windows) are refused as "too long"
    threads: int = 1  # decoder threads per worker
    device: str | None = None  # None: FFmpeg's CPU decoders; "cuda:N": that GPU's video engines (video/hardware.py)


@dataclass
class Decoded:
    """A video ready for the engine (`plan`, and `ready` in the fast mode) or refused (`error`, `reason`)."""

    item: Item
    plan: object | None = None  # VideoPlan
    ready: object | None = None  # FastInput with a prepared image
    error: str | None = None
    reason: str | None = None
    seconds: float = 0.0  # in the worker
    finished_at: float = 0.0  # time.time() when the worker finished it
    queued: float = 0.0  # seconds from then until the engine took it (set by the engine)
    stages: dict[str, float] | None = None  # `seconds` split: probe (--max-duration), plan, frames, layout, prepare;
    # and cpu: this thread's CPU seconds over them all


def decode_item(item: Item, settings: DecodeSettings, prepare=None) -> Decoded:
    """`item` planned and (fast) decoded, or the reason it cannot be captioned. Never raises for a bad video."""
    from videocap.tasks.family import family
    from videocap.tasks.plan import plan_video
    from videocap.video import probe

    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        if settings.max_duration is not None:
            info = probe(item.path, count_frames=False)
            span = (item.end if item.end is not None else info.duration) - (item.start or 0.0)
            if span > settings.max_duration:
                return Decoded(item, error=f"{span:.1f} s of video is longer than --max-duration "
                               f"{settings.max_duration:g} s", reason=records.TOO_LONG,
                               seconds=time.perf_counter() - t0)
        t_plan = time.perf_counter()
        plan = plan_video(item.path, settings.mode, frames=settings.frames, seconds=settings.seconds,
                          start=item.start, end=item.end, seek=settings.seek, max_side=settings.max_side,
                          allow_partial=settings.allow_partial, decode_device=settings.device)
        stages = {"probe": t_plan - t0, "plan": time.perf_counter() - t_plan}
        ready = None
        if settings.mode == "fast":
            ready = _fast(plan, family(settings.family), settings, prepare)
            stages.update(ready.stages)
        stages["cpu"] = time.thread_time() - c0
        return Decoded(item, plan, ready, seconds=time.perf_counter() - t0, stages=stages)
    except (VideocapError, MemoryError) as e:
        failed = records.failure(item, settings.mode, "", e)
    except Exception as e:  # noqa: BLE001 - an input FFmpeg or a layout chokes on in a way nobody typed: this
        # video fails, the job goes on (the type names it for a bug report)
        failed = records.failure(item, settings.mode, "", f"{type(e).__name__}: {e}", "error")
    return Decoded(item, error=failed["error"], reason=failed["reason"], seconds=time.perf_counter() - t0)


def _fast(plan, fam, settings: DecodeSettings, prepare):
    """The fast input of `plan`; where a GPU decodes it, the CPU again if the GPU's attempt fails or meets damage.

    A GPU decoder can fail for reasons of its own (its memory taken by the engine, a context limit), and those
    must not become a record that calls a good video broken; a damaged file fails on the CPU too, and gets its
    record from there."""
    from videocap.tasks.fast import fast_input

    if plan.decode_device is None:
        return fast_input(plan, fam, threads=settings.threads, prepare=prepare)
    try:
        ready = fast_input(plan, fam, threads=settings.threads, prepare=prepare)
        if ready.warnings == plan.warnings:  # no damage met (allow_partial turns damage into warnings)
            return ready
        why = "the GPU decoder met damage"
    except Exception as e:  # noqa: BLE001 - whatever the GPU's attempt raised, the CPU's attempt decides
        why = f"the GPU decoder failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    ready = fast_input(replace(plan, decode_device=None), fam, threads=settings.threads, prepare=prepare)
    return replace(ready, warnings=(*ready.warnings, f"decoded on the CPU: {why}"))


def lower_priority() -> None:
    """Once per process: one torch thread and a lower CPU priority than the engine's process."""
    global _niced
    if _niced:
        return
    _niced = True
    import torch

    torch.set_num_threads(1)
    try:
        os.nice(WORKER_NICE)
    except OSError:  # not permitted here: run at the same priority
        pass


def _worker(conn, theirs, settings: DecodeSettings, prepare_blob: bytes | None, threads: int = 1,
            devices: Sequence[str] = (), lost=None) -> None:
    """A decode process: jobs arrive on `conn` (an Item, or None: finish and end), results go back on it. `theirs`:
    the job's end of the same pipe, closed here at once (a forked worker inherits it, and holding it open would
    keep a send to a dead job waiting for ever)."""
    theirs.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    lower_priority()
    prepare = pickle.loads(prepare_blob) if prepare_blob is not None else None
    if devices and lost is not None and settings.device in devices:
        settings = _Steered(settings, tuple(devices), lost)
    sending = threading.Lock()
    parent = multiprocessing.parent_process()

    def receive():
        """The next job; EOFError once the job's process is gone (a forked worker holds the parent's end of its own
        pipe too, so the pipe alone would not tell)."""
        if parent is not None:
            while not wait([conn, parent.sentinel]):
                pass
            if not conn.poll():
                raise EOFError
        return conn.recv()

    def serve(item: Item) -> None:
        decoded = decode_item(item, settings() if callable(settings) else settings, prepare)
        decoded.finished_at = time.time()
        data = pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)
        with sending:
            conn.send_bytes(data)

    try:
        if threads == 1:
            while (item := receive()) is not None:
                serve(item)
            return
        # Several videos at once in this process (FFmpeg decodes and converts without the GIL): one GPU context
        # serves them all. The parent sends no more jobs than there are threads.
        local: queue.Queue = queue.Queue()
        pool = [threading.Thread(target=_serve_or_die, args=(local, serve), daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        while (item := receive()) is not None:
            local.put(item)
        for _ in pool:
            local.put(None)
        for t in pool:
            t.join()
    except EOFError:  # the parent is gone
        return


class _Steered:
    """A worker's settings that move off its GPU once the pool marks it lost: to the next GPU still in use, else
    to the CPU."""

    def __init__(self, settings: DecodeSettings, devices: tuple[str, ...], lost):
        self.settings, self.devices, self.lost = settings, devices, lost

    def __call__(self) -> DecodeSettings:
        k = self.devices.index(self.settings.device)
        for device in self.devices[k:] + self.devices[:k]:
            if not self.lost[self.devices.index(device)]:
                return replace(self.settings, device=device)
        return replace(self.settings, device=None)


def _serve_or_die(jobs: queue.Queue, serve) -> None:
    """One of a worker's threads: `serve` each job until None. Whatever kills the thread ends the process, as it
    would a worker of one thread (the pool replaces it), rather than leaving a process short of a thread."""
    try:
        while (item := jobs.get()) is not None:
            serve(item)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(1)


def mp_context():
    """The multiprocessing context of batch's processes: a fork server that has imported the decoding side (each
    worker then starts in milliseconds), or spawn where there is no fork server."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["videocap.batch.decode", "videocap.batch.engine_loop"])
    return ctx


# Videos a decode process decodes at once when a GPU decodes them. Each process holds a CUDA context, and contexts
# of different processes take turns on the GPU (unless CUDA MPS joins them): a few processes of several threads
# supplied more than one process per video and slowed the engine less (benchmarks/RESULTS.md, issue 8 runs 6-7).
GPU_DECODE_THREADS = 8


def default_workers(gpus: int = 1) -> int:
    """One decode process per core, less one core per engine process."""
    return max(1, (os.cpu_count() or 2) - gpus)


def decode_devices(decode_device: str | None, gpus: int, engine_device: str | None) -> tuple[str, ...] | None:
    """The GPUs the decode workers use, dealt in turn: None for the CPU; "cuda" means the engines' GPUs (with
    --gpus N, cuda:0..N-1; else the engine's own cuda:K, or cuda:0); "cuda:N" that GPU for every worker."""
    from videocap.video.hardware import parse_device

    device = parse_device(decode_device)
    if device is None:
        return None
    if device != "cuda":
        return (device,)
    if gpus > 1:
        return tuple(f"cuda:{k}" for k in range(gpus))
    if engine_device is not None and engine_device.startswith("cuda:"):
        return (engine_device,)
    return ("cuda:0",)


@dataclass
class _Slot:
    """One decode process, its end of the pipe to it, and the jobs it holds."""

    proc: object
    conn: object
    held: int = 0  # jobs sent, results not yet back
    ending: bool = False  # told to finish (None sent)


class DecodePool:
    """`workers` decode processes over `items`; `ready` is the queue their results arrive on (pickled `Decoded`s,
    then `END` once per consumer). `prepare`: the processor's `prepare_image` (picklable) or None. `ready`: a
    multiprocessing queue made beforehand (engine processes spawned before the pool hold it); by default a queue
    for this process. `devices`: the GPUs that decode, dealt to the workers in turn (None: `settings.device` for
    all). `threads`: videos each worker process decodes at once (GPU decoding: fewer processes, so fewer CUDA
    contexts, for the same number of videos in flight). `lose_device` (or `lost` at the start) takes a GPU out of
    use, say when its engine failed: its workers move to the next GPU still in use, or to the CPU.

    Each worker has a pipe of its own to this process, where one thread (the relay) deals out jobs and moves
    results to `ready`: a worker that dies, whatever it was doing, leaves no shared lock taken and strands no job
    but its own. It is replaced; the videos it held get no record (the next run of the job redoes them)."""

    def __init__(self, items: Iterable[Item], settings: DecodeSettings, *, workers: int, prefetch: int,
                 consumers: int = 1, prepare=None, context=None, ready=None, devices: Sequence[str] | None = None,
                 threads: int = 1, lost: Iterable[str] = ()):
        self.ctx = ctx = context or mp_context()
        # Results for this process (the one local engine) need no second trip through a pipe.
        self.ready = ready if ready is not None else queue.Queue(maxsize=max(1, prefetch))
        self.stopping = threading.Event()
        self.died = 0  # workers that ended with an error
        self.exit_codes: list[int | None] = []  # of the workers that died, in order
        self.consumers = consumers
        self.hold = threads  # jobs a worker holds: one a thread (a worker that dies loses no job waiting in it)
        blob = pickle.dumps(prepare) if prepare is not None else None
        each = [replace(settings, device=d) for d in devices] if devices else [settings]
        self.devices = tuple(devices or ())
        self.lost = ctx.Array("b", len(self.devices)) if self.devices else None  # per device: out of use
        for device in lost:
            self.lose_device(device)
        self._args = lambda k: (each[k % len(each)], blob, threads, self.devices, self.lost)
        self._items, self._pending, self._exhausted = iter(items), None, False
        self._barren = 0  # workers that died in a row without a result between
        self.slots = [self._start(k) for k in range(workers)]
        self.relay = threading.Thread(target=self._relay, daemon=True, name="decode-relay")
        self.relay.start()

    def _start(self, k: int) -> _Slot:
        mine, theirs = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker, args=(theirs, mine, *self._args(k)), daemon=True,
                                name=f"videocap-decode-{k}")
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # spawned children read their environment at start
        try:
            proc.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        theirs.close()
        return _Slot(proc, mine)

    def lose_device(self, device: str) -> None:
        """Decode no more videos on `device` (videos already on it finish there, or on the CPU if that fails)."""
        if device in self.devices:
            self.lost[self.devices.index(device)] = 1

    def _relay(self) -> None:
        """Deal jobs, move results to `ready`, replace workers that die; then END once per consumer. Whatever
        breaks here, the consumers still get their END (an engine never waits for ever)."""
        try:
            self._serve()
        except BaseException:  # noqa: BLE001 - reported; the consumers must still hear the end
            print("videocap: error: the decode pool's relay failed; the videos not yet decoded get no record "
                  "(rerun the same command for them):", file=sys.stderr)
            traceback.print_exc()
            self._exhausted, self._pending = True, None
        if self.stopping.is_set():
            return
        for _ in range(self.consumers):  # every worker has ended and every result is on `ready`
            if not self._put(self.ready, END):
                return

    def _serve(self) -> None:
        while not self.stopping.is_set():
            for slot in self.slots:
                if slot is not None:
                    self._deal(slot)
            live = [s for s in self.slots if s is not None]
            if not live:
                return
            ready = wait([s.conn for s in live] + [s.proc.sentinel for s in live], timeout=0.2)
            for k, slot in enumerate(self.slots):
                if slot is None:
                    continue
                if slot.conn in ready:
                    if not self._receive(slot):
                        return
                    self._deal(slot)  # its next video at once, not after the others' results
                if slot.proc.sentinel in ready or slot.conn.closed:
                    self.slots[k] = self._ended(k, slot)

    def _deal(self, slot: _Slot) -> None:
        """Send `slot` jobs up to its threads, or its end once there are none left."""
        if slot.ending or slot.conn.closed:
            return
        while slot.held < self.hold:
            if self._pending is None and not self._exhausted:
                self._pending = next(self._items, None)
                self._exhausted = self._pending is None
            if self._pending is None or not self._send(slot, self._pending):
                break
            self._pending, slot.held = None, slot.held + 1
        if self._exhausted and self._pending is None:
            slot.ending = self._send(slot, None)

    def _send(self, slot: _Slot, job) -> bool:
        try:
            slot.conn.send(job)
            return True
        except OSError:  # the worker is gone: its end is handled once its process has exited
            return False

    def _receive(self, slot: _Slot) -> bool:
        """Move the result waiting on `slot`'s pipe to `ready`; False if the pool stopped meanwhile."""
        try:
            blob = slot.conn.recv_bytes()
        except (EOFError, OSError):  # the worker ended (or died mid-message: that result is lost with it)
            slot.conn.close()
            return True
        slot.held -= 1
        self._barren = 0
        return self._put(self.ready, blob)

    def _ended(self, k: int, slot: _Slot) -> _Slot | None:
        """`slot`'s worker has ended or its pipe closed: collect what it sent, then replace it if it died with jobs
        still to come; None once it is finished."""
        while not slot.conn.closed and slot.conn.poll():
            if not self._receive(slot):
                break
        slot.proc.join(5)
        if slot.proc.is_alive():  # its pipe closed, yet it lingers
            slot.proc.terminate()
            slot.proc.join()
        if not slot.conn.closed:
            slot.conn.close()
        if slot.proc.exitcode == 0 and slot.ending:
            return None
        self.died += 1  # killed mid-video (a decoder that crashed the process): what it held gets no record
        self.exit_codes.append(slot.proc.exitcode)
        self._barren += 1
        if self._barren >= 3 * len(self.slots) and not self._exhausted:
            # Workers that die before finishing anything (an import, a CUDA start-up or the model's image
            # preparation failing in every process) would each swallow their jobs: stop dealing instead.
            print(f"videocap: error: decode workers died {self._barren} times in a row without finishing a video "
                  f"(the last exit code {slot.proc.exitcode}); the videos not yet decoded get no record (rerun the "
                  "same command for them)", file=sys.stderr)
            self._exhausted, self._pending = True, None
        done = self._exhausted and self._pending is None
        return None if done or self.stopping.is_set() else self._start(k)

    def _put(self, q, value) -> bool:
        """Put `value` on `q`, waiting while it is full; False when the pool stops first."""
        while not self.stopping.is_set():
            try:
                q.put(value, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        """Stop dealing jobs and end the workers (what they were decoding is dropped: nothing of it was written)."""
        self.stopping.set()
        for slot in list(self.slots):  # first: a relay waiting on a worker then wakes
            if slot is not None and slot.proc.is_alive():
                slot.proc.terminate()
        self.relay.join(30)  # it starts no worker once stopping, and waits on none for long
        slots = [s for s in self.slots if s is not None]
        for slot in slots:
            if slot.proc.is_alive():
                slot.proc.terminate()
        for slot in slots:
            slot.proc.join(5)
            slot.conn.close()
        if hasattr(self.ready, "cancel_join_thread"):  # a multiprocessing queue, shared with engine processes
            self.ready.cancel_join_thread()
            self.ready.close()
