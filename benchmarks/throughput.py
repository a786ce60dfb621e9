"""Fast-captioning throughput of videocap's engine for ShareGPT4Video-8B at its real shapes (random bf16 weights),
with transformers' `generate` and the hardware roofline beside it, all measured in one run (issue 6).

    python benchmarks/throughput.py --out DIR [--tiny] [--profile] [--requests 256] [--new-tokens 256]
                                    [--gpu-memory-fraction 0.9] [--eager] [STEP ...]

STEP (default: all four, in this order):
  roofline    measured bf16 matmul TFLOP/s and device copy bandwidth (see roofline.py for the formulas)
  baseline    transformers' LlavaNextForConditionalGeneration.generate, holding the same weights (shared
              memory): batch 1 (at most 2 videos, time-capped) and one batch of 32; freed before the engine
  single      one request alone through the engine (after a warm-up): time to first token from submission of
              the pre-processed pixels to the token on the host, decode tok/s; median of 3
  throughput  --requests distinct videos queued at once: videos/s from submission to the last token, with the
              engine's step statistics (decode batch sizes, prefill time share) and the roofline at that batch
--profile adds a torch.profiler pass over one prefill batch and some decode steps: DIR/profile.txt.

Inputs: distinct 16-frame grid images of 1080p frames as videocap lays them out (1920x1096), pre-processed on
the host by videocap's LlavaNextProcessor (anyres: base view + tiles); prompts shaped like the llava_llama_3
prompt (a shared 40-token system part, the image positions, 70 tokens distinct to each request); no stop ids,
exactly --new-tokens generated (asserted). The model is built on the GPU at once (meta → empty → random init in
place), no checkpoint. Writes DIR/throughput.json after every step (a timeout keeps what was measured) and prints
a markdown table for RESULTS.md. `--tiny`: toy sizes on CPU in seconds, a dry run (tests call it).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script: its sibling modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import roofline  # noqa: E402
from engine_probe import StepLog, profile_steps, stream  # noqa: E402
from grid_requests import SYSTEM_TOKENS, Inputs, eot_tokenizer, prepare_images  # noqa: E402
from random_llava import model_config, random_model, transformers_model  # noqa: E402

from videocap.engine.engine import Engine  # noqa: E402
from videocap.models.llava_next.processor import LlavaNextProcessor  # noqa: E402

STEPS = ("roofline", "baseline", "single", "throughput")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ---- measurements -------------------------------------------------------------------------------------------

def run_baseline(hf, inputs: Inputs, image_token: int, device, dtype, *, new_tokens: int, batch: int,
                 budget_s: float) -> dict:
    """transformers' `generate`, greedy, exactly `new_tokens` (min = max new tokens; `max_time` caps a call):
    a short warm-up, batch 1 on videos 0 and 1 (the second only inside half of `budget_s`), then one batch."""
    def generate(idx: list[int], tokens: int, max_time: float):
        ids = torch.tensor([[image_token if m else t for t, m in zip(inputs.prompt(i), inputs.masks[i])] for i in idx],
                           device=device)
        pixels = torch.stack([inputs.images[i][0] for i in idx]).to(device, dtype)  # (B, tiles, 3, S, S)
        sizes = torch.tensor([[inputs.images[i][1][1], inputs.images[i][1][0]] for i in idx], device=device)  # (h, w)
        roofline.sync(device)
        t0 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_sizes=sizes,
                          max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0,
                          max_time=max_time)
        roofline.sync(device)
        return time.perf_counter() - t0, out[:, ids.shape[1]:].tolist()

    result: dict = {"attn_implementation": getattr(hf.config, "_attn_implementation", None)}
    generate([0], 2, 60)  # warm-up
    log("baseline: warm-up done")
    start, runs, tokens = time.perf_counter(), [], []
    for i in range(2):  # batch 1: at most 2 videos, and no second one past half the budget
        if runs and time.perf_counter() - start > budget_s / 2:
            break
        seconds, (made,) = generate([i], new_tokens, budget_s)
        runs.append(seconds)
        tokens.append(made)
        log(f"baseline batch 1: {seconds:.2f} s for {len(made)} tokens")
    s = statistics.median(runs)
    result["batch1"] = {"videos": len(runs), "runs_s": runs, "s_per_video": s, "tok_s": new_tokens / s,
                        "complete": all(len(t) == new_tokens for t in tokens)}
    result["tokens"] = tokens  # greedy answers to videos 0, 1: compared with the engine's (same weights)
    n = batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds, made = generate(list(range(n)), new_tokens, 2 * budget_s)
        log(f"baseline batch {n}: {seconds:.2f} s for {len(made[0])} tokens each")
        result["batch32"] = {"batch": n, "s": seconds, "s_per_video": seconds / n, "videos_per_s": n / seconds,
                             "complete": all(len(t) == new_tokens for t in made)}
        if device.type == "cuda":
            result["batch32"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError as e:  # recorded, not fatal: the engine figures still come
        log(f"baseline batch {n}: out of memory")
        result["batch32"] = {"batch": n, "error": f"out of memory: {str(e)[:200]}"}
    return result


def run_single(engine, inputs: Inputs, first: int, repeats: int) -> dict:
    """One request at a time on videos `first`.. (the first a warm-up): medians of `repeats` runs."""
    stream(engine, [inputs.request(first)])  # warm-up
    runs = []
    for k in range(repeats):
        r = stream(engine, [inputs.request(first + 1 + k)])
        (rid,) = r["done"]
        ttft, end = r["first"][rid], r["done"][rid]
        runs.append({"ttft_s": ttft, "decode_tok_s": (inputs.new_tokens - 1) / (end - ttft), "s_per_video": end,
                     "engine_timings": r["timings"][rid]})
        log(f"single: ttft {1e3 * ttft:.1f} ms, decode {runs[-1]['decode_tok_s']:.1f} tok/s, {end:.2f} s")
    med = {k: statistics.median(run[k] for run in runs) for k in ("ttft_s", "decode_tok_s", "s_per_video")}
    return {**med, "runs": runs}


def run_throughput(engine, inputs: Inputs, n: int, steps: StepLog, deadline: float) -> dict:
    """Videos 0..n-1 submitted at once; stopped at `deadline` (then the figures are for the videos finished)."""
    steps.rows.clear()
    requests = [inputs.request(i) for i in range(n)]
    r = stream(engine, requests, deadline, progress=log)
    answers = [r["tokens"].get(req.request_id) for req in requests[:2]]
    finished = len(r["done"])
    last = max(r["done"].values(), default=r["elapsed"])
    seconds = r["elapsed"] if r["timed_out"] else last
    ttfts = sorted(r["first"].values())
    return {
        "requests": n, "finished": finished, "timed_out": r["timed_out"], "seconds": seconds,
        "videos_per_s": finished / seconds, "s_per_video": seconds / max(finished, 1),
        "output_tok_s": finished * inputs.new_tokens / seconds,
        "first_token_s": {"min": ttfts[0], "median": statistics.median(ttfts), "max": ttfts[-1]} if ttfts else None,
        "engine_steps": steps.summary(), "answers": answers,
    }


# ---- report -------------------------------------------------------------------------------------------------

def markdown(res: dict) -> str:
    """The RESULTS.md paragraph: the run's setting, the table, engine statistics and the roofline's inputs."""
    env, inp = res["env"], res["inputs"]
    hw, base, one, tp = res.get("hardware"), res.get("baseline", {}), res.get("single"), res.get("throughput")
    roof = res.get("roofline", {})

    def fmt(value, spec: str = "{:.2f}") -> str:
        return "—" if value is None else spec.format(value)

    def g(d, *keys):  # d[k1][k2]..., None where any level is missing
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    lines = [
        f"**{env['date']}, {env['device']}** (torch {env['torch']}, transformers {env['transformers']}, code at "
        f"{env['commit']}; engine options {json.dumps(env['engine_options'])}). {inp['requests']} distinct 16-frame "
        f"grids {inp['grid_size'][0]}x{inp['grid_size'][1]}, {inp['tiles']} tiles, prompt {inp['prompt_tokens']} "
        f"tokens ({inp['image_tokens']} image), {inp['new_tokens']} new tokens forced, random {inp['dtype']} weights.",
        "",
        "| measure | videocap engine | transformers `generate` | roofline | engine / roofline |",
        "| --- | --- | --- | --- | --- |",
    ]
    r_tp = roof.get("at_batch_used") or roof.get("at_max_batch")  # the batch used, else the largest that fits
    tp_v = g(tp, "videos_per_s")
    partial = f" ({tp['finished']}/{tp['requests']} done, time limit)" if tp and tp["timed_out"] else ""
    lines.append(
        f"| throughput, {inp['requests']} queued (videos/s) | **{fmt(tp_v)}**{partial} ({fmt(g(tp, 's_per_video'), '{:.3f}')} s/video) "
        f"| batch {fmt(g(base, 'batch32', 'batch'), '{}')}: {fmt(g(base, 'batch32', 'videos_per_s'))} "
        f"({fmt(g(base, 'batch32', 's_per_video'))} s/video) | {fmt(g(r_tp, 'videos_per_s'))} "
        f"| {fmt(tp_v / r_tp['videos_per_s'] if tp_v and r_tp else None, '{:.0%}')} |")
    r1 = roof.get("single")
    lines.append(f"| one request: time to first token | {fmt(g(one, 'ttft_s') and 1e3 * one['ttft_s'], '{:.0f} ms')} | — "
                 f"| {fmt(g(r1, 'ttft_s') and 1e3 * r1['ttft_s'], '{:.0f} ms')} "
                 f"| {fmt(one and r1 and r1['ttft_s'] / one['ttft_s'], '{:.0%}')} |")
    lines.append(f"| one request: decode (tok/s) | {fmt(g(one, 'decode_tok_s'), '{:.1f}')} "
                 f"| batch 1: {fmt(g(base, 'batch1', 'tok_s'), '{:.1f}')} (whole answer) "
                 f"| {fmt(g(r1, 'decode_tok_s'), '{:.0f}')} "
                 f"| {fmt(one and r1 and one['decode_tok_s'] / r1['decode_tok_s'], '{:.0%}')} |")
    lines.append(f"| one request: seconds per video | {fmt(g(one, 's_per_video'))} "
                 f"| batch 1: {fmt(g(base, 'batch1', 's_per_video'))} ({fmt(g(base, 'batch1', 'videos'), '{}')} videos) "
                 f"| {fmt(g(r1, 's_per_video'))} | |")
    st = g(tp, "engine_steps")
    lines += ["", f"transformers: {base.get('attn_implementation')} attention, batch {fmt(g(base, 'batch32', 'batch'), '{}')} "
              f"peak {fmt(g(base, 'batch32', 'peak_gib'), '{:.1f}')} GiB, greedy answers equal to the engine's for "
              f"the first {fmt(g(tp, 'agree_with_transformers'), '{}')} tokens (videos 0, 1); engine: ready in "
              f"{fmt(env.get('engine_init_s'), '{:.1f}')} s, KV cache {fmt(env.get('cache_tokens'), '{:,}')} tokens."]
    if st:
        lines += ["", f"Engine steps in the throughput run: {st['steps']} ({st['prefill_steps']} prefill, mean "
                  f"{st['mean_prefill_batch']:.1f} requests; {st['decode_steps']} decode, batch mean "
                  f"{st['mean_decode_batch']:.1f} / median {st['median_decode_batch']:.0f} / max "
                  f"{st['max_decode_batch']}, {st['mean_decode_step_ms']:.1f} ms a step); prefill "
                  f"{st['prefill_share']:.0%} of step time ({st['prefill_s']:.1f} s prefill, {st['decode_s']:.1f} s "
                  f"decode); prefill tokens computed {st['prefill_tokens_computed']:,} for "
                  f"{inp['requests'] * inp['prompt_tokens']:,} submitted; output {tp['output_tok_s']:.0f} tok/s; "
                  f"first token after {tp['first_token_s']['median']:.1f} s median."]
    if hw:
        s = roof["shapes"]
        lines += ["", f"Roofline inputs: measured {hw['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s ({inp['dtype']} "
                  f"{hw['matmul_n']}³ matmuls) and {hw['copy_bytes_per_s'] / 1e12:.2f} TB/s (copy of "
                  f"{hw['copy_bytes'] / 2**30:.0f} GiB, read + write); prefill {roof['prefill_flops_per_video'] / 1e12:.1f} "
                  f"TFLOP + vision {roof['vision_flops_per_video'] / 1e12:.2f} TFLOP a video; decode step reads "
                  f"W = {s['W_bytes'] / 1e9:.2f} GB of weights + {s['kv_bytes_per_token'] / 1024:.0f} KiB of KV per "
                  f"context token. Roofline at the batch the engine used: "
                  f"{fmt(g(roof, 'at_batch_used', 'videos_per_s'))} videos/s (mean decode batch "
                  f"{fmt(g(roof, 'at_batch_used', 'mean_decode_batch'), '{:.1f}')}); at the largest batch the "
                  f"KV cache holds ({fmt(g(roof, 'max_batch'), '{}')}): {fmt(g(roof, 'at_max_batch', 'videos_per_s'))} "
                  "videos/s. Formulas (roofline.py):", ""]
        lines += [f"- {k} = {v}" for k, v in roofline.FORMULAS.items()]
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------------

def free_cuda(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", metavar="STEP", help=f"any of {', '.join(STEPS)} (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU: a dry run in seconds")
    parser.add_argument("--profile", action="store_true", help="also profile engine steps → OUT/profile.txt")
    parser.add_argument("--requests", type=int, help="videos queued in the throughput run (default 256; tiny 2)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per video (default 256; tiny 6)")
    parser.add_argument("--gpu-memory-fraction", type=float, default=0.9)
    parser.add_argument("--eager", action="store_true", help="Engine(eager=True), where the engine has it")
    parser.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                        help="another Engine keyword (VALUE read as JSON, else a string), e.g. max_num_seqs=128")
    parser.add_argument("--baseline-batch", type=int, default=32)
    parser.add_argument("--budget", type=float, default=450, help="seconds for the whole run after imports; the "
                        "throughput run stops at what is left (default 450)")
    args = parser.parse_args(argv)
    if set(args.steps) - set(STEPS):
        parser.error(f"unknown steps {sorted(set(args.steps) - set(STEPS))}; choose from {', '.join(STEPS)}")
    args.steps = [s for s in STEPS if s in args.steps] if args.steps else list(STEPS)
    args.requests = args.requests or (2 if args.tiny else 256)
    args.new_tokens = args.new_tokens or (6 if args.tiny else 256)
    accepted = inspect.signature(Engine).parameters
    options = {"gpu_memory_fraction": args.gpu_memory_fraction}
    if args.eager and "eager" in accepted:
        options["eager"] = True
    elif args.eager:
        log("--eager: this Engine has no `eager` option; running its default")
    for option in args.engine_option:
        key, _, value = option.partition("=")
        if key not in accepted:
            parser.error(f"--engine-option {key}: Engine takes {', '.join(list(accepted)[1:])}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return args, options


def main(argv=None) -> dict:
    args, engine_options = parse_args(argv)
    threads = torch.get_num_threads()
    if args.tiny:  # toy matmuls: one thread is as fast, and immune to a busy machine's thread contention
        torch.set_num_threads(1)
    try:
        return run(args, engine_options)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, engine_options: dict) -> dict:
    steps, tiny, n, new_tokens = args.steps, args.tiny, args.requests, args.new_tokens
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    deadline = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {}

    def save(step: str | None = None, value=None) -> None:
        if step is not None:
            res[step] = value
        (args.out / "throughput.json").write_text(json.dumps(res, indent=1, default=str))

    cfg = model_config(tiny)
    processor = LlavaNextProcessor(cfg, eot_tokenizer(cfg.eos_token_ids[0]))
    singles = 1 if tiny else 3
    log(f"preparing {n + singles + 1} distinct grid images")
    images = prepare_images(processor, n + singles + 1, 1 if tiny else min(16, os.cpu_count() or 1))
    inputs = Inputs(images, cfg.text.vocab_size, processor.pad_id, new_tokens)
    pixels, size, n_image = images[0]
    assert all(count == n_image and tuple(p.shape) == tuple(pixels.shape) for p, _, count in images)
    prompt_tokens, tiles = len(inputs.prompt(0)), pixels.shape[0]
    log(f"{len(images)} grids {size[0]}x{size[1]}: {tiles} tiles, prompt {prompt_tokens} tokens of which "
        f"{n_image} image tokens, {new_tokens} new tokens")

    import transformers

    res["env"] = {
        "date": date.today().isoformat(), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "commit": commit(),
        "engine_options": engine_options, "eager_requested": args.eager, "steps": steps, "tiny": tiny,
    }
    res["inputs"] = {"requests": n, "grid_size": list(size), "tiles": tiles, "prompt_tokens": prompt_tokens,
                     "image_tokens": n_image, "system_tokens_shared": SYSTEM_TOKENS, "new_tokens": new_tokens,
                     "dtype": str(dtype).removeprefix("torch.")}
    save()

    if "roofline" in steps:
        hw = roofline.measure_hardware(device, tiny)
        log(f"roofline: {hw.matmul_flops_per_s / 1e12:.1f} TFLOP/s matmul, {hw.copy_bytes_per_s / 1e12:.2f} TB/s copy")
        save("hardware", vars(hw))
        free_cuda(device)

    t = time.perf_counter()
    model = random_model(cfg, device, dtype)
    roofline.sync(device)
    log(f"built videocap's model in {time.perf_counter() - t:.1f} s")

    if "baseline" in steps:
        hf = transformers_model(model, tiny, device)
        log("transformers' model holds videocap's weight tensors")
        save("baseline", run_baseline(hf, inputs, cfg.text.vocab_size - 1, device, dtype, new_tokens=new_tokens,
                                      batch=min(args.baseline_batch, n), budget_s=30 if tiny else 60))
        del hf

    engine = steplog = None
    if {"single", "throughput"} & set(steps) or args.profile:
        free_cuda(device)  # the engine sizes its KV cache from the free memory
        if device.type == "cuda":
            log(f"before the engine: {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated")
        t = time.perf_counter()
        engine = Engine(model, **engine_options)
        res["env"]["engine_init_s"] = time.perf_counter() - t
        res["env"]["cache_tokens"] = getattr(getattr(engine, "runner", None), "cache_tokens", None)
        res["env"]["max_num_seqs"] = getattr(getattr(engine, "scheduler", None), "max_num_seqs", None)
        log(f"engine ready in {res['env']['engine_init_s']:.1f} s, KV cache {res['env']['cache_tokens']} tokens")
        steplog = StepLog(engine)
    if "single" in steps:
        save("single", run_single(engine, inputs, n, singles))
    if "throughput" in steps:
        limit = max(30.0, deadline - (60 if args.profile and not tiny else 5) - time.perf_counter())
        log(f"throughput: {n} requests submitted at once (time limit {limit:.0f} s)")
        tp = run_throughput(engine, inputs, n, steplog, time.perf_counter() + limit)
        log(f"throughput: {tp['finished']}/{n} videos in {tp['seconds']:.1f} s = {tp['videos_per_s']:.2f} videos/s")
        answers, hf_answers = tp.pop("answers"), (res.get("baseline") or {}).pop("tokens", None)
        if hf_answers:  # greedy, same weights: the answers agree up to the first near-tie that bf16 rounds apart
            tp["agree_with_transformers"] = [common_prefix(a, b) for a, b in zip(hf_answers, answers) if b]
            log(f"engine and transformers agree on the first {tp['agree_with_transformers']} tokens")
        save("throughput", tp)

    if "hardware" in res:
        save("roofline", roofline_figures(res, roofline.Shapes.of(cfg, elem=dtype.itemsize), steplog))
    if args.profile:
        st = (res.get("throughput") or {}).get("engine_steps") or {}
        batch = min(int(st.get("median_decode_batch") or 64), n)
        log(f"profile: one prefill batch, then decode at batch {batch}")
        warm, active = 2, (4 if tiny else 8)
        prefill = [inputs.request(i, new_tokens=1, system=1) for i in range(1 if tiny else 4)]  # under the
        # scheduler's prefill token budget (16,384): one batch; another system part, so no prefix-cache hits
        decode = [inputs.request(i, new_tokens=warm + active + 16, system=2) for i in range(batch)]
        text = profile_steps(engine, prefill, decode, warm=warm, active=active, device=device)
        (args.out / "profile.txt").write_text(text)
        log(f"profile written to {args.out / 'profile.txt'}")
    print(markdown(res), flush=True)
    log(f"done; {args.out / 'throughput.json'}")
    return res


def roofline_figures(res: dict, shapes: roofline.Shapes, steplog: StepLog | None) -> dict:
    hw, inp = roofline.Hardware(**res["hardware"]), res["inputs"]
    n, prompt_tokens, new_tokens = inp["requests"], inp["prompt_tokens"], inp["new_tokens"]
    cache = res["env"].get("cache_tokens")
    max_batch = min(n, cache // (prompt_tokens + new_tokens), res["env"].get("max_num_seqs") or n) if cache else None
    common = dict(videos=n, prompt_tokens=prompt_tokens, tiles=inp["tiles"], new_tokens=new_tokens)
    at_max = roofline.roofline(shapes, hw, **common, max_batch=max_batch)
    roof = {"shapes": shapes.inputs(), "formulas": roofline.FORMULAS, "max_batch": max_batch, "at_max_batch": at_max,
            "single": roofline.single(shapes, hw, prompt_tokens=prompt_tokens, tiles=inp["tiles"], new_tokens=new_tokens),
            "prefill_flops_per_video": at_max["prefill_flops_per_video"],
            "vision_flops_per_video": at_max["vision_flops_per_video"]}
    tp = res.get("throughput")
    if tp and not tp["timed_out"] and steplog is not None and steplog.decode_steps():
        roof["at_batch_used"] = roofline.roofline(shapes, hw, **common, decode_steps=steplog.decode_steps())
    return roof


if __name__ == "__main__":
    main()
