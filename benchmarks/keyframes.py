"""Keyframe benchmark: what `KeyframeSelector.scan` costs on a GPU at CLIP ViT-L/14-336's real shapes, and whether
its features equal transformers' there.

A random CLIP ViT-L/14-336 vision tower (transformers' `CLIPVisionModel`, its init; the real weights are not
reachable from the GPU machine) is saved as a checkpoint and loaded through videocap's loader. Checks:
- parity: our feature (CLS of the last layer, before the post-layernorm) vs transformers' last_hidden_state[:, 0]
  on the same preprocessed frames, float32 on the GPU;
- cost: wall seconds of a scan (decode candidates every 2 s exactly, preprocess, embed in batches, compare) on
  clips of two lengths, frames embedded per second, peak GPU memory, and host peak RSS after each scan (the
  long clip scanned last: flat memory means no growth).

    python benchmarks/keyframes.py [--lengths 30 120] [--size 960x540] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from videocap.models.clip_vision import load_clip_config, preprocess  # noqa: E402
from videocap.video import VideoReader  # noqa: E402
from videocap.video.encode import write_video  # noqa: E402
from videocap.video.keyframes import KeyframeSelector  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def clip(seconds: int, width: int, height: int, fps: int = 30) -> Path:
    """Scenes of 10 s, each a colour with a moving texture and noise; a keyframe every 60 frames."""
    path = CACHE / f"keyframes_{seconds}s_{width}x{height}.mp4"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0 : width + 80]
    checker = ((x // 40 + y // 40) % 2 == 0)[..., None]  # shifted 3 px a frame by slicing
    noise = rng.integers(0, 24, (8, height, width, 3), dtype=np.uint8)

    def frames():
        for k in range(seconds * fps):
            if k % (10 * fps) == 0:
                colour = rng.integers(40, 220, 3).astype(np.uint8)
            shift = (3 * k) % 80
            yield np.where(checker[:, shift : shift + width], colour // 2, colour) + noise[k % 8]

    write_video(path, frames(), fps=fps, options={"g": "60", "sc_threshold": "0", "preset": "veryfast"})
    return path


def random_clip_l(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768)
    CLIPVisionModel(cfg).save_pretrained(folder)
    return folder


def parity(folder: Path, video: Path, selector: KeyframeSelector) -> dict:
    from transformers import CLIPVisionModel

    with VideoReader(video) as reader:
        frames = [f.image for f in reader.read([1.0, 5.0, 9.0, 12.0, 17.0, 21.0, 25.0, 28.0])]
    ours = selector.embed(frames)
    oracle = CLIPVisionModel.from_pretrained(folder).cuda().eval()
    with torch.no_grad():
        theirs = oracle(pixel_values=preprocess(frames, load_clip_config(folder)[1]).cuda()).last_hidden_state[:, 0]
    theirs = theirs.float().cpu()
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    return {"max_abs_diff": (ours - theirs).abs().max().item(), "feature_max_abs": theirs.abs().max().item(),
            "min_cosine": cos.min().item(), "attn": oracle.config._attn_implementation}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[30, 120])
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    t0 = time.perf_counter()
    videos = {n: clip(n, width, height) for n in args.lengths}
    print(f"clips ready in {time.perf_counter() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_clip_l(Path(tmp) / "clip-l-336")
        t0 = time.perf_counter()
        selector = KeyframeSelector.load(folder, device="cuda", progress=False, batch_size=args.batch)
        load_s = time.perf_counter() - t0
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "load_s": round(load_s, 2),
                  "batch": args.batch, "size": args.size, "parity": parity(folder, videos[args.lengths[0]], selector)}
    print(json.dumps(result["parity"]), flush=True)
    selector.scan(videos[args.lengths[0]], end=10)  # warm-up: kernels, allocator
    runs = []
    for n in sorted(args.lengths):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        found = selector.scan(videos[n])
        wall = time.perf_counter() - t0
        runs.append({"seconds": n, "wall_s": round(wall, 2), "candidates": found.candidates,
                     "frames_per_s": round(found.candidates / wall, 1), "keyframes": len(found.timestamps),
                     "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
                     "host_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
        print(json.dumps(runs[-1]), flush=True)
    with VideoReader(videos[min(args.lengths)]) as reader:
        frames = [f.image for f in reader.read([float(k) for k in range(args.batch)])]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        selector.embed(frames)
    result["embed_only_frames_per_s"] = round(10 * len(frames) / (time.perf_counter() - t0), 1)
    result["runs"] = runs
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
