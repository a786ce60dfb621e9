"""Looking into videocap's engine from outside while it runs: per-step statistics, streaming requests with
host-side timings, and a torch.profiler summary of prefill and decode steps. Benchmarks only; the statistics
wrap engine internals (scheduler, step) where they exist and go quiet where they do not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from videocap.engine.request import Request


class StepLog:
    """Each engine step's kind, batch size, tokens computed, context tokens and host seconds, by wrapping this
    engine instance's `scheduler.schedule` and `step`. Engine internals: when they are not there, no rows."""

    def __init__(self, engine):
        self.rows: list[dict] = []
        scheduler = getattr(engine, "scheduler", None)
        self.available = callable(getattr(engine, "step", None)) and callable(getattr(scheduler, "schedule", None))
        if not self.available:
            return
        schedule, step, pending = scheduler.schedule, engine.step, []

        def logged_schedule(*args, **kwargs):
            batch = schedule(*args, **kwargs)
            try:
                seqs = batch.seqs
                pending.append({"prefill": bool(batch.prefill), "batch": len(seqs),
                                "computed": sum(len(s.tokens) - s.num_cached for s in seqs),
                                "context": sum(len(s.tokens) for s in seqs)})
            except AttributeError:
                pass
            return batch

        def logged_step(*args, **kwargs):
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            if pending:
                self.rows.append({**pending.pop(0), "s": time.perf_counter() - t0})
            return out

        scheduler.schedule, engine.step = logged_schedule, logged_step

    def summary(self) -> dict | None:
        if not self.rows:
            return None
        pre = [r for r in self.rows if r["prefill"]]
        dec = [r for r in self.rows if not r["prefill"]]
        pre_s, dec_s = sum(r["s"] for r in pre), sum(r["s"] for r in dec)
        batches = [r["batch"] for r in dec] or [0]
        return {
            "steps": len(self.rows), "prefill_steps": len(pre), "decode_steps": len(dec),
            "prefill_s": pre_s, "decode_s": dec_s, "prefill_share": pre_s / max(pre_s + dec_s, 1e-9),
            "prefill_tokens_computed": sum(r["computed"] for r in pre),
            "mean_prefill_batch": statistics.mean(r["batch"] for r in pre) if pre else 0,
            "mean_decode_batch": statistics.mean(batches), "median_decode_batch": statistics.median(batches),
            "max_decode_batch": max(batches),
            "mean_decode_step_ms": 1e3 * dec_s / max(len(dec), 1),
        }

    def decode_steps(self) -> list[tuple[int, int]]:
        return [(r["batch"], r["context"]) for r in self.rows if not r["prefill"]]


def stream(engine, requests: list[Request], deadline: float | None = None,
           progress: Callable[[str], None] | None = None, progress_s: float = 15.0) -> dict:
    """Submit `requests` at once and consume the engine's outputs: seconds from submission to each request's first
    and last token on the host, its tokens and the engine's own timings. Past `deadline` (perf_counter) the rest
    is abandoned (the engine aborts it). Asserts every finished request has exactly its max_new_tokens."""
    t0 = time.perf_counter()
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    tokens: dict[int, list[int]] = {}
    timings: dict[int, dict] = {}
    last_print, timed_out = t0, False
    gen = engine.generate(requests)
    try:
        for out in gen:
            now = time.perf_counter()
            if out.token_ids and out.request_id not in first:
                first[out.request_id] = now - t0
            if out.finished:
                done[out.request_id] = now - t0
                tokens[out.request_id] = list(out.token_ids)
                timings[out.request_id] = vars(out.timings)
            if progress is not None and now - last_print > progress_s:
                progress(f"  {len(done)}/{len(requests)} finished, {len(first)} started")
                last_print = now
            if deadline is not None and now > deadline:
                timed_out = True
                break
    finally:
        gen.close()  # aborts unfinished requests: their cache blocks are freed
    elapsed = time.perf_counter() - t0
    want = {r.request_id: r.sampling.max_new_tokens for r in requests}
    for rid, ids in tokens.items():
        assert len(ids) == want[rid], f"request {rid}: {len(ids)} tokens, not exactly max_new_tokens={want[rid]}"
    return {"first": first, "done": done, "tokens": tokens, "timings": timings, "elapsed": elapsed,
            "timed_out": timed_out}


def profile_steps(engine, prefill: list[Request], decode: list[Request], *, warm: int, active: int,
                  device: torch.device) -> str:
    """Top kernels by self device time (CPU ops on CPU) of (a) the prefill of `prefill` (each asking for one
    token), (b) `active` decode steps with all of `decode` running, after `warm` decode steps. `decode` must ask
    for more than 1 + warm + active tokens each. Returns the tables as text."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sections = []
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        stream(engine, prefill)
        sync(device)
    sections.append((f"prefill: {len(prefill)} requests, vision included, {time.perf_counter() - t0:.3f} s wall", prof, 10))

    prof, state, counts, wall = profile(activities=activities), "before", {}, 0.0
    gen = engine.generate(decode)
    try:
        for out in gen:
            counts[out.request_id] = len(out.token_ids)
            least = min(counts.values()) if len(counts) == len(decode) else 0
            if state == "before" and least >= 1 + warm:
                sync(device)
                prof.start()
                state, t0 = "on", time.perf_counter()
            elif state == "on" and least >= 1 + warm + active:
                sync(device)
                prof.stop()
                state, wall = "done", time.perf_counter() - t0
                break
    finally:
        gen.close()
    if state == "on":  # the requests finished first: what was recorded still counts
        prof.stop()
        wall = time.perf_counter() - t0
    assert state != "before", "the decode steps to profile never came"
    sections.append((f"decode: {active} steps with {len(decode)} sequences running, {wall:.3f} s wall", prof, 20))

    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    lines = []
    for title, p, rows in sections:
        averages = p.key_averages()
        try:
            table = averages.table(sort_by=key, row_limit=rows, max_name_column_width=70)
        except (AttributeError, KeyError):  # torch before the device_time names
            table = averages.table(sort_by=key.replace("device", "cuda"), row_limit=rows, max_name_column_width=70)
        lines += [f"## {title}", table, ""]
    return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
