"""Checks shared by the frozen config dataclasses: sizes parsed from a checkpoint's JSON are positive integers."""

from __future__ import annotations

from dataclasses import fields


def positive_ints(config: object) -> None:
    """Raise ValueError naming the first `int` field of `config` that is not a positive integer."""
    for f in fields(config):
        if f.type in ("int", int):
            value = getattr(config, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")
