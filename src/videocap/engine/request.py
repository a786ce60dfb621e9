"""What goes into the engine and what comes out: `Request`, `SamplingParams`, `Output`.

A request is token ids with the image positions marked, plus the image input for those positions — either pixels
for the model's vision encoder or embeddings already computed (a chat reusing its video across turns). The
engine knows nothing of video, prompts or tokenizers.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from videocap.errors import SamplingError

_ids = itertools.count()


GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    repetition_penalty: float = 1.0  # transformers' rule over the prompt's text tokens and the answer so far
    # Beam search as transformers runs it (num_beams > 1, greedy only): hypotheses scored
    # sum(log-probs) / (new tokens, the stop token included) ** length_penalty; early_stopping ends the search
    # as soon as num_beams hypotheses are finished, else when no running beam can beat the worst of them.
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise SamplingError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if not 0 <= self.temperature < math.inf:  # also NaN, which would reach multinomial as NaN probabilities
            raise SamplingError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise SamplingError(f"top_k must be a whole number >= 0, got {self.top_k!r}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise SamplingError(f"num_beams must be a whole number >= 1, got {self.num_beams!r}")
        if self.num_beams > 1 and not self.greedy:
            raise SamplingError("beam search does not sample: leave temperature at 0 when num_beams > 1")
        if self.num_beams > 1 and self.repetition_penalty != 1.0:
            raise SamplingError("beam search scores the model's log-probabilities as they are: repetition_penalty 1")
        if not math.isfinite(self.length_penalty):
            raise SamplingError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if not 0 < self.repetition_penalty < math.inf:
            raise SamplingError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows float32 and sampling is argmax anyway.
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class ImageInput:
    """Pixels of every tile of one or more images (model-specific order) with each image's (width, height)."""

    pixels: torch.Tensor  # (tiles, 3, S, S)
    sizes: tuple[tuple[int, int], ...]


@dataclass
class Request:
    token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    image_mask: list[bool] | None = None  # True where an image embedding replaces the token
    images: ImageInput | None = None
    image_embeds: torch.Tensor | None = None  # (image positions, hidden), instead of `images`
    # What the image is (`image_key(images)`), for sharing cached keys/values of image positions across requests;
    # without it only the blocks before the first image position are shared.
    image_key: bytes | None = None
    request_id: int = field(default_factory=lambda: next(_ids))
    arrival: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        if not self.token_ids:
            raise ValueError("a request needs at least one prompt token")
        if self.image_mask is not None and len(self.image_mask) != len(self.token_ids):
            raise ValueError("image_mask must have one entry per prompt token")
        if (self.images is not None or self.image_embeds is not None) and not any(self.image_mask or ()):
            raise ValueError("an image was given but no prompt position is marked for it")


def image_key(images: ImageInput) -> bytes:
    """An identity of the image content: a digest of the pixels and sizes."""
    h = hashlib.blake2b(repr((images.pixels.dtype, tuple(images.pixels.shape), images.sizes)).encode(), digest_size=16)
    h.update(images.pixels.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()


class FinishReason(Enum):
    STOP = "stop"  # a stop token was produced (not included in the output)
    LENGTH = "length"  # max_new_tokens reached
    CONTEXT = "context"  # the model's context window is full
    ABORTED = "aborted"  # the caller stopped consuming the output


@dataclass
class Timings:
    queued: float = 0.0  # seconds from arrival to admission
    vision: float = 0.0
    prefill: float = 0.0  # including vision
    first_token: float = 0.0  # seconds from arrival to the first new token
    decode_tokens_per_s: float = 0.0


@dataclass
class Output:
    request_id: int
    token_ids: list[int]  # all new tokens so far
    new_token_ids: list[int]  # the tokens this step added
    prompt_tokens: int
    finished: bool = False
    finish_reason: FinishReason | None = None
    timings: Timings = field(default_factory=Timings)
    image_embeds: torch.Tensor | None = None  # the computed image embeddings, for reuse by a follow-up request
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache (not prefilled)
