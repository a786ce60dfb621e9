"""`videocap batch`: caption many videos into a resumable JSONL journal. A thin client of videocap.batch: options
are read and checked (inputs listed, prompts parsed) before any model loads."""

from __future__ import annotations

import argparse

BATCH_EPILOG = """\
input: a directory (searched recursively for video files), a glob ('clips/**/*.mp4', quoted), a text file of
paths (one a line), or a manifest: JSONL or CSV with a 'path' column and optional 'id', 'start', 'end' (seconds)
and 'prompt' (replaces the mode's prompt for that video, as --prompt). Relative paths in a list or manifest are
taken from its folder. A video's id is the manifest's 'id', else its path: the journal resumes by id.

journal (--out): one JSON record per video, appended as each finishes: id, path, mode, model, caption, segments,
frame timestamps, tokens, timings; or 'error' and 'reason' ("corrupt", "too long", ...). Rerunning the same
command skips every id in the journal (--retry-failed redoes the errors). Records are written whole: a killed job
loses nothing written, and a line cut short by a crash is dropped on the next run. Ctrl-C stops feeding new
videos and lets those in the engine finish; a second Ctrl-C leaves them for the next run.

scale: decode workers (processes) decode and lay out videos ahead of the engine; --gpus N runs one engine per GPU
over one shared queue; --shard i/n takes a deterministic 1/n of the input (by a hash of the id) for manual
multi-node runs; --ray [ADDRESS] runs decode tasks and one engine actor per GPU on a Ray cluster.

examples:
  videocap batch videos/ --out captions.jsonl
  videocap batch manifest.csv --out captions.jsonl --gpus 8 --export csv
  videocap batch 'clips/**/*.mp4' --out part3.jsonl --shard 3/16 --max-duration 600
  videocap batch videos.txt --out captions.jsonl --ray auto
"""


def add_batch_command(commands) -> None:
    """Register `videocap batch`."""
    from videocap.cli import _positive_float, _positive_int
    from videocap.cli_caption import _add_model_options, _add_prompt_options
    from videocap.cli_models import MODEL_EPILOG

    p = commands.add_parser(
        "batch", help="caption many videos into a resumable JSONL journal (parallel decoding, multi-GPU, Ray)",
        description="Caption every video of INPUT with one captioning mode and append one JSON record per video "
        "to --out as it completes. Prints a summary at the end: done, failed by reason, skipped, videos/hour, "
        "and how busy the engines were.",
        epilog=BATCH_EPILOG + "\n" + MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="directory, glob, text file of paths, or JSONL/CSV manifest")
    p.add_argument("--out", "-o", required=True, metavar="JOURNAL", help="the JSONL journal (created or resumed)")
    p.add_argument("--mode", choices=["fast", "slide"], default="fast", help="captioning mode (default: fast)")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="N",
                   help="fast: frames in the layout (default: 16)")
    p.add_argument("--seconds", type=_positive_float, default=2.0, metavar="S",
                   help="slide: one frame every S seconds (default: 2)")
    p.add_argument("--seek", choices=["exact", "keyframe"], default="exact",
                   help="decode exact frames or the nearest codec keyframes (faster; default: exact)")
    p.add_argument("--max-side", type=_positive_int, default=None, metavar="PX",
                   help="downscale frames to at most PX while decoding (default: full size)")
    p.add_argument("--allow-partial", action="store_true",
                   help="caption the decodable part of truncated or damaged videos instead of failing them")
    p.add_argument("--max-duration", type=_positive_float, default=None, metavar="S",
                   help="videos (or windows) longer than S seconds become 'too long' error records")
    _add_prompt_options(p, slide=True)
    _add_model_options(p, image=True)
    p.add_argument("--decode-workers", type=_positive_int, default=None, metavar="N",
                   help="decode processes (default: about one video in flight per CPU core, less one core per "
                   "engine: one process per core, or with --decode-device cuda processes of --decode-threads each, "
                   "at least one per decoding GPU)")
    p.add_argument("--decode-device", default="cpu", metavar="DEVICE",
                   help="fast mode: where videos are decoded: cpu (FFmpeg's decoders on the decode workers' cores), "
                   "cuda (the engines' GPUs' video decoders, NVDEC, the same pixels; each decode worker then holds "
                   "a CUDA context on the GPU: lower --gpu-memory-fraction to leave them room; a video the GPU fails "
                   "on is decoded again on the CPU) or cuda:N (default: cpu). Run it under CUDA MPS "
                   "(nvidia-cuda-mps-control -d): otherwise the decoders' contexts take turns on the GPU with the "
                   "engine's and slow it")
    p.add_argument("--decode-threads", type=_positive_int, default=None, metavar="T",
                   help="videos each decode process decodes at once, in threads (default: 1; 8 with --decode-device "
                   "cuda unless --decode-workers is given: a few processes of several threads hold fewer CUDA "
                   "contexts than a process per video)")
    p.add_argument("--prefetch", type=_positive_int, default=None, metavar="N",
                   help="decoded videos that may wait for the engine (default: 2 per video in flight, at least 8)")
    p.add_argument("--gpus", type=_positive_int, default=1, metavar="N",
                   help="engine processes, one per GPU (cuda:0..N-1), over one shared queue; with --device cpu, "
                   "N engines on the CPU (default: 1, in this process)")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="caption only shard I of N (0-based), split by a hash of each id")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (ADDRESS, or 'auto'/none: the running cluster, else a local one): decode "
                   "tasks on CPU workers, one engine actor per GPU (--gpus N actors)")
    p.add_argument("--retry-failed", action="store_true", help="caption again the videos whose record is an error")
    p.add_argument("--export", action="append", choices=["parquet", "csv"], default=[],
                   help="at the end, also write the journal as JOURNAL.parquet (every record; needs pyarrow) or "
                   "JOURNAL.csv ('path,text' of the captioned videos); repeat for both")
    p.set_defaults(run=run_batch_command)


def run_batch_command(args: argparse.Namespace) -> int:
    from videocap.batch import BatchConfig, LoadSpec, run_batch
    from videocap.batch.engine_loop import TaskSpec
    from videocap.cli_caption import check_mode_prompts
    from videocap.cli_models import generation_kwargs
    from videocap.errors import VideocapError
    from videocap.video import SeekMode

    if args.mode == "slide" and args.frames is not None:
        raise VideocapError("--frames is for --mode fast; the slide mode samples a frame every --seconds S")
    check_mode_prompts(args)
    load = LoadSpec(args.model, args.device, args.dtype, args.allow_pickle, args.image_view,
                    args.gpu_memory_fraction, args.eager)
    task = TaskSpec(args.mode, args.instruction, args.prompt, args.first_prompt, args.summary_prompt,
                    tuple(generation_kwargs(args).items()))
    config = BatchConfig(
        args.input, args.out, load, task, args.frames, args.seconds, SeekMode(args.seek), args.max_side,
        args.allow_partial, args.max_duration, args.decode_workers, args.prefetch, args.retry_failed, args.shard,
        args.gpus, args.ray, tuple(dict.fromkeys(args.export)), args.quiet, decode_device=args.decode_device,
        decode_threads=args.decode_threads,
    )
    summary = run_batch(config)  # a missing input or an unusable journal fails before the model loads
    print(summary.text(), flush=True)
    return 130 if summary.interrupted else 0


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"I/N needs N >= 1 and 0 <= I < N, got {text}")
    return i, n
