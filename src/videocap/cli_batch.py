"""`videocap batch`: caption many videos into a resumable JSONL journal (the batch issue builds it here)."""

from __future__ import annotations


def add_batch_command(commands) -> None:
    """Register `videocap batch` (filled in by the batch captioning work)."""
