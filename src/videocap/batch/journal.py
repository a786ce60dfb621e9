"""The JSONL journal: one record per video, appended as each completes; what a rerun skips.

A record is one line written by a single `os.write` of the whole line on a file opened for appending, so another
process (or a crash) never sees half of it in the middle of the file; the kernel has it once the call returns,
so killing the job loses nothing written. `fsync` runs at most once every `fsync_every` seconds and at close,
which bounds what a power loss can take. A line cut short (a crash during the write itself, a full disk) can only
be the last one: `open_for_append` drops it before writing more, and `read` ignores it.

The latest record of an id wins: a `--retry-failed` rerun appends the new result after the old error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from videocap.errors import BatchInputError


@dataclass
class JournalState:
    """What a journal holds: the latest record of each id, and what was wrong with the file."""

    records: dict[str, dict] = field(default_factory=dict)
    torn_tail: bool = False  # the last line was cut short (dropped)
    bad_lines: int = 0  # whole lines that are not JSON records (skipped)
    good_bytes: int = 0  # the file's length up to the end of its last whole line

    def done(self) -> set[str]:
        return {k for k, r in self.records.items() if "error" not in r}

    def failed(self) -> set[str]:
        return {k for k, r in self.records.items() if "error" in r}


def read(path: str) -> JournalState:
    """The journal at `path` (an absent file is an empty journal)."""
    state = JournalState()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return state
    except OSError as e:
        raise BatchInputError(f"{path}: cannot read the journal ({e.strerror or e})") from e
    end = data.rfind(b"\n") + 1
    state.good_bytes = end
    if end < len(data):
        state.torn_tail = True
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            state.bad_lines += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            state.bad_lines += 1
            continue
        state.records[record["id"]] = record
    return state


class Journal:
    """Appends records to the journal at `path`, each whole, flushed to the kernel at once. `state`: the journal
    as `read` just gave it (else it is read here)."""

    def __init__(self, path: str, fsync_every: float = 1.0, state: JournalState | None = None):
        self.path, self.fsync_every = path, fsync_every
        state = read(path) if state is None else state
        try:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if state.torn_tail:  # a record cut short: drop it, or the next record would be glued to it
                os.ftruncate(self.fd, state.good_bytes)
        except OSError as e:
            raise BatchInputError(f"{path}: cannot write the journal ({e.strerror or e})") from e
        self.synced = time.monotonic()
        self.dropped_tail = state.torn_tail

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # one call for a whole line on a local disk; a short write (full disk) retries the rest
            n = os.write(self.fd, view)
            view = view[n:]
        if time.monotonic() - self.synced >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.fd)
        self.synced = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
