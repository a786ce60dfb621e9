"""ShareCaptioner-Video (InternLM-XComposer2-4KHD) at its real shapes with random bf16 weights: seconds for
(a) one fast caption — a 16-frame strip of 720p frames at hd_num 16 — and (b) one sliding-caption step — a frame
pair at hd_num 9 — each with 512 new tokens forced (no stop token), greedy and with 3 beams (the reference's
default), through videocap's engine and through a plain eager PyTorch loop over the same model in the same run.

The eager loop is what a straightforward port runs: vision encode, one full forward over the prompt (image
embeddings spliced in, LoRA at image positions), then one forward per new token over a KV cache (contiguous per
sequence; attention gathers the cache and calls SDPA; no CUDA graphs, no Triton kernels, no scheduler), the token
read back to the host each step; beam search as transformers does it (scores summed in float32, top 2k over
beams x vocab, the cache reordered to the chosen parents every step). Times include the vision encoder.

  python benchmarks/xcomposer2_speed.py [--out DIR]    # real 7B shapes on CUDA
  python benchmarks/xcomposer2_speed.py --tiny         # toy sizes on CPU: a dry run of the script
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from random_llava import fill_random
from videocap.engine.engine import Engine
from videocap.engine.request import ImageInput, Request, SamplingParams
from videocap.models.layers.attention import AttnMetadata
from videocap.models.xcomposer2 import hd
from videocap.models.xcomposer2.config import PRESETS
from videocap.models.xcomposer2.weights import build
from videocap.video import layout

TEXT_BEFORE_IMAGE = 1  # BOS
TEXT_AFTER_IMAGE = 30  # about the chat text of the fast prompt; a pair's prompt with its previous caption is longer


def random_model(tiny: bool, device: torch.device, dtype: torch.dtype):
    """The model with random weights built in place (random_llava.fill_random)."""
    return fill_random(build(PRESETS["tiny" if tiny else "7b"], device, dtype), device)


def frames(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Smooth random frames of (width, height)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize(size, Image.BILINEAR))
            for _ in range(n)]


def workload(name: str, tiny: bool, vocab: int) -> dict:
    """An image, its hd_num, pixels, grid, and prompt ids / image mask shaped like the processor's."""
    size = (160, 90) if tiny else (1280, 720)
    if name == "fast":
        image, hd_num = layout.strip(frames(4 if tiny else 16, size, 0)), 16
    else:
        image, hd_num = layout.pair(*frames(2, size, 1)), 9
    pixels, grid = hd.prepare(image, hd_num)
    n_image = hd.num_image_tokens(*grid)
    g = torch.Generator().manual_seed(2)
    text = torch.randint(3, vocab - 2, (TEXT_AFTER_IMAGE if name == "fast" else 3 * TEXT_AFTER_IMAGE,), generator=g)
    ids = [1] + [0] * n_image + text.tolist()
    mask = [False] + [True] * n_image + [False] * len(text)
    return dict(name=name, image_size=image.size, hd_num=hd_num, grid=grid, tiles=pixels.shape[0], pixels=pixels,
                ids=ids, mask=mask, image_tokens=n_image)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_run(engine: Engine, w: dict, new_tokens: int, beams: int) -> tuple[float, list[int]]:
    request = Request(list(w["ids"]), SamplingParams(max_new_tokens=new_tokens, num_beams=beams),
                      image_mask=list(w["mask"]), images=ImageInput(w["pixels"], (w["grid"],)))
    t0 = time.perf_counter()
    final = None
    for out in engine.generate([request]):
        final = out
    seconds = time.perf_counter() - t0
    assert final is not None and final.finished and len(final.token_ids) == new_tokens, final
    return seconds, final.token_ids


@torch.inference_mode()
def eager_run(model, w: dict, new_tokens: int, beams: int, device: torch.device) -> tuple[float, list[int]]:
    dtype = next(model.parameters()).dtype
    layers, kv_heads, head_dim = model.kv_spec()
    sync(device)
    t0 = time.perf_counter()
    embeds = model.encode_images(w["pixels"].to(device, dtype), [w["grid"]])[0]
    n = len(w["ids"])
    length = n + new_tokens  # one cache block per sequence, as long as it will grow
    caches = [torch.empty(2, beams, length, kv_heads, head_dim, device=device, dtype=dtype) for _ in range(layers)]
    tables = torch.arange(beams, device=device)[:, None]
    ids = torch.tensor(w["ids"], device=device)
    meta = AttnMetadata((n,), torch.tensor([n], device=device), torch.arange(n, device=device), tables[:1], length,
                        max_context_len=n, context_lens_host=(n,))
    hidden = model(ids, torch.arange(n, device=device), meta, caches, embeds, torch.tensor(w["mask"], device=device))
    logits = model.compute_logits(hidden[-1:]).float()  # (1, vocab)
    for cache in caches:  # every beam starts from the prompt
        cache[:, 1:] = cache[:, :1]
    scores = torch.full((beams,), -math.inf, device=device)
    scores[0] = 0.0
    logits = logits.expand(beams, -1)
    out: list[list[int]] = [[] for _ in range(beams)]
    for step in range(new_tokens):
        if beams == 1:
            token = int(logits[0].argmax())
            out[0].append(token)
            tokens = [token]
        else:
            cand = (scores[:, None] + logits.log_softmax(-1)).view(-1)
            top = cand.topk(beams)
            parents = (top.indices // logits.shape[-1]).tolist()
            tokens = (top.indices % logits.shape[-1]).tolist()
            scores = top.values
            out = [out[p] + [t] for p, t in zip(parents, tokens)]
            if parents != list(range(beams)):
                index = torch.tensor(parents, device=device)
                for cache in caches:
                    cache.copy_(cache.index_select(1, index))
        if step == new_tokens - 1:
            break
        pos = n + step
        ctx = pos + 1
        meta = AttnMetadata((1,) * beams, torch.full((beams,), ctx, device=device),
                            torch.arange(beams, device=device) * length + pos, tables, length, max_context_len=ctx,
                            context_lens_host=(ctx,) * beams)
        hidden = model(torch.tensor(tokens, device=device), torch.full((beams,), pos, device=device), meta, caches)
        logits = model.compute_logits(hidden).float()
    sync(device)
    return time.perf_counter() - t0, out[0]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes on CPU (a dry run)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for xcomposer2_speed.json")
    p.add_argument("--new-tokens", type=int, default=None, help="forced new tokens (default 512; 4 with --tiny)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per cell (the fastest is kept)")
    args = p.parse_args(argv)
    tiny = args.tiny
    new_tokens = args.new_tokens or (4 if tiny else 512)
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    model = random_model(tiny, device, dtype)
    cfg = model.cfg
    loads = [workload(name, tiny, cfg.vocab_size) for name in ("fast", "pair")]
    t0 = time.perf_counter()
    engine = (Engine(model, max_cache_tokens=4 * 4096) if device.type == "cpu"
              else Engine(model, gpu_memory_fraction=0.6))
    engine_setup = time.perf_counter() - t0

    rows = []
    for w in loads:
        for beams in (1, 3):
            if device.type == "cuda":  # warm-up: Triton compiles, allocator, cuBLAS plans
                engine_run(engine, w, 8, beams)
                eager_run(model, w, 4, beams, device)
            e_s, e_tokens = min(engine_run(engine, w, new_tokens, beams) for _ in range(args.repeats))
            b_s, b_tokens = min(eager_run(model, w, new_tokens, beams, device) for _ in range(args.repeats))
            same = next((i for i, (a, b) in enumerate(zip(e_tokens, b_tokens)) if a != b), len(e_tokens))
            rows.append(dict(workload=w["name"], beams=beams, prompt_tokens=len(w["ids"]),
                             image_tokens=w["image_tokens"], tiles=w["tiles"], engine_s=e_s, eager_s=b_s,
                             speedup=b_s / e_s, agreeing_prefix=same))
    env = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
               date=datetime.date.today().isoformat(), commit=commit(), dtype=str(dtype).removeprefix("torch."))
    inputs = {w["name"]: dict(image_size=list(w["image_size"]), hd_num=w["hd_num"], grid=list(w["grid"]),
                              tiles=w["tiles"], image_tokens=w["image_tokens"], prompt_tokens=len(w["ids"]))
              for w in loads}
    result = dict(env=env, shapes="tiny" if tiny else "7b", new_tokens=new_tokens, engine_setup_s=engine_setup,
                  inputs=inputs, rows=rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xcomposer2_speed.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    return result


def table(r: dict) -> str:
    lines = [f"{r['env']['device']}, {r['env']['dtype']}, torch {r['env']['torch']}, {r['shapes']} shapes, "
             f"{r['new_tokens']} new tokens forced, commit {r['env']['commit']}, {r['env']['date']}", "",
             "| request | beams | prompt tokens (image) | videocap engine (s) | eager PyTorch loop (s) | speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    frames = "4-frame" if r["shapes"] == "tiny" else "16-frame"
    names = {"fast": f"fast caption: {frames} strip, hd_num 16", "pair": "sliding step: frame pair, hd_num 9"}
    for row in r["rows"]:
        lines.append(f"| {names[row['workload']]} | {row['beams']} | {row['prompt_tokens']} ({row['image_tokens']}) | "
                     f"{row['engine_s']:.2f} | {row['eager_s']:.2f} | {row['speedup']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
