"""The decode pool outlives a worker that dies on a video (a decoder crashing the process): the dead worker is
replaced and every other video still arrives, then END."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np

from videocap.batch.decode import END, DecodePool, DecodeSettings
from videocap.batch.inputs import Item

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "videocap" / "assets" / "example.mp4"


def _items(n: int) -> list[Item]:
    """n inputs, all the bundled example under ids v0.. (the pool only reads them)."""
    return [Item(f"v{k}", str(EXAMPLE)) for k in range(n)]


def _drain(pool) -> list:
    """Every result the pool sends until END, unpickled; then the pool stopped."""
    got = []
    try:
        while (blob := pool.ready.get(timeout=60)) != END:
            got.append(pickle.loads(blob))
    finally:
        pool.stop()
    return got


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
    items = _items(4)
    settings = DecodeSettings("fast", "llava_next", frames=2)
    # One worker: without its replacement, no worker would be left for the other videos.
    pool = DecodePool(items, settings, workers=1, prefetch=2, prepare=CrashOn(str(tmp_path / "crashed")),
                      context=mp.get_context("fork"))
    got = _drain(pool)
    assert pool.died == 1
    assert len(got) == 3 and all(d.error is None for d in got)
    assert {d.item.id for d in got} < {it.id for it in items}


def test_a_gpu_decoder_failure_is_redone_on_the_cpu_not_recorded(monkeypatch):
    """--decode-device cuda: whatever the GPU's attempt raises (its memory taken, a context limit) or damage it
    meets, the CPU decides; a good video never gets a record calling it broken."""
    from videocap.batch import decode
    from videocap.tasks import fast
    from videocap.tasks.plan import VideoPlan

    calls = []

    def fake(plan, fam, *, threads, prepare):
        calls.append(plan.decode_device)
        if plan.decode_device is not None and behaviour == "raise":
            raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY")
        warnings = plan.warnings + (("corrupt frame at 1.000 s",) if plan.decode_device and behaviour == "damage"
                                    else ())
        return fast.FastInput("image", (0.0,), warnings, 0.1, 1)

    monkeypatch.setattr(fast, "fast_input", fake)
    settings = decode.DecodeSettings("fast", "llava_next", device="cuda:0")
    plan = VideoPlan("a.mp4", (0.0,), warnings=("planned",), decode_device="cuda:0")
    for behaviour, want in (("raise", "the GPU decoder failed (RuntimeError: CUDA_ERROR_OUT_OF_MEMORY)"),
                            ("damage", "the GPU decoder met damage"), ("fine", None)):
        calls.clear()
        got = decode._fast(plan, None, settings, None)
        if want is None:
            assert calls == ["cuda:0"] and got.warnings == ("planned",)
        else:
            assert calls == ["cuda:0", None] and got.warnings == ("planned", f"decoded on the CPU: {want}")


def test_threaded_workers_decode_every_video_once():
    """`threads`: each process decodes several videos at once; every video arrives once, decoded as a one-thread
    worker decodes it, and the pool still ends with END."""
    items = _items(7)
    settings = DecodeSettings("fast", "llava_next", frames=2)

    def collect(**kw):
        got = _drain(DecodePool(items, settings, prefetch=2, context=mp.get_context("fork"), **kw))
        assert len({d.item.id for d in got}) == len(got)
        return {d.item.id: d for d in got}

    threaded, single = collect(workers=2, threads=3), collect(workers=1)
    assert sorted(threaded) == sorted(single) == [f"v{k}" for k in range(7)]
    for key, decoded in threaded.items():
        assert decoded.error is None and decoded.stages["cpu"] > 0
        assert decoded.ready.timestamps == single[key].ready.timestamps
        assert np.array_equal(np.asarray(decoded.ready.image), np.asarray(single[key].ready.image))


def test_a_lost_gpu_is_left_for_the_next_one_or_the_cpu():
    """Once a GPU is out of use (its engine failed), its workers decode on the next GPU still in use, else on the
    CPU; the plan records where each video was decoded."""
    items = _items(4)
    settings = DecodeSettings("fast", "llava_next", frames=2)

    def where(lost):
        pool = DecodePool(items, settings, workers=2, prefetch=2, context=mp.get_context("fork"),
                          devices=("cuda:0", "cuda:1"), lost=lost)
        got = _drain(pool)
        assert len(got) == 4 and all(d.error is None for d in got)
        return {(d.plan.decode_device, any("decoded on the CPU" in w for w in d.ready.warnings)) for d in got}

    redone = not _cuda_decodes()  # without a usable cuda:1, its attempt is redone on the CPU, with a warning
    assert where(["cuda:0"]) == {("cuda:1", redone)}
    assert where(["cuda:0", "cuda:1"]) == {(None, False)}  # straight to the CPU: no GPU attempt, no warning


def _cuda_decodes() -> bool:
    from videocap.video.hardware import DecodeDeviceError, check_device

    try:
        check_device("cuda:1")
        return True
    except DecodeDeviceError:
        return False


def test_a_thread_that_dies_ends_its_process_and_the_pool_goes_on(tmp_path, monkeypatch):
    """In a worker of several threads, an exception outside the video's own handling (here: the first call
    anywhere) ends the whole process, as it would a one-thread worker: the pool replaces it and still ends."""
    from videocap.batch import decode

    items = _items(5)
    marker, real = tmp_path / "raised", decode.decode_item

    def first_raises(item, settings, prepare=None):
        if not marker.exists():
            marker.touch()
            raise RuntimeError("boom")
        return real(item, settings, prepare)

    monkeypatch.setattr(decode, "decode_item", first_raises)  # the forked workers inherit it
    pool = DecodePool(items, DecodeSettings("fast", "llava_next", frames=2), workers=1, threads=2, prefetch=2,
                      context=mp.get_context("fork"))
    got = _drain(pool)
    assert pool.died == 1
    # Lost: the video that raised, and the other thread's if it had not sent it yet.
    assert 3 <= len(got) <= 4 and all(d.error is None for d in got)


class CrashOnNth:
    """A `prepare` that kills its process on the n-th image it sees anywhere (counted in a file)."""

    def __init__(self, counter: str, n: int):
        self.counter, self.n = counter, n

    def __call__(self, image):
        import fcntl

        with open(self.counter, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one count at a time across the processes' threads
            f.write(".")
            f.flush()
            count = os.path.getsize(self.counter)
        if count == self.n:
            os._exit(3)
        return image


def test_a_worker_of_several_threads_that_dies_mid_job_does_not_hang_the_pool(tmp_path):
    """A process that dies while its other threads are sending results (or waiting for jobs) takes no lock with
    it: each worker has its own pipe. Under the real start method, repeated to meet the timing."""
    items = _items(24)
    for attempt in range(3):
        counter = tmp_path / f"count{attempt}"
        pool = DecodePool(items, DecodeSettings("fast", "llava_next", frames=2), workers=2, threads=3, prefetch=4,
                          prepare=CrashOnNth(str(counter), 6 + attempt))
        got = [d.item.id for d in _drain(pool)]
        assert pool.exit_codes == [3]
        assert len(set(got)) == len(got) and len(items) - 3 <= len(got) < len(items)  # at most its 3 threads' videos


class AlwaysCrash:
    def __call__(self, image):
        os._exit(3)



def test_workers_that_always_die_stop_the_pool_not_swallow_the_job(capsys):
    """Workers that die before finishing anything (every process failing the same way) are not replaced for ever,
    each swallowing its jobs: after a few deaths in a row the pool stops dealing and ends, saying why."""
    items = _items(40)
    pool = DecodePool(items, DecodeSettings("fast", "llava_next", frames=2), workers=2, prefetch=2,
                      prepare=AlwaysCrash(), context=mp.get_context("fork"))
    assert _drain(pool) == []
    assert 6 <= pool.died < 40
    assert "decode workers died 6 times in a row without finishing a video" in capsys.readouterr().err


def test_a_relay_failure_still_ends_the_consumers(capsys):
    def items():
        yield Item("v0", str(EXAMPLE))
        raise RuntimeError("the input list broke")

    pool = DecodePool(items(), DecodeSettings("fast", "llava_next", frames=2), workers=1, prefetch=2,
                      context=mp.get_context("fork"))
    assert len(_drain(pool)) <= 1  # and END came
    assert "the decode pool's relay failed" in capsys.readouterr().err
