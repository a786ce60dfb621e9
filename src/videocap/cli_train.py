"""`videocap train`: synthetic datasets (`synth`), training runs (`run`) and the tiny model's evaluation (`eval`).
Thin clients of videocap.train."""

from __future__ import annotations

import argparse
import json

RUN_EPILOG = """\
what a run writes in --out:
  model/      the llava-hf checkpoint (config.json, model.safetensors, tokenizer.json, ...), every --save-every
              steps and at the end: `videocap caption VIDEO --model OUT/model`
  state.pt    weights, optimizer and step: `--resume` continues the run where it stopped (Ctrl-C saves it)
  log.jsonl   loss, learning rate and examples/s every --log-every steps
examples:
  videocap train run --out runs/tiny --steps 3000 --workers 8            # the tiny model from scratch
  videocap train run --out runs/tiny --resume                             # continue after an interruption
  videocap train run --out runs/ft --init tiny --pool 40000 --workers 15 --steps 100000 --time-budget 180
                                      # render 40k examples once, then epochs over them for 180 s
  videocap train synth --out data --n 500 && \\
  videocap train run --out runs/ft --records data/records.jsonl --init runs/tiny/model --lora-rank 8"""


def add_train_commands(commands) -> None:
    from videocap.cli import _nonnegative_int, _positive_float, _positive_int

    train = commands.add_parser(
        "train", help="synthetic videos, training runs and evaluation of videocap's own (tiny) model",
        description="Make synthetic shapes datasets, train LLaVA-NeXT models on them (or on any ShareGPT4Video-format "
        "records) and evaluate the tiny model on its held-out protocol.")
    sub = train.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True,
                               help="synth (a dataset), run (training) or eval (the tiny model's protocol)")

    synth = sub.add_parser(
        "synth", help="write N synthetic clips and their ShareGPT4Video records",
        description="Write N generated clips (MP4) under DIR/videos/ and their records (detailed caption, "
        "per-keyframe captions with timestamps, summary, text-to-video prompt, QA, facts) to DIR/records.jsonl. "
        "Clip k is the same on every machine (seed = --seed + k).")
    synth.add_argument("--out", required=True, metavar="DIR", help="dataset directory (created if missing)")
    synth.add_argument("--n", type=_positive_int, required=True, help="number of clips")
    synth.add_argument("--seed", type=_nonnegative_int, default=0, help="first clip's seed (default: 0)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=run_synth)

    run = sub.add_parser(
        "run", help="train (or continue training) a model",
        description="Train a LLaVA-NeXT model on every captioning mode (fast, first frame, frame pair, summary, "
        "re-caption) and on questions, through the same prompts and image processing inference uses. From "
        "scratch (the tiny preset, with a tokenizer trained from the synthetic text) or from --init MODEL (a "
        "llava-hf checkpoint), fully or with LoRA (--lora-rank). Data: the synthetic generator, rendered on the "
        "fly (default), or --records FILE. bf16 autocast on CUDA, fp32 on the CPU.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--out", required=True, metavar="DIR", help="run directory")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its state.pt")
    run.add_argument("--steps", type=_positive_int, default=3000, help="optimizer steps (default: 3000)")
    run.add_argument("--batch-size", type=_positive_int, default=32, help="examples per step (default: 32)")
    run.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate (default: 1e-3; ~1e-4 for LoRA)")
    run.add_argument("--warmup", type=_nonnegative_int, default=100, help="linear warm-up steps (default: 100)")
    run.add_argument("--save-every", type=_positive_int, default=500, metavar="N", help="checkpoint every N steps")
    run.add_argument("--log-every", type=_positive_int, default=10, metavar="N", help="log the loss every N steps")
    run.add_argument("--workers", type=_nonnegative_int, default=0, help="data worker processes (default: 0, in-process)")
    run.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    run.add_argument("--init", metavar="MODEL", help="start from this llava-hf checkpoint (id, alias or folder)")
    run.add_argument("--lora-rank", type=_nonnegative_int, default=0, metavar="R", help="train LoRA adapters of rank R "
                     "on the decoder (with --init); merged into the saved weights")
    run.add_argument("--lora-alpha", type=_positive_float, default=None, metavar="A", help="LoRA scale numerator (default 2R)")
    run.add_argument("--records", metavar="FILE", help="ShareGPT4Video-format records (JSONL/JSON) with videos "
                     "instead of the synthetic generator")
    run.add_argument("--time-budget", type=_positive_float, default=None, metavar="S",
                     help="stop after S seconds, the learning-rate schedule compressed into them")
    run.add_argument("--save-dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
                     help="dtype of model.safetensors (default: bf16)")
    run.add_argument("--preset", choices=["tiny", "tiny-hd", "debug"], default="tiny",
                     help="architecture when training from scratch (default: tiny; tiny-hd: the same model with "
                     "pinpoints up to 6x6 tiles, so each frame of the grid gets 2.25x the patches; debug: a toy "
                     "for tests)")
    run.add_argument("--pool", type=_nonnegative_int, default=0, metavar="N",
                     help="render N examples once (in parallel over --workers) and train over them in shuffled "
                     "epochs at the GPU's pace (default: 0, fresh examples every step); --resume renders the same "
                     "pool again")
    run.add_argument("--seed", type=_nonnegative_int, default=0, help="initialisation seed (default: 0)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(run=run_train)

    ev = sub.add_parser(
        "eval", help="the tiny model's evaluation: facts in fast/slide captions, QA accuracy",
        description="Encode the protocol's held-out clips to MP4, caption them through the normal inference path "
        "(fast and slide) and ask the QA questions, then score the captions' facts (background, objects, events) "
        "by precision and recall and the events' order, and the answers by accuracy.")
    ev.add_argument("--model", default="tiny", help="model to evaluate (default: tiny, the bundled model)")
    ev.add_argument("--n", type=_positive_int, default=200, help="clips (default: 200, the protocol)")
    ev.add_argument("--modes", default="fast,slide,qa", help="comma-separated subset of fast,slide,qa")
    ev.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    ev.add_argument("--details", metavar="FILE", help="write each clip's facts, captions and answers (JSONL)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(run=run_eval)


def run_synth(args: argparse.Namespace) -> int:
    from videocap.train.synthetic import write_dataset

    path = write_dataset(args.out, args.n, first_seed=args.seed, progress=not args.quiet)
    print(path)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from videocap.train.loop import TrainSettings, train

    settings = TrainSettings(
        out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        save_every=args.save_every, log_every=args.log_every, device=args.device, workers=args.workers,
        seed=args.seed, init=args.init, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, records=args.records,
        time_budget=args.time_budget, save_dtype=args.save_dtype, preset=args.preset, pool=args.pool)
    print(json.dumps(train(settings, resume=args.resume, progress=not args.quiet)))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from videocap.errors import VideocapError
    from videocap.train.evaluation import MODES, evaluate, format_result

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise VideocapError(f"--modes takes a comma-separated subset of {','.join(MODES)}, got {args.modes!r}")
    result = evaluate(args.model, n=args.n, modes=modes, device=args.device, progress=not args.quiet,
                      details=args.details)
    print(json.dumps(result) if args.json else format_result(result))
    return 0
