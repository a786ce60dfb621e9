"""`--ray [ADDRESS]`: the batch pipeline on a Ray cluster, writing the same journal from this process.

Decoding runs as Ray tasks on the cluster's CPUs (one CPU each; at most `--decode-workers` at once, default the
cluster's CPUs less the engines'), each returning a pickled `Decoded` into the object store. Engines run as actors,
one per GPU (`--gpus N`; with `--device cpu`, N actors of one CPU each), each loading the model and running the
same `EngineLoop` as a local job in a thread, fed from its own queue. This process hands each decoded video (its
object reference: the pixels go from the decoding node to the engine's, not through here) to the actor with the
fewest videos outstanding, collects the records and writes them. ADDRESS "auto" (or none) joins the running
cluster, or starts a local one when there is none.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from collections import deque

from videocap.batch.decode import END, Decoded, decode_item, lower_priority
from videocap.batch.engine_loop import EngineLoop, EngineStats
from videocap.errors import VideocapError

DECODE_FAILED = "decode failed"  # the reason of a video whose decode task itself failed
POLL_S = 0.05  # how often this process collects records and hands out decoded videos


def _decode(item, settings, prepare) -> bytes:
    lower_priority()
    decoded = decode_item(item, settings, prepare)
    decoded.finished_at = time.time()
    return pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)


class EngineActor:
    """One engine: the model on this actor's device, an `EngineLoop` in a thread, records kept until polled."""

    def __init__(self, config, device: str | None):
        from videocap.batch.pipeline import picklable_prepare
        from videocap.tasks.captioning import family_of

        if device == "cpu":
            import torch

            torch.set_num_threads(1)
        self.captioner = config.load.load(device)
        self.inbox: queue.Queue = queue.Queue()
        self.records: list[dict] = []
        self.logs: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.loop = EngineLoop(self.captioner, self.inbox, config.task, self._emit, self.stop, self._log)
        self.prepare = picklable_prepare(self.captioner.processor, self._log)
        self.family = family_of(self.captioner).name
        self.stats: EngineStats | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.stats = self.loop.run()
        except BaseException as e:  # noqa: BLE001 - reported to the driver by poll()
            self.error = f"{type(e).__name__}: {e}"

    def _emit(self, record: dict) -> None:
        with self.lock:
            self.records.append(record)

    def _log(self, message: str) -> None:
        with self.lock:
            self.logs.append(message)

    def setup(self) -> tuple[str, bytes | None, int]:
        """The family, the pickled `prepare` for the decode tasks, and how many videos the loop runs at once."""
        running = self.loop.spec.max_active or 2 * self.captioner.engine.scheduler.max_num_seqs
        return self.family, pickle.dumps(self.prepare) if self.prepare is not None else None, running

    def put(self, decoded: list, item) -> None:
        """`decoded`: [the decode task's reference], resolved here so that a task that failed (its worker died,
        after Ray's retries) becomes this video's error record instead of a call that fails unseen."""
        import ray

        try:
            blob = ray.get(decoded[0])
        except Exception as e:  # noqa: BLE001 - any task failure ends this video alone
            message = " ".join(str(e).split()[:40]) or type(e).__name__
            blob = pickle.dumps(Decoded(item, error=f"its decode task failed ({type(e).__name__}: {message})",
                                        reason=DECODE_FAILED))
        self.inbox.put(blob)

    def finish(self) -> None:
        self.inbox.put(END)

    def halt(self) -> None:
        self.stop.set()

    def poll(self) -> tuple[list[dict], list[str], EngineStats | None, str | None]:
        with self.lock:
            records, self.records = self.records, []
            logs, self.logs = self.logs, []
        done = self.stats if not self.thread.is_alive() else None
        return records, logs, done, self.error


def _connect(address: str | None):
    import ray

    if ray.is_initialized():
        return False
    if address in (None, "", "auto"):
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:
            ray.init(log_to_driver=False)  # no running cluster: a local one, for this job
        return True
    ray.init(address=address, log_to_driver=False)
    return True


def run(config, todo, emit, stop_event, say, ready_callback) -> list[EngineStats]:
    try:
        import ray
    except ImportError as e:
        raise VideocapError("--ray needs Ray: pip install 'videocap[ray]'") from e
    started = _connect(config.ray)
    try:
        return _run(ray, config, todo, emit, stop_event, say, ready_callback)
    finally:
        if started:
            ray.shutdown()


def _run(ray, config, todo, emit, stop_event, say, ready_callback) -> list[EngineStats]:
    cpu = config.load.device is not None and config.load.device.startswith("cpu")
    if not cpu and ray.cluster_resources().get("GPU", 0) < config.gpus:
        raise VideocapError(f"the Ray cluster has {ray.cluster_resources().get('GPU', 0):g} GPU(s), --gpus asks for "
                            f"{config.gpus} (--device cpu runs CPU engines)")
    actor_cls = ray.remote(num_cpus=1, num_gpus=0 if cpu else 1)(EngineActor)
    actors = [actor_cls.remote(config, "cpu" if cpu else None) for _ in range(config.gpus)]
    family, blob, running = ray.get(actors[0].setup.remote())
    for a in actors[1:]:
        ray.get(a.setup.remote())  # every engine loaded
    ready_callback()
    settings = config.decode_settings(family)
    prepare = ray.put(pickle.loads(blob) if blob is not None else None)
    decode = ray.remote(num_cpus=1)(_decode)
    workers = config.decode_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - (config.gpus if cpu else 0))
    # Videos an engine may hold: what its loop runs at once, and the prefetch waiting beyond that (as the local
    # ready queue holds); counting only the prefetch would cap the engine's batch at it.
    per_actor = running + config.prefetch_size

    items = deque(todo)
    decoding: list = []
    item_of: dict = {}  # decode task reference -> its input
    outstanding = [0] * len(actors)  # videos handed to each engine and not yet written
    stats: list[EngineStats | None] = [None] * len(actors)
    finished = halted = False
    while any(s is None for s in stats):
        if stop_event.is_set() and not halted:  # Ctrl-C: nothing new; the engines finish what they hold
            items.clear()
            decoding, item_of = [], {}
            for a in actors:
                a.halt.remote()
            halted = True
        while items and len(decoding) < workers and sum(outstanding) + len(decoding) < per_actor * len(actors):
            item = items.popleft()
            ref = decode.remote(item, settings, prepare)
            item_of[ref] = item
            decoding.append(ref)
        if decoding:  # whatever finishes decoding within POLL_S
            done, decoding = ray.wait(decoding, num_returns=len(decoding), timeout=POLL_S)
            for ref in done:  # the engine with the fewest outstanding takes it (its reference, not its bytes)
                k = min(range(len(actors)), key=outstanding.__getitem__)
                actors[k].put.remote([ref], item_of.pop(ref))
                outstanding[k] += 1
        else:
            time.sleep(POLL_S)
        if not items and not decoding and not finished:
            for a in actors:
                a.finish.remote()
            finished = True
        for k, (records, logs, done_stats, error) in enumerate(ray.get([a.poll.remote() for a in actors])):
            if error is not None:
                raise VideocapError(f"engine {k}: {error}")
            for message in logs:
                say(message)
            for record in records:
                emit(record)
            outstanding[k] -= len(records)
            if done_stats is not None:
                stats[k] = done_stats
    return [s for s in stats if s is not None]
