r"""End-to-end batch captioning (issue 8) at ShareGPT4Video-8B's real shapes with random bf16 weights: videos/hour
and GPU-busy fraction of `videocap batch`'s pipeline (decode workers → engine → journal), side by side in the same
run with the same engine fed pre-decoded inputs (the upper bound).

    python benchmarks/batch_e2e.py --out DIR [--tiny] [--clips 64] [--copies 8] [--seconds 30]
                                   [--new-tokens 256] [--decode-workers N] [--warmup 16]
                                   [--decode-device cpu,cuda] [--gpu-layouts 2x8,15x1] [--mps]

The issue's run on a GPU machine (run 8 in RESULTS.md, with MPS then started by hand):
    python benchmarks/batch_e2e.py --out DIR --decode-device cuda --gpu-layouts 2x8 --no-supply \
        --gpu-memory-fraction 0.55 --mps

Steps, in one process:
  clips      --clips distinct 1920x1080 H.264 clips of --seconds (libx264 preset fast, CRF 23, yuv420p, 30 fps,
             a keyframe every 60 frames, no scene-cut keyframes), encoded in parallel on every core. Each clip is
             its own textured scene (a pan with grain and moving boxes, seeded per clip) of 2 s (one GOP), repeated by
             remuxing its packets (closed GOPs) to the full length: decoding it costs what fresh content costs.
  model      the random-weight model built on the device (benchmarks/random_llava.py), videocap's processor
             (anyres) with a word-level stand-in tokenizer (no tokenizer file on the device; the prompts have the
             real template and about the real token count), no stop ids so every answer has --new-tokens tokens
  warmup     --warmup videos through the engine (CUDA graphs, Triton kernels)
  predecoded every clip decoded once by the decode pool, then --clips x --copies inputs (each clip under
             --copies ids) fed to the same EngineLoop from memory: engine + tasks + records, no decoding
  supply     per --decode-device, the decode pool alone over 6 x workers inputs: videos/s the workers can supply
             and their seconds per video by stage (probe, plan, frames, layout, prepare)
  e2e        run_batch on a manifest of the same --clips x --copies inputs with --decode-workers processes
             (default: cores - 1): decode, layout and anyres preparation in the workers, the engine in this
             process, the journal written as in a real job; once per --decode-device (cpu: FFmpeg's decoders on
             the workers' cores; cuda: the GPU's NVDEC engines, the same pixels)
Both timed runs count from the first video offered to the last record; GPU busy = time inside engine steps / wall.
Writes DIR/batch_e2e.json after every step. `--tiny`: toy sizes on CPU in seconds (a dry run; tests call it).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import pickle
import platform
import queue
import sys
import threading
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from decode import _repeat, _smooth_noise  # noqa: E402
from random_llava import model_config, random_model  # noqa: E402

from videocap.api import Captioner  # noqa: E402
from videocap.batch import BatchConfig, run_batch  # noqa: E402
from videocap.batch.decode import END, DecodePool, DecodeSettings, decode_devices, default_workers  # noqa: E402
from videocap.batch.engine_loop import EngineLoop, TaskSpec  # noqa: E402
from videocap.batch.inputs import Item  # noqa: E402
from videocap.engine.engine import Engine  # noqa: E402
from videocap.models.llava_next.processor import LlavaNextProcessor  # noqa: E402
from videocap.video import SeekMode  # noqa: E402
from videocap.video.encode import write_video  # noqa: E402
from videocap.video.hardware import mps_running  # noqa: E402

T0 = time.perf_counter()
FPS, GOP, SCENE_S = 30, 60, 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def start_mps() -> None:
    """A CUDA MPS control daemon for this process and its children only (their own pipe folder), quit at exit."""
    import atexit
    import shutil
    import subprocess
    import tempfile

    if torch.cuda.is_initialized():
        raise SystemExit("--mps: CUDA is already initialised in this process")
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise SystemExit("--mps: nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA driver)")
    root = tempfile.mkdtemp(prefix="videocap-mps-")
    os.environ["CUDA_MPS_PIPE_DIRECTORY"] = os.path.join(root, "pipe")
    os.environ["CUDA_MPS_LOG_DIRECTORY"] = os.path.join(root, "log")
    for d in ("pipe", "log"):
        os.makedirs(os.path.join(root, d))
    subprocess.run([control, "-d"], check=True)
    atexit.register(lambda: subprocess.run([control], input=b"quit\n", check=False))
    log(f"CUDA MPS daemon started (pipes in {os.environ['CUDA_MPS_PIPE_DIRECTORY']})")


# ---- clips ------------------------------------------------------------------------------------------------------

def _frames(seed: int, n: int, width: int, height: int):
    """A pan over a seeded texture with grain and four moving boxes (integer shifts: cheap to synthesise)."""
    rng = np.random.default_rng(seed)
    shape = (height + 8, width * 3 // 2)
    tex = np.clip(0.7 * _smooth_noise(rng, shape, max(4, width // 30)) + 0.3 * _smooth_noise(rng, shape, 6), 0, 255)
    tex = tex.astype(np.int16)
    grain = [rng.integers(-6, 7, (height, width, 1), dtype=np.int16) for _ in range(4)]
    colours = rng.integers(30, 230, (4, 3))
    span, box = shape[1] - width - 1, (max(8, height // 7), max(8, width // 10))
    for i in range(n):
        x = int(span / 2 * (1 + math.sin(i / (FPS * 2.0))))
        y = int(3 + 3 * math.sin(i / (FPS * 1.5)))
        image = tex[y : y + height, x : x + width] + grain[i % len(grain)]
        for k in range(4):
            bx = int((i * (3 + k) * 4 + k * width // 5) % (width - box[1]))
            by = int((k + 0.5) * height / 4.5)
            image[by : by + box[0], bx : bx + box[1]] = colours[k]
        yield np.clip(image, 0, 255).astype(np.uint8)


def make_clip(job: tuple[int, str, int, int, int]) -> str:
    seed, path, seconds, width, height = job
    scene = min(seconds, SCENE_S)
    tmp = path + ".scene.mp4"
    options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "preset": "fast", "crf": "23",
               "threads": "1"}
    write_video(tmp, _frames(seed, scene * FPS, width, height), fps=FPS, options=options)
    if seconds > scene:
        assert seconds % scene == 0
        _repeat(Path(tmp), Path(path + ".part.mp4"), seconds // scene)
        os.replace(path + ".part.mp4", path)
        os.remove(tmp)
    else:
        os.replace(tmp, path)
    return path


def make_clips(folder: Path, n: int, seconds: int, width: int, height: int, workers: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(1000 + k, str(folder / f"clip{k:03d}.mp4"), seconds, width, height) for k in range(n)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:  # before anything touches CUDA
        return pool.map(make_clip, jobs, chunksize=1)


# ---- model ------------------------------------------------------------------------------------------------------

def word_tokenizer(cfg):
    """A stand-in for Llama-3's tokenizer: the chat template's special tokens, every other word or punctuation
    run one token (Llama-3 averages a little more than one per word). Values do not matter to random weights."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = cfg.text.vocab_size
    specials = {"<|begin_of_text|>": vocab - 5, "<|eot_id|>": cfg.eos_token_ids[0],
                "<|start_header_id|>": vocab - 3, "<|end_header_id|>": vocab - 2}
    words = {"<unk>": vocab - 4, **specials}
    assert len(set(words.values())) == len(words)
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return tokenizer


def build_captioner(tiny: bool, device: torch.device, dtype: torch.dtype, memory_fraction: float) -> Captioner:
    cfg = model_config(tiny)
    net = random_model(cfg, device, dtype)
    processor = LlavaNextProcessor(cfg, word_tokenizer(cfg))
    processor.stop_ids = ()  # random weights: no stop token, every answer runs to max_new_tokens
    cache = None if device.type == "cuda" else net.max_context() * 8
    engine = Engine(net, gpu_memory_fraction=memory_fraction, max_cache_tokens=cache)
    return Captioner(net, processor, engine, "random-llava-next-8b" if not tiny else "random-llava-next-tiny")


# ---- runs -------------------------------------------------------------------------------------------------------

def decode_all(paths: list[str], settings: DecodeSettings, processor, workers: int) -> dict[str, bytes]:
    """Every clip decoded (and prepared) once by the decode pool: path -> pickled Decoded."""
    pool = DecodePool([Item(p, p) for p in paths], settings, workers=workers, prefetch=len(paths) + 1,
                      prepare=processor.prepare_image)
    out: dict[str, bytes] = {}
    try:
        while True:
            blob = pool.ready.get(timeout=600)
            if blob == END:
                break
            decoded = pickle.loads(blob)
            assert decoded.error is None, f"{decoded.item.path}: {decoded.error}"
            out[decoded.item.path] = blob
    finally:
        pool.stop()
    assert len(out) == len(paths)
    return out


def measure_supply(items: list[Item], settings: DecodeSettings, processor, workers: int, threads: int = 1) -> dict:
    """The decode pool alone, no engine: how many videos a second the workers can supply (counted from the
    `workers * threads`-th result on, so that start-up is left out), and where a worker's time per video goes."""
    pool = DecodePool(items, settings, workers=workers, prefetch=len(items) + 1, prepare=processor.prepare_image,
                      devices=decode_devices(settings.device, 1, None), threads=threads)
    arrivals, seconds, stages = [], [], {}
    try:
        while True:
            blob = pool.ready.get(timeout=600)
            if blob == END:
                break
            arrivals.append(time.perf_counter())
            decoded = pickle.loads(blob)
            assert decoded.error is None, f"{decoded.item.path}: {decoded.error}"
            seconds.append(decoded.seconds)
            for name, value in (decoded.stages or {}).items():
                stages.setdefault(name, []).append(value)
    finally:
        pool.stop()
    skip = min(workers * threads, len(arrivals) - 2)
    span = arrivals[-1] - arrivals[skip]
    return {"videos": len(arrivals), "videos_per_s": (len(arrivals) - 1 - skip) / span if span > 0 else float("nan"),
            "worker_s_per_video": float(np.mean(seconds)),
            "stages_s_per_video": {k: float(np.mean(v)) for k, v in stages.items()}}


def inputs(paths: list[str], copies: int) -> list[Item]:
    """Each clip under `copies` ids, interleaved (clip 0 #0, clip 1 #0, ..., clip 0 #1, ...)."""
    return [Item(f"{Path(p).stem}#{c}", p) for c in range(copies) for p in paths]


def run_predecoded(captioner, blobs: dict[str, bytes], items: list[Item], task: TaskSpec) -> dict:
    """The engine fed decoded videos from memory: the batch job less its decoding."""
    q: queue.Queue = queue.Queue()
    for item in items:
        decoded = pickle.loads(blobs[item.path])
        q.put(pickle.dumps(replace(decoded, item=item), protocol=pickle.HIGHEST_PROTOCOL))
    q.put(END)
    records: list[dict] = []
    engine = captioner.engine
    busy0 = engine.busy_seconds
    sync(engine)
    t0 = time.perf_counter()
    EngineLoop(captioner, q, task, records.append, threading.Event()).run()
    sync(engine)
    wall = time.perf_counter() - t0
    return summarize(records, len(items), wall, engine.busy_seconds - busy0)


def run_e2e(captioner, items: list[Item], task: TaskSpec, workers: int, folder: Path, frames: int,
            seek: SeekMode = SeekMode.EXACT, decode_device: str = "cpu", threads: int = 1,
            prefetch: int | None = None) -> dict:
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": it.id, "path": it.path}) + "\n" for it in items))
    journal = folder / "captions.jsonl"
    if journal.exists():
        journal.unlink()
    config = BatchConfig(str(manifest), str(journal), task=task, frames=frames, seek=seek, decode_workers=workers,
                         quiet=True, decode_device=decode_device, decode_threads=threads, prefetch=prefetch)
    summary = run_batch(config, captioner)
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    out = summarize(records, len(items), summary.wall_seconds, summary.busy_seconds)
    out["summary"] = summary.to_dict()
    for key, name in (("decode_video", "decode_s_per_video"), ("decode_worker", "worker_s_per_video"),
                      ("queued", "queued_s_per_video")):
        out[name] = float(np.mean([r["timings"].get(key, np.nan) for r in records if "timings" in r]))
    return out


def summarize(records: list[dict], expected: int, wall: float, busy: float) -> dict:
    ok = [r for r in records if "error" not in r]
    assert len(records) == expected and len(ok) == expected, (len(records), len(ok), expected)
    assert len({r["id"] for r in records}) == expected
    return {
        "videos": len(records), "wall_s": wall, "videos_per_s": len(records) / wall,
        "videos_per_hour": len(records) / wall * 3600, "gpu_busy": busy / wall, "busy_s": busy,
        "new_tokens": sorted({r["new_tokens"] for r in ok}), "prompt_tokens": sorted({r["prompt_tokens"] for r in ok}),
    }


def sync(engine) -> None:
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize(engine.runner.device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="where batch_e2e.json goes")
    ap.add_argument("--work", type=Path, default=None, help="clips, manifest and journal (default: --out)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on CPU: a dry run")
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--copies", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--decode-workers", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--seek", choices=["exact", "keyframe"], default="exact",
                    help="the end-to-end run's seek mode (the pre-decoded run always decodes exact frames: its engine "
                    "work is the same either way)")
    ap.add_argument("--decode-device", default="cpu",
                    help="comma-separated: one end-to-end run per decode device, e.g. cpu,cuda (default: cpu)")
    ap.add_argument("--no-supply", action="store_true", help="skip the decode pool's supply measurement")
    ap.add_argument("--gpu-layouts", default=None,
                    help="comma-separated PROCESSESxTHREADS[/PREFETCH] for each GPU decode device, e.g. "
                    "15x1,2x8/128 (one supply measurement and one end-to-end run each; default: the decode "
                    "workers x 1)")
    ap.add_argument("--gpu-memory-fraction", type=float, default=0.9,
                    help="the engine's KV-cache share (the same engine serves every run; leave room for GPU decoders)")
    ap.add_argument("--mps", action="store_true",
                    help="run everything under a CUDA MPS daemon of its own (started before CUDA is touched, with "
                    "its pipes in a temporary folder, and quit at the end): the GPU work of the engine and of the "
                    "decoders' processes then shares one context instead of taking turns")
    args = ap.parse_args(argv)
    if args.mps:
        start_mps()
    tiny = args.tiny
    clips = args.clips or (3 if tiny else 64)
    copies = args.copies or (2 if tiny else 8)
    seconds = args.seconds or (2 if tiny else 30)
    new_tokens = args.new_tokens or (3 if tiny else 256)
    width, height = (320, 180) if tiny else (1920, 1080)
    cores = os.cpu_count() or 1
    workers = args.decode_workers or (2 if tiny else default_workers(1))
    warmup = args.warmup if args.warmup is not None else (2 if tiny else 16)
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out
    res: dict = {"env": {
        "date": str(date.today()), "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "cpus": cores, "cpu_model": platform.processor() or platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "tiny": tiny,
        "mps": mps_running(),  # CUDA MPS: the processes' GPU work in one shared context
    }, "inputs": {"clips": clips, "copies": copies, "videos": clips * copies, "seconds": seconds,
                  "size": [width, height], "fps": FPS, "gop": GOP, "new_tokens": new_tokens,
                  "decode_workers": workers, "e2e_seek": args.seek,
                  "gpu_memory_fraction": args.gpu_memory_fraction}}
    def layout(spec: str) -> tuple[int, int, int | None]:
        shape, _, prefetch = spec.partition("/")
        procs, threads = (int(v) for v in shape.split("x"))
        return procs, threads, int(prefetch) if prefetch else None

    layouts = [layout(x) for x in args.gpu_layouts.split(",")] if args.gpu_layouts else [(workers, 1, None)]
    variants = []  # (name, device, processes, threads per process, prefetch)
    for d in args.decode_device.split(","):
        for procs, threads, prefetch in ([(workers, 1, None)] if d == "cpu" else layouts):
            name = f"--decode-device {d}"  # the variant as `videocap batch` options
            if d != "cpu" or (procs, threads) != (workers, 1):
                name += f" --decode-workers {procs} --decode-threads {threads}"
            variants.append((name + (f" --prefetch {prefetch}" if prefetch else ""), d, procs, threads, prefetch))
    res["inputs"]["variants"] = [list(v) for v in variants]

    def save() -> None:
        (args.out / "batch_e2e.json").write_text(json.dumps(res, indent=2))

    log(f"encoding {clips} clips of {seconds} s at {width}x{height} on {cores} cores")
    t = time.perf_counter()
    paths = make_clips(work / "clips", clips, seconds, width, height, max(1, cores))
    res["inputs"]["encode_s"] = time.perf_counter() - t
    res["inputs"]["clip_mb"] = float(np.mean([os.path.getsize(p) for p in paths]) / 1e6)
    save()

    log("building the model")
    t = time.perf_counter()
    captioner = build_captioner(tiny, device, dtype, args.gpu_memory_fraction)
    res["model_build_s"] = time.perf_counter() - t
    task = TaskSpec("fast", generation=(("max_new_tokens", new_tokens),))
    settings = DecodeSettings("fast", "llava_next", 16)

    log(f"decoding every clip once ({workers} workers)")
    t = time.perf_counter()
    blobs = decode_all(paths, settings, captioner.processor, workers)
    res["predecode_s"] = time.perf_counter() - t
    if warmup:
        log(f"warm-up: {warmup} videos")
        warm = replace(task, generation=(("max_new_tokens", min(new_tokens, 16)),))
        run_predecoded(captioner, blobs, [Item(f"warm{k}", paths[k % len(paths)]) for k in range(warmup)], warm)
    items = inputs(paths, copies)

    log(f"pre-decoded: {len(items)} videos")
    res["predecoded"] = run_predecoded(captioner, blobs, items, task)
    save()
    log(f"  {res['predecoded']['videos_per_s']:.2f} videos/s, GPU busy {res['predecoded']['gpu_busy']:.0%}")
    del blobs

    res["supply"] = {}
    for name, decode_device, procs, threads, _ in [] if args.no_supply else variants:
        n = min(len(items), 6 * procs * threads)
        log(f"decode supply alone: {n} videos, {procs} processes x {threads} threads, decoding on {decode_device}")
        supply = measure_supply(items[:n], replace(settings, seek=SeekMode(args.seek),
                                                            device=None if decode_device == "cpu" else decode_device),
                                captioner.processor, procs, threads)
        supply["layout"] = f"{procs} x {threads}"
        res["supply"][name] = supply
        save()
        log(f"  {supply['videos_per_s']:.2f} videos/s; a worker's seconds per video "
            f"{supply['worker_s_per_video']:.2f}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in supply["stages_s_per_video"].items()))
    res["e2e_runs"] = {}
    for name, decode_device, procs, threads, prefetch in variants:
        log(f"end to end: {len(items)} videos, {procs} decode processes x {threads} threads, seek {args.seek}, "
            f"decoding on {decode_device}, prefetch {prefetch or 'default'}")
        run = run_e2e(captioner, items, task, procs, work, 16, SeekMode(args.seek), decode_device, threads, prefetch)
        run["over_predecoded"] = run["videos_per_s"] / res["predecoded"]["videos_per_s"]
        run["layout"] = f"{procs} x {threads}"
        res["e2e_runs"][name] = run
        if "e2e" not in res:
            res["e2e"], res["e2e_over_predecoded"] = run, run["over_predecoded"]
        save()
        log(f"  {run['videos_per_s']:.2f} videos/s, GPU busy {run['gpu_busy']:.0%}, "
            f"{run['over_predecoded']:.0%} of pre-decoded")
    print(table(res))
    return res


def table(res: dict) -> str:
    p = res["predecoded"]
    rows = [
        "| run | videos/hour | videos/s | GPU busy | decode processes x threads | of pre-decoded |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| engine fed pre-decoded inputs (upper bound) | {p['videos_per_hour']:,.0f} | {p['videos_per_s']:.2f} | "
        f"{p['gpu_busy']:.0%} | — | — |",
    ]
    for device, sup in res.get("supply", {}).items():
        rows.append(f"| decode workers alone, `{device}` (supply) | {sup['videos_per_s'] * 3600:,.0f} | "
                    f"{sup['videos_per_s']:.2f} | — | {sup['layout']} | "
                    f"{sup['videos_per_s'] / p['videos_per_s']:.0%} |")
    for device, e in res["e2e_runs"].items():
        rows.append(f"| `videocap batch` end to end, `{device}` | {e['videos_per_hour']:,.0f} | "
                    f"{e['videos_per_s']:.2f} | {e['gpu_busy']:.0%} | {e['layout']} | "
                    f"{e['over_predecoded']:.0%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
