"""Questions about one video: `ask` (one question) and `Chat` (a conversation that keeps the video's frames and
image embeddings, so a follow-up neither decodes the video nor runs the vision encoder again).

The video becomes one image: `frames` frames sampled with ShareGPT4Video-8B's formula (uniform16) and laid out as
the model's family sees a whole video (ShareGPT4Video-8B: its grid with white bands; ShareCaptioner-Video: its
labelled strip). Generation goes through the engine, with the family's defaults (tasks/family.py); text streams
to an optional callback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from videocap.engine.request import Output, image_key
from videocap.errors import PromptError
from videocap.models.llava_next.prompt import DEFAULT_QUERY, Turn
from videocap.tasks.family import family
from videocap.video import SeekMode, Uniform16, layout, sample

if TYPE_CHECKING:
    from videocap.api import Captioner


@dataclass(frozen=True)
class Answer:
    text: str
    question: str
    frame_timestamps: tuple[float, ...]  # seconds, the frames the grid shows
    prompt_tokens: int
    image_tokens: int
    new_tokens: int
    finish_reason: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds, and decode tokens/s
    cached_tokens: int = 0  # prompt tokens whose keys/values were reused (earlier turns, the video): not prefilled

    def to_dict(self) -> dict:
        return asdict(self)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """`text` up to the earliest stop string (stripped), or None when none occurs."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(found)].strip() if found else None


class TextStream:
    """Turns growing token lists into text deltas that never need taking back.

    Decoding the whole answer again can change its end: an incomplete UTF-8 character, or Llama-3's space
    clean-up (" 's" → "'s", " ' " → "'", …), whose patterns span at most two spaces. So the text after the
    second-to-last space is held back until more arrives, and `finish()` emits what is left. With stop strings,
    `holdback` more characters wait too (a stop string may be arriving), so nothing past one is ever emitted.
    """

    def __init__(self, decode: Callable[[list[int]], str], emit: Callable[[str], None] | None, holdback: int = 0):
        self.decode, self.emit, self.sent, self.holdback = decode, emit, "", holdback

    def update(self, ids: list[int]) -> None:
        if self.emit is None:
            return
        text = self.decode(ids)
        cut = text.rfind(" ", 0, max(text.rfind(" "), 0))  # the second-to-last space
        # and never more than 8 characters: text without spaces streams
        self._send(text[: min(max(cut, len(text) - 8, 0), len(text) - self.holdback)])

    def finish(self, ids: list[int], text: str | None = None) -> None:
        """Emit the rest of the final text (an answer cut inside a character keeps its replacement mark); `text`
        when the answer is not the decoded ids (cut at a stop string)."""
        if self.emit is not None:
            self._send(self.decode(ids) if text is None else text, final=True)

    def _send(self, text: str, final: bool = False) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent) and (final or not text.endswith("\ufffd")):
            self.emit(text[len(self.sent):])
            self.sent = text


@dataclass(frozen=True)
class VideoGrid:
    """A video as one image: `frames` frames (uniform16) laid out by `compose` (ShareGPT4Video-8B's grid by
    default). With `compose=None` the sampled frames are kept unlaid (`image` None) until `laid_out(compose)`: the
    CLI samples a video before it knows which model family will read it."""

    image: Image.Image | None
    timestamps: tuple[float, ...]  # seconds, the frames the grid shows
    seconds: float  # decoding and laying out took this long
    warnings: tuple[str, ...] = ()  # e.g. sampled from the decodable part of a damaged file
    frames: tuple = ()  # the sampled frames, kept only while `image` is None

    @staticmethod
    def of(
        video: str | os.PathLike,
        frames: int = 16,
        *,
        start: float | None = None,
        end: float | None = None,
        seek: SeekMode = SeekMode.EXACT,
        max_side: int | None = None,
        allow_partial: bool = False,
        compose: Callable[[Sequence], Image.Image] | None = layout.grid,
    ) -> VideoGrid:
        t0 = time.perf_counter()
        sampled = sample(video, Uniform16(frames), start=start, end=end, mode=seek, max_side=max_side,
                         allow_partial=allow_partial)
        if compose is None:
            return VideoGrid(None, sampled.timestamps, time.perf_counter() - t0, sampled.warnings,
                             tuple(sampled.images))
        grid = compose(sampled.images)
        return VideoGrid(grid, sampled.timestamps, time.perf_counter() - t0, sampled.warnings)

    def laid_out(self, compose: Callable[[Sequence], Image.Image]) -> VideoGrid:
        """This video with its frames laid out by `compose` (itself when it already is an image)."""
        if self.image is not None:
            return self
        t0 = time.perf_counter()
        return VideoGrid(compose(list(self.frames)), self.timestamps, self.seconds + time.perf_counter() - t0,
                         self.warnings)


class Chat:
    """A conversation about one video. `ask()` appends a turn; `reset()` forgets the turns, not the video."""

    def __init__(self, captioner: Captioner, video: VideoGrid, *, preamble: bool = True):
        assert video.image is not None, "lay the video out first (VideoGrid.laid_out)"
        self.captioner = captioner
        self.preamble = preamble
        self.grid = video.image
        self.timestamps = video.timestamps
        self.image = captioner.processor.prepare_image(self.grid)
        self.image_key = image_key(self.image.input)  # lets the engine reuse the video's cached keys/values
        self.decode_seconds = video.seconds
        self.image_embeds: torch.Tensor | None = None
        self.turns: list[Turn] = []

    def ask(
        self,
        question: str = DEFAULT_QUERY,
        *,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """Answer `question` after the earlier turns. `stop`: strings that end the answer (left out of it), checked
        on the host as tokens arrive — with look-ahead decoding, while the GPU computes the next token.
        `max_new_tokens` and `num_beams` default to the model family's (tasks/family.py: `sampling`)."""
        if not isinstance(question, str):
            raise PromptError(f"a question must be text, got {type(question).__name__}")
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise PromptError(f"stop strings must be non-empty text, got {list(stop)!r}")
        t0 = time.perf_counter()
        sampling = family(getattr(self.captioner, "family", "llava_next")).sampling(
            max_new_tokens=max_new_tokens, num_beams=num_beams, temperature=temperature, top_p=top_p, top_k=top_k,
            seed=seed, repetition_penalty=repetition_penalty,
        )
        processor = self.captioner.processor
        request = processor.request(
            [*self.turns, Turn(question)], sampling, image=self.image, image_embeds=self.image_embeds,
            preamble=self.preamble,
        )
        request.image_key = self.image_key
        stream = TextStream(processor.decode, on_text, holdback=max(map(len, stop), default=1) - 1)
        final: Output | None = None
        text = None
        for out in self.captioner.engine.generate([request]):  # only this request's outputs
            final = out
            if stop:
                text = cut_at_stop(processor.decode(out.token_ids), stop)
                if text is not None:  # leaving the loop aborts the request and frees its blocks
                    break
            stream.update(out.token_ids)
        assert final is not None and (final.finished or text is not None)
        finish_reason = "stop" if text is not None else final.finish_reason.value
        if text is None:
            text = processor.decode(final.token_ids)
        stream.finish(final.token_ids, text)
        if final.image_embeds is not None:
            self.image_embeds = final.image_embeds
        self.turns.append(Turn(question, text))
        t = final.timings
        video_s, self.decode_seconds = self.decode_seconds, 0.0  # counted once, in the first answer
        timings = {
            "decode_video": video_s, "vision": t.vision, "prefill": t.prefill, "first_token": t.first_token,
            "total": time.perf_counter() - t0 + video_s, "decode_tokens_per_s": t.decode_tokens_per_s,
        }
        return Answer(
            text, question, self.timestamps, final.prompt_tokens, self.image.num_tokens, len(final.token_ids),
            finish_reason, timings, final.cached_tokens,
        )

    def reset(self) -> None:
        self.turns = []
