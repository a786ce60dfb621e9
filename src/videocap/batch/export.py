"""Other formats from the journal, written at the end of a job: Parquet (every record) and CSV (`path,text`).

The CSV is the form text-to-video trainers such as Open-Sora read: one row per captioned video, its path and its
caption (videos that failed are left out); when a manifest gave windows, `start,end` columns (seconds, empty for
a whole video) follow, since such a caption describes its window only. Parquet keeps every latest record, errors included, in fixed columns
(timings and segments as nested types). Parquet needs pyarrow: `pip install 'videocap[parquet]'`.
"""

from __future__ import annotations

import csv
import os

from videocap.batch import journal
from videocap.errors import BatchInputError

COLUMNS = ("id", "path", "mode", "model", "caption", "error", "reason", "start", "end", "frame_timestamps",
           "segments", "prompt_tokens", "new_tokens", "requests", "finish_reason", "timings", "warnings")


def export_path(out: str, kind: str) -> str:
    stem = out[: -len(".jsonl")] if out.endswith(".jsonl") else out
    return f"{stem}.{kind}"


def export(out: str, kind: str) -> str:
    """Write the journal `out` as `kind` ("parquet" or "csv") beside it; the path written."""
    records = list(journal.read(out).records.values())
    path = export_path(out, kind)
    tmp = path + ".tmp"  # a reader never sees half a file
    try:
        if kind == "csv":
            captioned = [r for r in records if "error" not in r]
            # A caption of a manifest window describes that window, not the whole file: say which.
            windows = any(r.get("start") is not None or r.get("end") is not None for r in captioned)
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "text", "start", "end"] if windows else ["path", "text"])
                for r in captioned:
                    row = [r["path"], r.get("caption", "")]
                    if windows:
                        row += ["" if r.get(k) is None else repr(float(r[k])) for k in ("start", "end")]
                    writer.writerow(row)
        elif kind == "parquet":
            _parquet(records, tmp)
        else:
            raise BatchInputError(f"unknown export format {kind!r} (use parquet or csv)")
        os.replace(tmp, path)
    except OSError as e:
        raise BatchInputError(f"{path}: cannot write the export ({e.strerror or e})") from e
    return path


def _parquet(records: list[dict], path: str) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise BatchInputError("--export parquet needs pyarrow: pip install 'videocap[parquet]'") from e
    segment = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("text", pa.string())])
    schema = pa.schema([
        ("id", pa.string()), ("path", pa.string()), ("mode", pa.string()), ("model", pa.string()),
        ("caption", pa.string()), ("error", pa.string()), ("reason", pa.string()), ("start", pa.float64()),
        ("end", pa.float64()), ("frame_timestamps", pa.list_(pa.float64())), ("segments", pa.list_(segment)),
        ("prompt_tokens", pa.int64()), ("new_tokens", pa.int64()), ("requests", pa.int64()),
        ("finish_reason", pa.string()), ("timings", pa.map_(pa.string(), pa.float64())),
        ("warnings", pa.list_(pa.string())),
    ])
    columns = {name: [r.get(name) for r in records] for name in COLUMNS}
    columns["timings"] = [list(t.items()) if t is not None else None for t in columns["timings"]]
    pq.write_table(pa.table(columns, schema=schema), path)
