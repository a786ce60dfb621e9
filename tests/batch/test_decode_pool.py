"""The decode pool outlives a worker that dies on a video (a decoder crashing the process): the dead worker is
replaced and every other video still arrives, then END."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
from pathlib import Path

from videocap.batch.decode import END, DecodePool, DecodeSettings
from videocap.batch.inputs import Item

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "videocap" / "assets" / "example.mp4"


class CrashOn:
    """A `prepare` that kills its process on the image of one video (as a crashing decoder would)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, image):
        if not os.path.exists(self.marker):  # the first call anywhere dies; the rest pass
            open(self.marker, "w").close()
            os._exit(3)
        return image


def test_a_dead_worker_is_replaced_and_the_rest_arrive(tmp_path):
    items = []
    for k in range(4):
        path = tmp_path / f"v{k}.mp4"
        shutil.copy(EXAMPLE, path)
        items.append(Item(str(path), str(path)))
    settings = DecodeSettings("fast", "llava_next", frames=2)
    # One worker: without the replacement, the job queue fills and the pool never ends.
    pool = DecodePool(items, settings, workers=1, prefetch=2, prepare=CrashOn(str(tmp_path / "crashed")),
                      context=mp.get_context("fork"))
    got = []
    try:
        while True:
            blob = pool.ready.get(timeout=60)
            if blob == END:
                break
            got.append(pickle.loads(blob))
    finally:
        pool.stop()
    assert pool.died == 1
    assert len(got) == 3 and all(d.error is None for d in got)
    assert {d.item.id for d in got} < {it.id for it in items}
