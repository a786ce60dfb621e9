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


def test_a_preempted_beams_copy_is_dropped_before_its_block_is_handed_out_again():
    """Copy-on-write pairs are planned as the step's blocks are handed out. When a later beam preempts a request
    whose beams already planned a copy, that copy's destination is free again and may become the later beam's
    own copy destination: the stale pair must go, else two copies write one block (on CUDA either may win)."""
    from videocap.engine.kv_cache import BlockAllocator
    from videocap.engine.request import Request, SamplingParams
    from videocap.engine.scheduler import Scheduler, Sequence

    allocator = BlockAllocator(3, prefix_caching=False)
    scheduler = Scheduler(allocator, block_size=4)
    roots = []
    for beams in (2, 3):  # A, then B; one block each for a 3-token prompt
        request = Request([1, 2, 3], SamplingParams(num_beams=beams))
        root = Sequence(request, [1, 2, 3], seed=0)
        scheduler.add(root)
        roots.append(root)
    assert scheduler.schedule().prefill and allocator.num_free == 1
    for root in roots:  # every beam continues the prompt in the shared block: each but the last must copy it
        n = root.request.sampling.num_beams
        beams = [root] + [scheduler.fork(root, 10 + k) for k in range(1, n)]
        root.tokens.append(10)
        scheduler.replace([root], beams)
    batch = scheduler.schedule()  # A's first beam takes the free block; B's beams need two: A is preempted
    assert [s.request for s in batch.seqs] == [roots[1].request] * 3
    destinations = [dst for _, dst in batch.copies]
    assert len(destinations) == len(set(destinations)) == 2
    owned = {block for seq in batch.seqs for block in seq.blocks}
    assert set(destinations) <= owned
    allocator.check()
