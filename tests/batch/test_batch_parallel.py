"""Several engines: `--gpus N` engine processes (on the CPU here) over one shared queue, and the same pipeline on a
local Ray instance, give the same records as one local engine (fields that do not depend on timing)."""

from __future__ import annotations

import pickle
import queue
import shutil
from types import SimpleNamespace

import pytest

from batch_kit import BAD, OneEngineFails

from videocap.batch import BatchConfig, LoadSpec, run_batch
from videocap.batch import journal
from videocap.batch.engine_loop import TaskSpec
from videocap.batch.inputs import Item
from videocap.batch.ray import DECODE_FAILED, EngineActor

SAME = ("path", "mode", "model", "caption", "segments", "frame_timestamps", "prompt_tokens", "new_tokens",
        "requests", "finish_reason", "error", "reason")


@pytest.fixture(scope="module")
def subset(clips, tmp_path_factory):
    """10 good clips and the 4 broken ones."""
    root = tmp_path_factory.mktemp("parallel")
    for p in sorted(clips.rglob("clip*.mp4"))[:10]:
        shutil.copy(p, root / p.name)
    for name in BAD:
        shutil.copy(clips / name, root / name)
    return root


@pytest.fixture(scope="module")
def local_records(subset, tiny_ckpt, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "j.jsonl"
    run_batch(config(subset, out, tiny_ckpt), tiny_base)
    records = journal.read(str(out)).records
    assert len(records) == 14
    return records


def config(inp, out, ckpt, **kw) -> BatchConfig:
    load = LoadSpec(str(ckpt), device="cpu", image_view="base")
    return BatchConfig(str(inp), str(out), load, TaskSpec("fast", generation=(("max_new_tokens", 2),)), frames=4,
                       decode_workers=kw.pop("decode_workers", 1), quiet=True, **kw)


def same(records: dict, expected: dict) -> None:
    assert sorted(records) == sorted(expected)
    for key, want in expected.items():
        assert {f: records[key].get(f) for f in SAME} == {f: want.get(f) for f in SAME}, key


def test_gpus_n_engine_processes(subset, tiny_ckpt, local_records, tmp_path):
    out = tmp_path / "j.jsonl"
    summary = run_batch(config(subset, out, tiny_ckpt, gpus=2))
    assert summary.engines == 2 and summary.done == 10 and sum(summary.failed.values()) == 4
    same(journal.read(str(out)).records, local_records)
    assert sum(1 for _ in open(out)) == 14


def test_one_engine_failing_leaves_the_job_to_the_others(subset, tiny_ckpt, local_records, tmp_path):
    from dataclasses import replace

    out = tmp_path / "j.jsonl"
    base = config(subset, out, tiny_ckpt, gpus=2)
    load = OneEngineFails(**{f: getattr(base.load, f) for f in ("model", "device", "image_view")},
                          marker=str(tmp_path / "marker"))
    said = []
    summary = run_batch(replace(base, load=load), log=said.append)
    assert summary.done == 10 and sum(summary.failed.values()) == 4 and summary.remaining == 0
    assert any("injected: this engine's GPU is gone" in m and "going on with 1 engine" in m for m in said), said
    same(journal.read(str(out)).records, local_records)


def test_ray_local_instance(subset, tiny_ckpt, local_records, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # a local instance for this test
    try:
        out = tmp_path / "j.jsonl"
        summary = run_batch(config(subset, out, tiny_ckpt, ray="auto", gpus=1, decode_workers=2))
        # A decode task that fails outright (say its worker died) becomes its video's error record in the engine.
        failed_task = ray.remote(lambda: 1 / 0).remote()
        holder = SimpleNamespace(inbox=queue.Queue())
        EngineActor.put(holder, [failed_task], Item("x", "x.mp4"))
        decoded = pickle.loads(holder.inbox.get_nowait())
    finally:
        ray.shutdown()
    assert decoded.item.id == "x" and decoded.reason == DECODE_FAILED and "ZeroDivisionError" in decoded.error
    assert summary.engines == 1 and summary.done == 10 and sum(summary.failed.values()) == 4
    same(journal.read(str(out)).records, local_records)
    assert sum(1 for _ in open(out)) == 14


def _send_and_exit(results, n):
    from videocap.batch.multi import _Msg

    for k in range(n):
        results.put(_Msg("record", 1, {"id": f"v{k}"}))


def test_records_sent_as_another_engine_fails_are_written():
    """When one engine fails, the parent still writes the records the others send while winding down."""
    import multiprocessing as mp

    from videocap.batch.multi import _wind_down

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_send_and_exit, args=(results, 50))
    proc.start()
    written = []
    _wind_down([proc], results, written.append)
    assert [r["id"] for r in written] == [f"v{k}" for k in range(50)]
    assert not proc.is_alive()
