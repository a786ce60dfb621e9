"""Running many captioning tasks at once on one engine.

A task is a generator: it yields a list of `Ask`s (the requests it needs next), receives the `Reply`s in the same
order once all of them are answered, and returns its result. The fast mode is one round of one ask; the sliding
mode asks frame after frame, each conditioned on the previous answer, then summarizes; a hierarchical summary
asks for several group summaries in one round.

`run()` is the one driver: it keeps every task's pending requests in the engine together, so requests of many
videos share each engine step (continuous batching), and routes each finished `Output` to its task and slot by
request id — answers pair with the right segment however the engine orders their completion. Tasks know
nothing of tokens or the engine; `Session` turns an `Ask` into the family's engine `Request`.

A task runs only while all its requests are answered, so a task that fails has nothing left in the engine: the
driver can end it alone (`contain`) while the others go on.

Tasks come as a list, or from a `Feed` that hands out new ones as they become ready (batch captioning: videos
decoded by worker processes); the driver asks the feed for more without waiting while the engine has work, and
waits only when it is idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from videocap.engine.request import Output, Request, SamplingParams

TaskGen = Generator[list["Ask"], list["Reply"], Any]


@dataclass(frozen=True)
class Ask:
    """One request a task needs: the user message, the image it is about (None: text only), and settings.

    `image` is a PIL image, or what the family's processor made of one (`prepare_image`) ahead of time.
    `hd_num`: the HD_transform budget a PIL image is seen at (ShareCaptioner-Video; None: the processor's own)."""

    text: str
    image: Image.Image | Any | None = None
    preamble: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)
    hd_num: int | None = None


@dataclass(frozen=True)
class Reply:
    """The answer to one `Ask`."""

    text: str
    prompt_tokens: int
    new_tokens: int
    finish_reason: str
    vision: float = 0.0  # seconds
    prefill: float = 0.0  # seconds, including vision
    first_token: float = 0.0  # seconds from arrival to the first new token


class Session:
    """What tasks need from a loaded model: requests from asks, answer text, and the context's size.

    `limit` is the number of tokens one request may hold (prompt + answer); the summary step groups captions to
    stay inside it.
    """

    def __init__(self, processor, engine, limit: int):
        self.processor, self.engine, self.limit = processor, engine, limit

    def request(self, ask: Ask) -> Request:
        from videocap.models.llava_next.prompt import Turn

        image = ask.image
        if isinstance(image, Image.Image):  # else prepared already (batch: by a decode worker)
            detail = {} if ask.hd_num is None else {"hd_num": ask.hd_num}  # only ShareCaptioner-Video's takes one
            image = self.processor.prepare_image(image, **detail)
        return self.processor.request([Turn(ask.text)], ask.sampling, image=image, preamble=ask.preamble)

    def count(self, ask: Ask) -> int:
        """Prompt tokens of a text-only ask (what the summary step measures)."""
        assert ask.image is None, "only text-only asks are measured"
        return len(self.request(ask).token_ids)

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)


@runtime_checkable
class Feed(Protocol):
    """A source of tasks that become ready over time."""

    def take(self, room: int | None, wait: bool) -> list[TaskGen] | None:
        """Up to `room` new tasks (None: any number). Waits for at least one only when `wait` (the driver is idle);
        else returns at once, [] when none is ready. None: no task will ever come again."""


class _ListFeed:
    def __init__(self, tasks: Sequence[TaskGen]):
        self.tasks, self.next = tasks, 0

    def take(self, room: int | None, wait: bool) -> list[TaskGen] | None:
        if self.next == len(self.tasks):
            return None
        end = len(self.tasks) if room is None else min(len(self.tasks), self.next + room)
        new, self.next = list(self.tasks[self.next:end]), end
        return new


FEED_POLL_S = 0.005  # while tasks wait on the engine, a feed is asked for new ones at most this often


@dataclass
class _Running:
    gen: TaskGen
    replies: list[Reply | None] = field(default_factory=list)
    started: bool = False


def run(
    session: Session,
    tasks: Sequence[TaskGen] | Feed,
    *,
    on_request: Callable[[], None] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    max_active: int | None = None,
    contain: tuple[type[Exception], ...] = (),
) -> list[Any]:
    """Drive `tasks` to completion on `session`'s engine; their results in the order given.

    At most `max_active` tasks run at once (None: all); the next starts as one finishes. `on_request` is called
    after each answered request (progress), `on_result(index, result)` as each task finishes. A task that raises
    one of `contain` (or whose asks cannot become requests for such a reason) ends alone: the exception is its
    result (and goes to `on_result`), the other tasks go on. Any other exception in a task, and any in the engine
    (which cannot say whose request it refused), stops everything; the engine aborts the unfinished requests.

    `tasks` may be a `Feed`: tasks are numbered in the order it gives them, results go to `on_result` only (a
    feed may give millions) and the list returned is empty.
    """
    feed = tasks if isinstance(tasks, Feed) else _ListFeed(tasks)
    results: list[Any] = [] if isinstance(tasks, Feed) else [None] * len(tasks)
    keep = not isinstance(tasks, Feed)
    count = 0  # tasks taken from the feed so far
    exhausted = False
    running: dict[int, _Running] = {}
    owner: dict[int, tuple[int, int]] = {}  # request id -> (task index, slot)
    streams: list[Iterator[Output]] = []  # one engine.generate per round of asks, drained round robin
    ready: list[int] = []
    polled = 0.0

    def take(wait: bool) -> None:
        nonlocal count, exhausted, polled
        polled = time.perf_counter()
        room = None if max_active is None else max_active - len(running)
        if exhausted or (room is not None and room <= 0):
            return
        new = feed.take(room, wait)
        if new is None:
            exhausted = True
            return
        for gen in new:
            running[count] = _Running(gen)
            ready.append(count)
            count += 1

    def store(index: int, result: Any) -> None:
        if keep:
            results[index] = result
        if on_result is not None:
            on_result(index, result)

    try:
        while True:
            take(wait=not running and not ready)
            if ready:
                requests = []
                for index in ready:
                    requests += _advance(session, index, running, owner, store, contain)
                if requests:  # one stream for all of them: they enter the engine together, on its next step
                    streams.insert(0, session.engine.generate(requests))
                ready = []
                continue  # a task that returned made room for the next
            if not running:
                if exhausted:
                    return results
                continue  # an idle driver waits in the feed
            while not ready:
                assert streams, "running tasks with no request in the engine"
                if not exhausted and time.perf_counter() - polled > FEED_POLL_S:
                    take(wait=False)  # new tasks join the engine's next step, not after a running task ends
                    if ready:
                        break
                try:
                    out = next(streams[0])
                except StopIteration:
                    streams.pop(0)
                    continue
                streams.append(streams.pop(0))  # round robin keeps every stream's inbox short
                if not out.finished:
                    continue
                index, slot = owner.pop(out.request_id)
                task = running[index]
                task.replies[slot] = _reply(session, out)
                if on_request is not None:
                    on_request()
                if all(r is not None for r in task.replies):
                    ready.append(index)
    finally:
        for stream in streams:
            stream.close()  # aborts unfinished requests (an error elsewhere, Ctrl-C)
        for task in running.values():
            task.gen.close()


def _advance(session: Session, index: int, running: dict[int, _Running], owner: dict[int, tuple[int, int]],
             store: Callable[[int, Any], None], contain: tuple[type[Exception], ...]) -> list[Request]:
    """Give task `index` its answers (or start it): the requests it asks for next, or none when it ended."""
    task = running[index]
    try:
        if task.started:
            asks = task.gen.send(list(task.replies))
        else:
            task.started = True
            asks = next(task.gen)
        assert asks, "a task must ask for something or return"
        requests = [session.request(ask) for ask in asks]
    except StopIteration as done:
        result = done.value
    except contain as error:
        task.gen.close()  # a request that could not be built: the task's cleanup runs (its video reader closes)
        result = error
    else:
        task.replies = [None] * len(asks)
        for slot, request in enumerate(requests):
            owner[request.request_id] = (index, slot)
        return requests
    assert all(i != index for i, _ in owner.values()), "a task ends only once all its requests are answered"
    del running[index]
    store(index, result)
    return []


def _reply(session: Session, out: Output) -> Reply:
    t = out.timings
    return Reply(session.decode(out.token_ids), out.prompt_tokens, len(out.token_ids), out.finish_reason.value,
                 t.vision, t.prefill, t.first_token)


@dataclass
class Usage:
    """Token counts and timings a task accumulates over its requests."""

    requests: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    vision: float = 0.0
    prefill: float = 0.0
    decode_video: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, replies: Sequence[Reply]) -> None:
        for r in replies:
            self.requests += 1
            self.prompt_tokens += r.prompt_tokens
            self.new_tokens += r.new_tokens
            self.vision += r.vision
            self.prefill += r.prefill

    def timings(self) -> dict[str, float]:
        return {"decode_video": self.decode_video, "vision": self.vision, "prefill": self.prefill,
                "total": time.perf_counter() - self.started}
