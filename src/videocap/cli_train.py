"""`videocap train`: synthetic datasets, training and evaluation of the tiny model (the tiny-model issue builds it here)."""

from __future__ import annotations


def add_train_commands(commands) -> None:
    """Register `videocap train` (filled in by the tiny-model work)."""
