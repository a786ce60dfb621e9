"""The scheduler without a model: preemption when the cache runs out, also where Python runs without asserts."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from videocap.engine.kv_cache import BlockAllocator
from videocap.engine.request import Request, SamplingParams
from videocap.engine.scheduler import Scheduler, Sequence

allocator = BlockAllocator(4, prefix_caching=False)
scheduler = Scheduler(allocator, block_size=4)
seqs = [Sequence(Request([1, 2, 3], SamplingParams()), [1, 2, 3], seed=0) for _ in range(2)]
for seq in seqs:
    scheduler.add(seq)
assert len(scheduler.schedule().seqs) == 2  # prefill: one block each
for step in range(8):  # decode: each sequence grows until the cache cannot hold both
    batch = scheduler.schedule()
    for seq in batch.seqs:
        seq.num_cached = len(seq.tokens)
        seq.tokens.append(7)
print(len(scheduler.running), len(scheduler.waiting), seqs[1].blocks)
"""


def test_preemption_happens_when_python_runs_without_asserts():
    """`python -O` strips asserts: the call that preempts must not live inside one (it looped forever)."""
    for flags in ([], ["-O"]):
        done = subprocess.run([sys.executable, *flags, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "1", "[]"]  # the newer request was preempted, its blocks freed
