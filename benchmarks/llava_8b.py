"""ShareGPT4Video-8B at its real shapes with random weights, on the GPU machine: faithfulness of videocap's bf16
logits against transformers, peak host memory while loading a checkpoint of the real size, and seconds per `ask`
(16-frame grid, 256 new tokens) next to transformers' `generate`.

Run as two processes so that the memory figure is a fresh process's own:
  python benchmarks/llava_8b.py reference --work DIR   # transformers: fp32 reference logits, bf16 logits and
                                                       # generate timing; writes a LLaVA-original bf16 checkpoint
  python benchmarks/llava_8b.py videocap --work DIR    # videocap: load (peak RSS), logits vs reference, ask timing
  python benchmarks/llava_8b.py report --work DIR      # the combined table (markdown) and a JSON summary
`--tiny` runs the same at toy sizes on CPU (a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
NEW_TOKENS = 256


def shapes(tiny: bool) -> tuple[dict, dict]:
    if tiny:
        text = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
    else:  # Llama-3-8B-Instruct and CLIP ViT-L/14-336, as Lin-Chen/sharegpt4video-8b
        text = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    text.update(rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=128000 % text["vocab_size"],
                eos_token_id=128009 % text["vocab_size"])
    vision.update(image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return text, vision


def grid_image(seed: int = 0) -> Image.Image:
    """A 16-frame grid of 1080p frames as videocap lays it out (1920x1096), from smooth random frames."""
    from videocap.video import layout

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(16):
        small = rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)
        frames.append(np.asarray(Image.fromarray(small).resize((1920, 1080), Image.BILINEAR)))
    return layout.grid(frames)


def prompt(n_image: int, vocab: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    """Token ids shaped like the llava_llama_3 prompt: ~40 tokens, the image, ~70 tokens (values random)."""
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(0, vocab, (40,), generator=g).tolist()
    after = torch.randint(0, vocab, (70,), generator=g).tolist()
    return before + [0] * n_image + after, [False] * 40 + [True] * n_image + [False] * 70


def errors(x: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (x.float() - ref).abs()
    return {"max_abs": d.max().item(), "mean_rel": (d.mean() / ref.abs().mean()).item()}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_reference(work: Path, tiny: bool) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    from videocap.models.llava_next import anyres

    device = "cpu" if tiny else "cuda"
    text, vision = shapes(tiny)
    image_token = text["vocab_size"] - 1
    cfg = LlavaNextConfig(
        text_config=LlamaConfig(**text), vision_config=CLIPVisionConfig(**vision), image_grid_pinpoints=PINPOINTS,
        image_token_index=image_token, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlavaNextForConditionalGeneration(cfg).eval()
    print(f"built the fp32 model in {time.perf_counter() - t0:.1f} s", flush=True)

    image = grid_image()
    pixels = anyres.process_anyres(image, PINPOINTS)
    n_image = anyres.image_token_count(image.size, PINPOINTS)
    ids, mask = prompt(n_image, text["vocab_size"] - 1)
    hf_ids = torch.tensor([[image_token if m else t for t, m in zip(ids, mask)]], device=device)
    w, h = image.size
    inputs = dict(input_ids=hf_ids, image_sizes=torch.tensor([[h, w]], device=device))

    with torch.inference_mode():
        ref = model(**inputs, pixel_values=pixels[None].to(device)).logits[0].float().cpu()
        to_bf16_keeping_rope(model)
        gc.collect()
        bf16 = model(**inputs, pixel_values=pixels[None].to(device, torch.bfloat16)).logits[0].float().cpu()
    torch.save({"ref": ref, "ids": ids, "mask": mask, "pixels": pixels, "size": image.size}, work / "reference.pt")
    result = {"prompt_tokens": len(ids), "image_tokens": n_image, "hf_bf16": errors(bf16, ref)}
    del ref, bf16

    save_llava_original(model, cfg, work / "ckpt")
    print("wrote the bf16 checkpoint", flush=True)

    times = []
    with torch.inference_mode():
        for _ in range(3):  # the first is a warm-up
            sync()
            t0 = time.perf_counter()
            out = model.generate(**inputs, pixel_values=pixels[None].to(device, torch.bfloat16), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
            sync()
            times.append(time.perf_counter() - t0)
    assert out.shape[1] - hf_ids.shape[1] == NEW_TOKENS
    result["hf_generate_s"] = times[1:]
    result["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result["torch"], result["transformers"] = torch.__version__, __import__("transformers").__version__
    (work / "reference.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def to_bf16_keeping_rope(model) -> None:
    """Cast to bf16 as `from_pretrained(dtype=torch.bfloat16)` leaves a model: the rotary inverse frequencies stay
    float32 (a plain `.to(bf16)` rounds them too, which alone makes transformers' logits several times worse)."""
    kept = [(m, name, buf.clone()) for m in model.modules() for name, buf in m._buffers.items()
            if buf is not None and "inv_freq" in name]
    model.to(torch.bfloat16)
    for module, name, buf in kept:
        module._buffers[name] = buf
    assert kept, "no rotary buffers found: transformers changed; check how its bf16 model keeps inv_freq"


def save_llava_original(model, cfg, out: Path, shards: int = 4) -> None:
    from safetensors.torch import save_file

    from videocap.models.llava_next.weights import LLAVA_HF_V5, LLAVA_ORIGINAL

    def rename(key):  # transformers 5 module names → the names Lin-Chen/sharegpt4video-8b ships
        return LLAVA_ORIGINAL.unrename(LLAVA_HF_V5.rename(key))

    out.mkdir(parents=True, exist_ok=True)
    state = [(rename(k), v) for k, v in model.state_dict().items()]
    total = sum(v.numel() * v.element_size() for _, v in state)
    shard, size, index, n = {}, 0, {}, 0
    for i, (k, v) in enumerate(state):
        shard[k] = v.detach().contiguous().cpu()
        size += v.numel() * v.element_size()
        if size >= total / shards or i == len(state) - 1:
            n += 1
            name = f"model-{n:05d}-of-{shards:05d}.safetensors"
            save_file(shard, out / name, metadata={"format": "pt"})
            index.update({key: name for key in shard})
            shard, size = {}, 0
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": index}))
    t = cfg.text_config
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "rope_theta": 500000.0, "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
        "hidden_act": "silu", "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336" if cfg.vision_config.hidden_size == 1024 else str(out / "clip"),
        "mm_hidden_size": cfg.vision_config.hidden_size, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "image_aspect_ratio": "anyres", "image_grid_pinpoints": PINPOINTS,
        "mm_patch_merge_type": "spatial_unpad", "torch_dtype": "bfloat16",
    }))
    if cfg.vision_config.hidden_size != 1024:
        cfg.vision_config.save_pretrained(out / "clip")


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_videocap(work: Path, tiny: bool) -> None:
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    if device == "cuda":
        torch.zeros(1, device=device)  # CUDA context first: its host memory is not the loader's
    from videocap.engine.engine import Engine
    from videocap.engine.request import ImageInput, Request, SamplingParams
    from videocap.models.llava_next.weights import load

    ckpt = work / "ckpt"
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    before = current_rss_gib()
    t0 = time.perf_counter()
    model = load(ckpt, device=device, dtype=dtype)
    sync()
    load_s = time.perf_counter() - t0
    result = {
        "checkpoint_gib": size / 2**30, "rss_before_load_gib": before, "peak_rss_gib": rss_gib(), "load_s": load_s,
    }
    print(json.dumps(result), flush=True)

    refs = torch.load(work / "reference.pt")
    ids, mask, pixels, img_size = refs["ids"], refs["mask"], refs["pixels"], tuple(refs["size"])
    engine = Engine(model, max_cache_tokens=8192)
    runner = engine.runner
    with torch.inference_mode():
        from videocap.models.layers.attention import AttnMetadata

        embeds = model.encode_images(pixels.to(device, dtype), [img_size])[0]
        n = len(ids)
        blocks = list(range((n + 15) // 16))
        meta = AttnMetadata((n,), torch.tensor([n], device=device), torch.arange(n, device=device),
                            torch.tensor([blocks], device=device), 16)
        hidden = model(torch.tensor(ids, device=device), torch.arange(n, device=device), meta, runner.kv_caches,
                       embeds, torch.tensor(mask, device=device))
        ours = model.compute_logits(hidden).float().cpu()
    result["videocap"] = errors(ours, refs["ref"])
    del ours, refs, hidden

    request = lambda: Request(  # noqa: E731
        list(ids), SamplingParams(max_new_tokens=NEW_TOKENS, stop_token_ids=()), image_mask=list(mask),
        images=ImageInput(pixels, (img_size,)),
    )
    times, outs = [], None
    for _ in range(3):  # the first is a warm-up
        sync()
        t0 = time.perf_counter()
        outs = engine.run(request())
        sync()
        times.append(time.perf_counter() - t0)
    assert len(outs.token_ids) == NEW_TOKENS
    result["videocap_ask_s"] = times[1:]
    result["timings"] = vars(outs.timings)
    result["video_side_s"] = video_side(work, tiny)
    (work / "videocap.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)


def video_side(work: Path, tiny: bool) -> dict:
    """What an `ask` adds before the engine: sample 16 frames of a 60 s 1080p H.264 clip (exact seeking), lay out
    the grid, tile and normalise it. The engine timings above start from those pixels."""
    from videocap.models.llava_next import anyres
    from videocap.video import Uniform16, layout, sample
    from videocap.video.encode import write_video

    seconds, size = (4, (320, 240)) if tiny else (60, (1920, 1080))
    path = work / "clip.mp4"
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(base).resize(size, Image.BILINEAR))
    frames = (np.roll(big, 4 * i, axis=1) for i in range(30 * seconds))
    write_video(path, frames, fps=30, options={"g": "60", "keyint_min": "60", "sc_threshold": "0", "preset": "ultrafast"})
    out = {}
    for _ in range(3):  # the last of three (warm file cache)
        t0 = time.perf_counter()
        sampled = sample(path, Uniform16())
        t1 = time.perf_counter()
        grid = layout.grid(sampled.images)
        t2 = time.perf_counter()
        anyres.process_anyres(grid, PINPOINTS)
        t3 = time.perf_counter()
        out = {"sample_16_frames": t1 - t0, "grid": t2 - t1, "anyres_pixels": t3 - t2, "grid_size": list(grid.size)}
    return out


def report(work: Path) -> None:
    ref = json.loads((work / "reference.json").read_text())
    ours = json.loads((work / "videocap.json").read_text())
    ratio_max = ours["videocap"]["max_abs"] / ref["hf_bf16"]["max_abs"]
    ratio_rel = ours["videocap"]["mean_rel"] / ref["hf_bf16"]["mean_rel"]
    hf_s, vc_s = min(ref["hf_generate_s"]), min(ours["videocap_ask_s"])
    print(f"device: {ref['device']}, torch {ref['torch']}, transformers {ref['transformers']}")
    print(f"prompt {ref['prompt_tokens']} tokens ({ref['image_tokens']} image), {NEW_TOKENS} new tokens")
    print("| | max abs err vs fp32 | mean rel err vs fp32 |\n| --- | --- | --- |")
    print(f"| transformers bf16 | {ref['hf_bf16']['max_abs']:.4f} | {ref['hf_bf16']['mean_rel']:.5f} |")
    print(f"| videocap bf16 | {ours['videocap']['max_abs']:.4f} | {ours['videocap']['mean_rel']:.5f} |")
    print(f"| ratio (target <= 1.5) | {ratio_max:.2f} | {ratio_rel:.2f} |")
    v = ours["video_side_s"]
    video_s = v["sample_16_frames"] + v["grid"] + v["anyres_pixels"]
    print(f"ask from pixels: transformers generate {hf_s:.2f} s, videocap {vc_s:.2f} s ({hf_s / vc_s:.2f}x); "
          f"prefill {ours['timings']['prefill']:.3f} s, decode {ours['timings']['decode_tokens_per_s']:.1f} tok/s")
    print(f"video side (60 s 1080p clip): sample {v['sample_16_frames']:.2f} s + grid {v['grid']:.2f} s + "
          f"tiles {v['anyres_pixels']:.2f} s = {video_s:.2f} s; whole ask ≈ {vc_s + video_s:.2f} s")
    print(f"load: {ours['checkpoint_gib']:.2f} GiB checkpoint, peak RSS {ours['peak_rss_gib']:.2f} GiB "
          f"({ours['rss_before_load_gib']:.2f} before loading), {ours['load_s']:.1f} s")
    print(json.dumps({"reference": ref, "videocap": ours}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["reference", "videocap", "report"])
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoint and intermediate results")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU: a dry run of this script")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    {"reference": lambda: run_reference(args.work, args.tiny), "videocap": lambda: run_videocap(args.work, args.tiny),
     "report": lambda: report(args.work)}[args.step]()


if __name__ == "__main__":
    main()
