"""One engine captioning what the decode workers hand it: the batch job's model side.

`EngineLoop` is a `driver.Feed`: the driver takes decoded videos from the ready queue without waiting while the
engine has work (so new videos join the running batch at its next step) and waits only when the engine is idle.
Each video becomes the same task `videocap caption` runs (captioning.task_maker), so batch is a thin client of the
tasks and the engine, not a second generation path. Every finished video goes to `emit` as a journal record.

Out of memory in the engine (which aborts every request it runs): the videos in flight go back to the front of
the line, the engine's batch limits halve (sequences at once, prefill tokens per step) and the driver starts again;
once one sequence at a time still runs out, the videos in flight become "out of memory" records.
"""

from __future__ import annotations

import pickle
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from videocap.batch import records
from videocap.batch.decode import END, Decoded
from videocap.errors import VideocapError
from videocap.tasks import captioning, driver


@dataclass(frozen=True)
class TaskSpec:
    """What each video's task is: the mode, its prompts, and generation settings."""

    mode: str = "fast"
    instruction: str | None = None
    prompt: str | None = None
    first_prompt: str | None = None
    summary_prompt: str | None = None
    generation: tuple[tuple[str, object], ...] = ()  # max_new_tokens, temperature, ... as (name, value) pairs
    max_active: int | None = None  # videos in the driver at once (default: twice the engine's sequences)


@dataclass
class EngineStats:
    busy_seconds: float = 0.0  # inside engine steps, during this loop
    videos: int = 0
    out_of_memory: int = 0  # times the batch was shrunk
    max_num_seqs: int = 0  # the engine's limit at the end


@dataclass
class EngineLoop:
    captioner: object
    ready: object  # a queue of pickled Decoded (and END)
    spec: TaskSpec
    emit: Callable[[dict], None]
    stop: object  # has is_set(): stop taking new videos
    log: Callable[[str], None] = lambda message: None
    retry: deque[Decoded] = field(default_factory=deque)

    def __post_init__(self):
        self.session = captioning.session_of(self.captioner)
        self.engine = self.captioner.engine
        self.name = self.captioner.name
        self.inflight: dict[int, Decoded] = {}
        self.count = 0
        self.ended = False
        self.stats = EngineStats()
        self._maker = self._make_maker(self.spec.prompt)  # the job's options are checked before any video

    def _make_maker(self, prompt: str | None):
        s = self.spec
        return captioning.task_maker(self.captioner, self.session, s.mode, instruction=s.instruction, prompt=prompt,
                                     first_prompt=s.first_prompt, summary_prompt=s.summary_prompt,
                                     **dict(s.generation))

    def run(self) -> EngineStats:
        scheduler = self.engine.scheduler
        max_active = self.spec.max_active or 2 * scheduler.max_num_seqs
        busy = self.engine.busy_seconds  # the engine may have run before (a captioner handed in)
        while True:
            try:
                driver.run(self.session, self, on_result=self._finish, max_active=max_active,
                           contain=(VideocapError,))
                break
            except torch.OutOfMemoryError as e:
                self._out_of_memory(e)
        self.stats.busy_seconds = self.engine.busy_seconds - busy
        self.stats.max_num_seqs = scheduler.max_num_seqs
        return self.stats

    # --- driver.Feed ----------------------------------------------------------------------------------------------

    def take(self, room: int | None, wait: bool) -> list[driver.TaskGen] | None:
        if self.stop.is_set():
            return None  # Ctrl-C: the driver finishes what it runs; the rest is left for the next run
        tasks: list[driver.TaskGen] = []
        while self.retry and (room is None or len(tasks) < room):
            self._start(self.retry.popleft(), tasks)
        while not self.ended and (room is None or len(tasks) < room):
            block = wait and not tasks
            try:
                blob = self.ready.get(timeout=0.1) if block else self.ready.get_nowait()
            except queue.Empty:
                if block and not self.stop.is_set():
                    continue
                break
            if blob == END:
                self.ended = True
                break
            self._start(pickle.loads(blob), tasks)
        if not tasks and self.ended and not self.retry:
            return None
        return tasks

    def _start(self, decoded: Decoded, tasks: list) -> None:
        item, mode = decoded.item, self.spec.mode
        if decoded.error is not None:
            self._emit(records.failure(item, mode, self.name, decoded.error, decoded.reason))
            return
        try:
            maker = self._maker if item.prompt is None else self._make_maker(item.prompt)
        except VideocapError as e:  # a manifest's prompt with unknown placeholders: this video only
            self._emit(records.failure(item, mode, self.name, e))
            return
        tasks.append(maker(decoded.plan, decoded.ready))
        if decoded.finished_at and not decoded.queued:  # not again when an out-of-memory retry restarts it
            decoded.queued = max(0.0, time.time() - decoded.finished_at)
        self.inflight[self.count] = decoded
        self.count += 1

    def _finish(self, index: int, result) -> None:
        decoded = self.inflight.pop(index)
        if isinstance(result, VideocapError):
            self._emit(records.failure(decoded.item, self.spec.mode, self.name, result))
        else:
            record = records.success(decoded.item, result)
            if isinstance(record.get("timings"), dict):
                # The worker's whole time on the video (probe, plan, decode, layout, prepare) and how long it
                # then waited to be taken: where an end-to-end rate below the engine's goes.
                record["timings"]["decode_worker"] = decoded.seconds
                record["timings"]["queued"] = decoded.queued
            self._emit(record)

    def _emit(self, record: dict) -> None:
        self.stats.videos += 1
        self.emit(record)

    def _out_of_memory(self, error: torch.OutOfMemoryError) -> None:
        lost = [self.inflight[i] for i in sorted(self.inflight)]
        self.inflight, self.count = {}, 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        scheduler = self.engine.scheduler
        if scheduler.max_num_seqs <= 1:
            for decoded in lost:
                self._emit(records.failure(decoded.item, self.spec.mode, self.name,
                                           "out of memory in the engine with one sequence at a time",
                                           records.OUT_OF_MEMORY))
            return
        scheduler.max_num_seqs = max(1, scheduler.max_num_seqs // 2)
        scheduler.max_prefill_tokens = max(1, scheduler.max_prefill_tokens // 2)
        self.stats.out_of_memory += 1
        self.retry.extendleft(reversed(lost))
        self.log(f"out of memory in the engine: {len(lost)} video(s) retried with at most {scheduler.max_num_seqs} "
                 f"sequences and {scheduler.max_prefill_tokens} prefill tokens a step")
