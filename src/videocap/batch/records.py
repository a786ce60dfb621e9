"""A journal record per video: the caption result, or an error with its reason.

A success holds what `caption --json` prints (mode, model, caption, segments, frame timestamps, token counts,
timings, warnings) under the video's `id` and `path`, and the window when one was asked. A failure holds `error`
(one line) and `reason`, a short category the summary counts by ("corrupt", "too long", ...).
"""

from __future__ import annotations

import torch

from videocap.batch.inputs import Item
from videocap.errors import (
    CorruptVideoError, NotAVideoError, NoVideoStreamError, PromptError, PromptTooLongError, TruncatedVideoError,
    VideoAccessError, VideoNotFoundError, VideoTooShortError, WindowError,
)

TOO_LONG = "too long"
OUT_OF_MEMORY = "out of memory"

# The first class an error is an instance of names its reason.
REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (VideoNotFoundError, "not found"),
    (VideoAccessError, "unreadable"),
    (NotAVideoError, "not a video"),
    (NoVideoStreamError, "no video stream"),
    (TruncatedVideoError, "truncated"),
    (CorruptVideoError, "corrupt"),
    (WindowError, "bad window"),
    (VideoTooShortError, "too short"),
    (PromptTooLongError, "prompt too long"),
    (PromptError, "bad prompt"),
    (torch.OutOfMemoryError, OUT_OF_MEMORY),
)


def reason_of(error: BaseException) -> str:
    for kind, reason in REASONS:
        if isinstance(error, kind):
            return reason
    return "error"


def base(item: Item, mode: str, model: str) -> dict:
    record = {"id": item.id, "path": item.path, "mode": mode, "model": model}
    if item.start is not None:
        record["start"] = item.start
    if item.end is not None:
        record["end"] = item.end
    return record


def success(item: Item, result) -> dict:
    """`result`: a CaptionResult."""
    fields = result.to_dict()
    del fields["video"]
    return {**base(item, result.mode, result.model), **fields}


def failure(item: Item, mode: str, model: str, error: BaseException | str, reason: str | None = None) -> dict:
    if isinstance(error, BaseException):
        message = " ".join(str(error).split()) or type(error).__name__
        reason = reason or reason_of(error)
    else:
        message = error
    return {**base(item, mode, model), "error": message.removeprefix(f"{item.path}: "), "reason": reason or "error"}
