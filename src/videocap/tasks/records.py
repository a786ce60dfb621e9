"""Reading timed captions for `videocap summarize`: videocap's own slide output and ShareGPT4Video records.

A file holds one JSON object, a JSON array of objects, or JSON Lines (one object a line); every record becomes a
`CaptionSet`. Two record shapes are read:
- videocap `caption --mode slide --json`: `segments`, a list of {start, end, text} (seconds);
- ShareGPT4Video (`sharegpt4video_40k.jsonl`): `captions`, a list of {idx, content}; idx "-1" is the whole-video
  caption (kept as `reference`, not summarized), the others are per-keyframe (differential) captions in idx
  order. Their times come from `timestamp` or `timestamps` (seconds, one per keyframe — a number, or a
  [start, end] pair), else from `keyframe` or `keyframes` (frame numbers) with `fps`; records with none of these
  get `interval` seconds per caption when the caller gives one (the captioner demo's 2 s convention), and are
  refused otherwise. Both spellings of each field are accepted because public readers of the dataset disagree.

Anything else is a `RecordError` naming the file, the record and what is missing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from videocap.errors import RecordError
from videocap.tasks.results import Segment

TIME_FIELDS = ("timestamp", "timestamps")
FRAME_FIELDS = ("keyframe", "keyframes")


@dataclass(frozen=True)
class CaptionSet:
    source: str  # "<file>", "<file>:<line>" (JSONL) or "<file>[<n>]" (array), plus the record's video when given
    segments: tuple[Segment, ...]
    reference: str | None = None


def read_captions(path: str | os.PathLike, *, interval: float | None = None) -> list[CaptionSet]:
    """Every record in the file at `path`, as timed captions."""
    path = os.fspath(path)
    text = read_text(path, "a captions file")
    return [from_record(record, where, interval=interval) for record, where in parse_records(path, text)]


def read_text(path: str, what: str) -> str:
    """The UTF-8 text of the file at `path` (`what` it should be, for the error), or a one-line RecordError."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordError(f"{path}: is a directory, not {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot read the file ({e})") from e


def parse_records(path: str, text: str) -> list[tuple[dict, str]]:
    """The file's records, each with how errors name it: `path` alone, `path:LINE` (JSONL) or `path[N]` (array)."""
    if not text.strip():
        raise RecordError(f"{path}: the file is empty (expected JSON or JSON Lines records)")
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else [data]
        where = [f"{path}[{n}]" for n in range(1, len(records) + 1)] if isinstance(data, list) else [path]
    except ValueError:
        records, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise RecordError(f"{path}:{n}: not JSON ({e.args[0] if e.args else e})") from None
            where.append(f"{path}:{n}")
    if not records:
        raise RecordError(f"{path}: no records (expected JSON or JSON Lines records)")
    for record, at in zip(records, where):
        if not isinstance(record, dict):
            raise RecordError(f"{at}: a JSON {type(record).__name__}, not an object")
    return list(zip(records, where))


def from_record(record: dict, where: str, *, interval: float | None = None) -> CaptionSet:
    """One record's captions; `where` names it in errors."""
    name = record.get("video") or record.get("video_id") or record.get("video_path")
    source = f"{where} ({name})" if isinstance(name, str) and name else where
    if "segments" in record:
        return CaptionSet(source, _segments(record["segments"], source))
    if "captions" in record:
        return _sharegpt4video(record, source, interval)
    raise RecordError(f"{source}: no 'segments' (videocap slide --json output) or 'captions' "
                      "(ShareGPT4Video record) to summarize")


def _segments(value, source: str) -> tuple[Segment, ...]:
    if not isinstance(value, list) or not value:
        raise RecordError(f"{source}: 'segments' must be a non-empty list of {{start, end, text}}")
    out = []
    for k, seg in enumerate(value, 1):
        if not isinstance(seg, dict):
            raise RecordError(f"{source}: segment {k} is not an object with start, end and text")
        missing = [f for f in ("start", "end", "text") if f not in seg]
        if missing:
            raise RecordError(f"{source}: segment {k} has no {', '.join(repr(m) for m in missing)}")
        start, end = _seconds(seg["start"], f"{source}: segment {k} 'start'"), _seconds(seg["end"], f"{source}: segment {k} 'end'")
        out.append(Segment(start, end, _text(seg["text"], f"{source}: segment {k} 'text'")))
    return tuple(out)


def _sharegpt4video(record: dict, source: str, interval: float | None) -> CaptionSet:
    captions = record["captions"]
    if not isinstance(captions, list):
        raise RecordError(f"{source}: 'captions' must be a list of {{idx, content}}")
    reference, parts = None, []
    for k, cap in enumerate(captions, 1):
        if not isinstance(cap, dict) or "idx" not in cap or "content" not in cap:
            raise RecordError(f"{source}: caption {k} needs 'idx' and 'content'")
        try:
            idx = int(cap["idx"])
        except (TypeError, ValueError):
            raise RecordError(f"{source}: caption {k} has idx {cap['idx']!r}, not a number") from None
        content = _text(cap["content"], f"{source}: caption {k} 'content'")
        if idx == -1:
            reference = content
        elif idx < 0:
            raise RecordError(f"{source}: caption {k} has idx {idx}; only -1 (the whole caption) may be negative")
        else:
            parts.append((idx, content))
    if not parts:
        raise RecordError(f"{source}: no per-keyframe captions (only idx -1, the whole-video caption)")
    parts.sort()
    spans = _times(record, source, len(parts), interval)  # the n-th caption (by idx) at the n-th keyframe
    segments = tuple(Segment(start, end, content) for (start, end), (_, content) in zip(spans, parts))
    return CaptionSet(source, segments, reference)


def _times(record: dict, source: str, count: int, interval: float | None) -> list[tuple[float, float]]:
    """(start, end) seconds per keyframe caption, from whichever timing field the record has."""
    for field in TIME_FIELDS:
        if field in record:
            return _spans(record[field], f"{source}: '{field}'", count)
    for field in FRAME_FIELDS:
        if field in record:
            fps = record.get("fps")
            if fps is None:
                raise RecordError(f"{source}: has '{field}' (frame numbers) but no 'fps' to turn them into seconds; "
                                  "give --interval to time the captions instead")
            fps = _seconds(fps, f"{source}: 'fps'")
            if fps <= 0:
                raise RecordError(f"{source}: 'fps' must be positive, got {fps}")
            frames = _spans(record[field], f"{source}: '{field}'", count)
            return [(a / fps, b / fps) for a, b in frames]
    if interval is not None:
        return [(k * interval, k * interval) for k in range(count)]
    raise RecordError(f"{source}: no keyframe times ('timestamp' or 'timestamps', or 'keyframe'/'keyframes' with "
                      "'fps'); give --interval S to assume one caption every S seconds")


def _spans(value, what: str, count: int) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise RecordError(f"{what} must be a list with one entry per keyframe caption")
    if len(value) < count:
        raise RecordError(f"{what} has {len(value)} entries for {count} keyframe captions")
    spans = []
    for k, v in enumerate(value, 1):
        if isinstance(v, list) and len(v) == 2:
            spans.append((_seconds(v[0], f"{what} entry {k}"), _seconds(v[1], f"{what} entry {k}")))
        else:
            t = _seconds(v, f"{what} entry {k}")
            spans.append((t, t))
    return spans


def _seconds(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RecordError(f"{what} must be a number of seconds, got {value!r}")
    try:
        t = float(value)
    except ValueError:
        raise RecordError(f"{what} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(t) or t < 0:
        raise RecordError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return t


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be text, got {type(value).__name__}")
    return value.strip()
