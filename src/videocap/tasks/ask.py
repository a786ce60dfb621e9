"""Questions about one video: `ask` (one question) and `Chat` (a conversation that keeps the video's frames and
image embeddings, so a follow-up neither decodes the video nor runs the vision encoder again).

The video becomes one image: `frames` frames sampled with ShareGPT4Video-8B's formula (uniform16) and tiled into
its grid with white bands. Generation goes through the engine; text streams to an optional callback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from PIL import Image

from videocap.engine.request import Output, SamplingParams, image_key
from videocap.errors import PromptError
from videocap.models.llava_next.prompt import DEFAULT_QUERY, Turn
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


class TextStream:
    """Turns growing token lists into text deltas that never need taking back.

    Decoding the whole answer again can change its end: an incomplete UTF-8 character, or Llama-3's space
    clean-up (" 's" → "'s", " ' " → "'", …), whose patterns span at most two spaces. So the text after the
    second-to-last space is held back until more arrives, and `finish()` emits what is left.
    """

    def __init__(self, decode: Callable[[list[int]], str], emit: Callable[[str], None] | None):
        self.decode, self.emit, self.sent = decode, emit, ""

    def update(self, ids: list[int]) -> None:
        if self.emit is None:
            return
        text = self.decode(ids)
        cut = text.rfind(" ", 0, max(text.rfind(" "), 0))  # the second-to-last space
        self._send(text[: max(cut, len(text) - 8, 0)])  # and never more than 8 characters: text without spaces streams

    def finish(self, ids: list[int]) -> None:
        """Emit the rest of the final text (an answer cut inside a character keeps its replacement mark)."""
        if self.emit is not None:
            self._send(self.decode(ids), final=True)

    def _send(self, text: str, final: bool = False) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent) and (final or not text.endswith("\ufffd")):
            self.emit(text[len(self.sent):])
            self.sent = text


@dataclass(frozen=True)
class VideoGrid:
    """A video as ShareGPT4Video-8B sees it: `frames` frames (uniform16) tiled into one grid image."""

    image: Image.Image
    timestamps: tuple[float, ...]  # seconds, the frames the grid shows
    seconds: float  # decoding and laying out took this long
    warnings: tuple[str, ...] = ()  # e.g. sampled from the decodable part of a damaged file

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
    ) -> VideoGrid:
        t0 = time.perf_counter()
        sampled = sample(video, Uniform16(frames), start=start, end=end, mode=seek, max_side=max_side,
                         allow_partial=allow_partial)
        grid = layout.grid(sampled.images)
        return VideoGrid(grid, sampled.timestamps, time.perf_counter() - t0, sampled.warnings)


class Chat:
    """A conversation about one video. `ask()` appends a turn; `reset()` forgets the turns, not the video."""

    def __init__(self, captioner: Captioner, video: VideoGrid, *, preamble: bool = True):
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
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        if not isinstance(question, str):
            raise PromptError(f"a question must be text, got {type(question).__name__}")
        t0 = time.perf_counter()
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            repetition_penalty=repetition_penalty,
        )
        processor = self.captioner.processor
        request = processor.request(
            [*self.turns, Turn(question)], sampling, image=self.image, image_embeds=self.image_embeds,
            preamble=self.preamble,
        )
        request.image_key = self.image_key
        stream = TextStream(processor.decode, on_text)
        final: Output | None = None
        for out in self.captioner.engine.generate([request]):  # only this request's outputs
            stream.update(out.token_ids)
            final = out
        assert final is not None and final.finished
        stream.finish(final.token_ids)
        if final.image_embeds is not None:
            self.image_embeds = final.image_embeds
        text = processor.decode(final.token_ids)
        self.turns.append(Turn(question, text))
        t = final.timings
        video_s, self.decode_seconds = self.decode_seconds, 0.0  # counted once, in the first answer
        timings = {
            "decode_video": video_s, "vision": t.vision, "prefill": t.prefill, "first_token": t.first_token,
            "total": time.perf_counter() - t0 + video_s, "decode_tokens_per_s": t.decode_tokens_per_s,
        }
        return Answer(
            text, question, self.timestamps, final.prompt_tokens, self.image.num_tokens, len(final.token_ids),
            final.finish_reason.value, timings, final.cached_tokens,
        )

    def reset(self) -> None:
        self.turns = []
