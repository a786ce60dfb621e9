"""What a batch job captions: a directory (recursive), a glob, a text file of paths, or a JSONL/CSV manifest.

Every input becomes an `Item` with a deterministic id: a manifest's `id` column, else the video's path (normalised;
a list's or manifest's relative paths are taken from the list file's folder). Ids are what the journal resumes by,
so they must be unique. `shard(items, i, n)` splits by a hash of the id: the same split whatever the order, and
an input added later does not move the others.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import zlib
from dataclasses import dataclass

from videocap.errors import BatchInputError

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
    ".3gp", ".ogv", ".gif",
})
MANIFEST_COLUMNS = ("path", "id", "start", "end", "prompt")


@dataclass(frozen=True)
class Item:
    """One video to caption: its journal id, its path, an optional window (seconds) and per-video prompt."""

    id: str
    path: str
    start: float | None = None
    end: float | None = None
    prompt: str | None = None  # replaces the mode's prompt for this video (as --prompt does)


def read_inputs(spec: str) -> list[Item]:
    """The items `spec` names, in a stable order (directories and globs sorted)."""
    if os.path.isdir(spec):
        items = [_item(p) for p in _walk(spec)]
        if not items:
            raise BatchInputError(f"{spec}: no video files (by extension: {', '.join(sorted(VIDEO_EXTENSIONS))})")
    elif os.path.isfile(spec):
        ext = os.path.splitext(spec)[1].lower()
        if ext in VIDEO_EXTENSIONS:
            items = [_item(spec)]
        elif ext in (".jsonl", ".json", ".ndjson"):
            items = _jsonl(spec)
        elif ext == ".csv":
            items = _csv(spec)
        else:
            items = _list(spec)
    elif glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise BatchInputError(f"{spec}: the pattern matches no file")
        items = [_item(p) for p in paths]
    else:
        raise BatchInputError(f"{spec}: no such file, directory or glob match")
    _check_unique(spec, items)
    return items


def shard(items: list[Item], index: int, count: int) -> list[Item]:
    """The items of shard `index` of `count` (0-based): those whose id hashes to it."""
    assert 0 <= index < count
    return [it for it in items if zlib.crc32(it.id.encode("utf-8")) % count == index]


def _walk(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        found += [os.path.join(folder, f) for f in files
                  if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS and not f.startswith(".")]
    return sorted(found)


def _item(path: str, id: str | None = None, start=None, end=None, prompt=None) -> Item:
    path = os.path.normpath(path)
    return Item(path if id is None else id, path, start, end, prompt)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BatchInputError(f"{path}: cannot read the input list ({e})") from e


def _resolve(base: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(base)), path)


def _list(spec: str) -> list[Item]:
    items = []
    for line in _read(spec).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(_item(_resolve(spec, line)))
    if not items:
        raise BatchInputError(f"{spec}: the list holds no path (one video path a line; # starts a comment)")
    return items


def _jsonl(spec: str) -> list[Item]:
    items = []
    for n, line in enumerate(_read(spec).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise BatchInputError(f"{spec}:{n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise BatchInputError(f"{spec}:{n}: a JSON {type(row).__name__}, not an object with a 'path'")
        items.append(_row(spec, n, row))
    if not items:
        raise BatchInputError(f"{spec}: the manifest holds no record")
    return items


def _csv(spec: str) -> list[Item]:
    reader = csv.DictReader(io.StringIO(_read(spec)))
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise BatchInputError(f"{spec}: a CSV manifest needs a header with a 'path' column "
                              f"(optional: {', '.join(MANIFEST_COLUMNS[1:])})")
    items = [_row(spec, n, {k: v for k, v in row.items() if v not in (None, "")}) for n, row in enumerate(reader, 2)]
    if not items:
        raise BatchInputError(f"{spec}: the manifest holds no row")
    return items


def _row(spec: str, n: int, row: dict) -> Item:
    where = f"{spec}:{n}"
    path = row.get("path")
    if not isinstance(path, str) or not path:
        raise BatchInputError(f"{where}: no 'path' (each record needs the video's path)")
    id = row.get("id")
    if id is not None and not isinstance(id, (str, int)) or id == "":
        raise BatchInputError(f"{where}: 'id' must be a non-empty string or an integer, got {id!r}")
    start, end = _seconds(where, row, "start"), _seconds(where, row, "end")
    if start is not None and end is not None and end <= start:
        raise BatchInputError(f"{where}: 'end' ({end}) must be after 'start' ({start})")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise BatchInputError(f"{where}: 'prompt' must be text, got {prompt!r}")
    return _item(_resolve(spec, path), None if id is None else str(id), start, end, prompt)


def _seconds(where: str, row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BatchInputError(f"{where}: {key!r} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0 or math.isinf(seconds):
        raise BatchInputError(f"{where}: {key!r} must be a number of seconds >= 0, got {value!r}")
    return seconds


def _check_unique(spec: str, items: list[Item]) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise BatchInputError(f"{spec}: id {it.id!r} appears twice (the journal resumes by id: give each video "
                                  "its own, e.g. an 'id' column in a manifest)")
        seen.add(it.id)
