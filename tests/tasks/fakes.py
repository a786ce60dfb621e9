"""A stand-in engine for the captioning tasks: answers each request with text chosen by the test and finishes
requests after different numbers of steps, so answers complete out of submission order across `generate` calls
(as the real engine's do). It records every request it is given."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from videocap.engine.request import FinishReason, Output, Request
from videocap.models.llava_next.processor import ImageView, LlavaNextProcessor
from videocap.tasks.driver import Session


class FakeEngine:
    def __init__(self, tokenizer, answer: Callable[[str, Request], str], steps: Callable[[Request], int] | None = None):
        """`answer(prompt_text, request)` gives the reply text; `steps(request)` how many engine steps it takes."""
        self.tokenizer, self.answer, self.steps = tokenizer, answer, steps or (lambda r: 1)
        self.requests: list[Request] = []  # in the order added
        self.finished: list[int] = []  # request ids in the order they finished
        self.pending: dict[int, list] = {}  # request id -> [request, steps left]
        self.inboxes: dict[int, deque[Output]] = {}
        self.max_running = 0

    def prompt_text(self, request: Request) -> str:
        ids = [t for t, m in zip(request.token_ids, request.image_mask or [False] * len(request.token_ids)) if not m]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def step(self) -> None:
        self.max_running = max(self.max_running, len(self.pending))
        for rid, entry in list(self.pending.items()):
            entry[1] -= 1
            if entry[1] <= 0:
                request = entry[0]
                del self.pending[rid]
                ids = self.tokenizer.encode(self.answer(self.prompt_text(request), request), add_special_tokens=False).ids
                self.finished.append(rid)
                self.inboxes[rid].append(Output(request_id=rid, token_ids=ids, new_token_ids=ids,
                                                prompt_tokens=len(request.token_ids), finished=True,
                                                finish_reason=FinishReason.STOP))

    def generate(self, requests: Iterable[Request]) -> Iterator[Output]:
        mine = []
        try:
            for request in requests:
                self.requests.append(request)
                self.inboxes[request.request_id] = deque()
                self.pending[request.request_id] = [request, self.steps(request)]
                mine.append(request.request_id)
            done = set()
            while True:
                for rid in mine:
                    while self.inboxes[rid]:
                        out = self.inboxes[rid].popleft()
                        done.add(rid)
                        yield out
                if len(done) == len(mine):
                    return
                self.step()
        finally:
            for rid in mine:
                self.pending.pop(rid, None)


def fake_session(tokenizer, cfg, answer, steps=None, limit: int = 8192, view: ImageView = ImageView.BASE) -> Session:
    """A driver session on the LLaVA-NeXT processor (real prompt and ids) whose engine is a FakeEngine."""
    return Session(LlavaNextProcessor(cfg, tokenizer, view), FakeEngine(tokenizer, answer, steps), limit)
