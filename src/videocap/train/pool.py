"""Pooled training data (`--pool N`): N examples rendered once, then replayed in shuffled epochs.

Streaming (the default) renders every step's examples afresh, so a small model on a fast GPU waits on the CPU
workers. A pooled run renders examples 0 .. N-1 of its source once, in parallel over the worker processes, keeps
them in memory on the training device (pixels as the 8-bit tiles they were normalised from, normalised again
bit for bit when a batch is taken: a quarter of fp32's memory; bf16 on CUDA or fp32 on the CPU for any that are
not exactly that) and then takes its steps from that pool at the GPU's own pace: epoch e visits the pool in an
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

from videocap.models.llava_next.anyres import CLIP_MEAN, CLIP_STD, RESCALE
from videocap.train.data import Examples, collate
from videocap.train.examples import Example

RENDER_CHUNK = 32  # examples a worker hands back at a time


def to_uint8(pixels: torch.Tensor) -> torch.Tensor | None:
    """The 8-bit image behind normalised pixels (anyres.normalize's output), or None if they are not exactly that.

    Normalisation maps each uint8 value to one float32; undoing it lands within 1e-3 of the integer, and the
    integer normalised again gives the same bits (checked here, so a pool never changes what a step sees)."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
    values = (pixels.to(torch.float64) * std + mean) / RESCALE
    rounded = values.round()
    if (rounded - values).abs().max() > 1e-3 or rounded.min() < 0 or rounded.max() > 255:
        return None
    u = rounded.to(torch.uint8)
    return u if torch.equal(from_uint8(u), pixels) else None


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    """anyres.normalize's float32 pixels of 8-bit tiles (N, 3, H, W), on their device, bit for bit."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=u.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=u.device).view(1, 3, 1, 1)
    return ((u.to(torch.float64) * RESCALE).to(torch.float32) - mean) / std


class _Store:
    """Collate for the rendering loader: a list of examples, pixels already as the pool keeps them (in the worker):
    the 8-bit tiles where normalisation can be undone exactly (a quarter of fp32's memory, half of bf16's, and no
    rounding), else in the pool's float dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, examples: list[Example]) -> list[Example]:
        for e in examples:
            if e.pixels is not None:
                u = to_uint8(e.pixels)
                e.pixels = u if u is not None else e.pixels.to(self.dtype)
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
        chosen = [pool[i] for i in perm[k * batch_size : (k + 1) * batch_size].tolist()]
        if len({e.pixels.dtype for e in chosen if e.pixels is not None}) > 1:
            # a mixed pool (some examples could not be stored as 8 bits): normalise before joining
            chosen = [Example(e.input_ids, e.labels, e.image_mask, _float(e.pixels), e.size) for e in chosen]
        batch = collate(chosen)
        if batch["pixels"] is not None:
            batch["pixels"] = _float(batch["pixels"])
        yield batch


def _float(pixels: torch.Tensor | None) -> torch.Tensor | None:
    if pixels is None:
        return None
    return from_uint8(pixels) if pixels.dtype == torch.uint8 else pixels.float()
