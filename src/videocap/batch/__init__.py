"""Batch captioning: many videos into a resumable JSONL journal (`videocap batch`).

inputs.py (what to caption) · journal.py (what is done; records written whole) · records.py (a record per video) ·
decode.py (decode worker processes ahead of the engine) · engine_loop.py (one engine fed by them, on the same tasks
as `caption`) · pipeline.py (one job: local, `--gpus N` processes from multi.py, or Ray from ray.py) · export.py
(Parquet / CSV from the journal) · progress.py (the bar and the summary).
"""

from videocap.batch.pipeline import BatchConfig, LoadSpec, Summary, run_batch

__all__ = ["BatchConfig", "LoadSpec", "Summary", "run_batch"]
