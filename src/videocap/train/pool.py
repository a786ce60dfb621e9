"""Pooled training data (`--pool N`): N examples rendered once, then replayed in shuffled epochs.

Streaming (the default) renders every step's examples afresh, so a small model on a fast GPU waits on the CPU
workers. A pooled run renders examples 0 .. N-1 of its source once, in parallel over the worker processes, keeps
them in memory on the training device (pixels in bf16 on CUDA, where autocast would cast them to bf16 anyway;
fp32 on the CPU) and then takes its steps from that pool at the GPU's own pace: epoch e visits the pool in an
order drawn from (seed, e), in batches of `batch_size` (a last partial batch is dropped). Step i's batch is thus a
function of (N, batch size, seed, i) alone: a resumed pooled run renders the same pool again and continues with
the batch the uninterrupted run would have taken.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from videocap.train.data import Examples, collate
from videocap.train.examples import Example

RENDER_CHUNK = 32  # examples a worker hands back at a time


class _Store:
    """Collate for the rendering loader: a list of examples, pixels already in the pool's dtype (in the worker)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, examples: list[Example]) -> list[Example]:
        if self.dtype != torch.float32:
            for e in examples:
                if e.pixels is not None:
                    e.pixels = e.pixels.to(self.dtype)
        return examples


def render(source, n: int, *, workers: int, device: torch.device, progress: bool = True,
           worker_init_fn=None) -> tuple[list[Example], float]:
    """Examples 0 .. n-1 of `source`, on `device`; returns them and the seconds rendering took."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    loader = DataLoader(Examples(source, 0, n), batch_size=RENDER_CHUNK, shuffle=False, num_workers=workers,
                        collate_fn=_Store(dtype), worker_init_fn=worker_init_fn,
                        prefetch_factor=4 if workers else None)
    pool: list[Example] = []
    t0 = time.perf_counter()
    with tqdm(total=n, desc="rendering pool", unit="ex", file=sys.stderr, disable=not progress) as bar:
        for chunk in loader:
            for e in chunk:  # a copy out of the worker's shared memory, onto the device
                pixels = None if e.pixels is None else e.pixels.to(device=device, copy=True)
                pool.append(Example(e.input_ids.clone(), e.labels.clone(), e.image_mask.clone(), pixels, e.size))
            bar.update(len(chunk))
    assert len(pool) == n
    return pool, time.perf_counter() - t0


def order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The pool's visiting order in `epoch` (the same on every machine)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def batches(pool: list[Example], batch_size: int, seed: int, start: int, stop: int) -> Iterator[dict]:
    """Collated batches for steps start .. stop-1; pixels as fp32 (on the pool's device)."""
    per_epoch = len(pool) // batch_size
    assert per_epoch >= 1, "the pool must hold at least one batch"
    epoch, perm = -1, None
    for step in range(start, stop):
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            perm = order(len(pool), seed, epoch)
        k = step % per_epoch
        batch = collate([pool[i] for i in perm[k * batch_size : (k + 1) * batch_size].tolist()])
        if batch["pixels"] is not None:
            batch["pixels"] = batch["pixels"].float()
        yield batch
