"""What a batch job shows while it runs (a progress bar: videos/s, ETA, failures) and when it ends (`Summary`)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from tqdm import tqdm


@dataclass
class Summary:
    """One run of a job: what it did, and how fast."""

    inputs: int  # items in the input (this shard)
    skipped: int  # already in the journal (done, or failed without --retry-failed)
    done: int = 0  # captioned in this run
    failed: dict[str, int] = field(default_factory=dict)  # this run's error records by reason
    remaining: int = 0  # left for the next run (Ctrl-C)
    interrupted: bool = False
    load_seconds: float = 0.0  # until every engine was ready
    wall_seconds: float = 0.0  # from then to the end
    busy_seconds: float = 0.0  # inside engine steps, all engines together
    engines: int = 1
    decode_workers: int = 0
    decode_threads: int = 1  # videos each decode worker decodes at once
    out_of_memory: int = 0  # times an engine shrank its batch
    exported: list[str] = field(default_factory=list)

    @property
    def videos_per_hour(self) -> float:
        finished = self.done + sum(self.failed.values())
        return finished / self.wall_seconds * 3600 if self.wall_seconds > 0 else 0.0

    @property
    def gpu_busy(self) -> float:
        """The engines' step time over their wall time (1.0: an engine step was always running)."""
        return self.busy_seconds / (self.wall_seconds * self.engines) if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "videos_per_hour": self.videos_per_hour, "gpu_busy": self.gpu_busy}

    def text(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.failed.items(), key=lambda x: (-x[1], x[0])))
        lines = [
            f"done {self.done}, failed {failed}" + (f" ({reasons})" if reasons else "") + f", skipped {self.skipped} "
            f"(already in the journal), of {self.inputs}",
        ]
        if self.inputs and self.skipped == self.inputs:
            lines.append("nothing to do: every input already has a record (--retry-failed redoes the errors)")
        elif self.wall_seconds > 0:
            threads = f" x {self.decode_threads} threads" if self.decode_threads > 1 else ""
            lines.append(f"{self.videos_per_hour:,.0f} videos/hour over {self.wall_seconds:.1f} s (model load "
                         f"{self.load_seconds:.1f} s); GPU busy {self.gpu_busy:.0%} ({self.engines} engine(s), "
                         f"{self.decode_workers} decode workers{threads})")
        if self.out_of_memory:
            lines.append(f"out of memory {self.out_of_memory} time(s): batches were shrunk and retried")
        if self.interrupted:
            lines.append(f"interrupted: {self.remaining} video(s) left for the next run (rerun the same command)")
        elif self.remaining:
            lines.append(f"{self.remaining} video(s) got no record (a decode worker or an engine died on them); "
                         "rerunning the same command retries them")
        for path in self.exported:
            lines.append(f"wrote {path}")
        return "\n".join(lines)


class Progress:
    """Counts records as they are written and shows them on a progress bar (stderr) unless `quiet`."""

    def __init__(self, summary: Summary, total: int, quiet: bool):
        self.summary, self.total = summary, total
        self.failures: Counter[str] = Counter()
        self.bar = tqdm(total=total, desc="captioning", unit="video", file=sys.stderr, disable=quiet,
                        dynamic_ncols=True, smoothing=0.05)
        self.started = time.perf_counter()

    def record(self, record: dict) -> None:
        if "error" in record:
            self.failures[record.get("reason", "error")] += 1
            self.bar.set_postfix(failed=sum(self.failures.values()), refresh=False)
        else:
            self.summary.done += 1
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.summary.failed = dict(self.failures)
        finished = self.summary.done + sum(self.failures.values())
        self.summary.remaining = self.total - finished
        self.bar.close()
