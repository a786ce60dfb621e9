"""The captioning commands of the `videocap` CLI: `caption`, `summarize`, `recaption`. Thin clients of
videocap.tasks.captioning; every input is read and checked (videos planned, files parsed) before the model loads.
"""

from __future__ import annotations

import argparse
import json
import sys

from videocap.cli_models import (
    DEFAULT_MODEL, MODEL_EPILOG, add_engine_options, add_generation_options, generation_kwargs, load_from_args,
)

CAPTION_EPILOG = """\
modes:
  fast   one request: --frames N frames (default 16, uniform over the video or window) in the model's layout
         (ShareGPT4Video-8B: its grid). Cost does not grow with the video's length.
  slide  a frame every --seconds S (default 2): the first frame's caption, then what happened between each pair
         of adjacent frames (given the caption before), then a summary of them all, hierarchical when they
         outgrow the model's context. Frames are decoded as needed: two at a time.
  --frames keyframes picks frames by CLIP similarity instead (--keyframe-model/-threshold/-interval).

prompts:
  --instruction TEXT is appended to the prompt of the final caption (fast: its prompt; slide: the summary's).
  --prompt TEMPLATE replaces the mode's prompt (slide: the pair prompt); --first-prompt and --summary-prompt the
  slide mode's others. Placeholders: fast {frames} {duration}; first {t}; pair {i} {j} {t1} {t2} {previous};
  summary {captions} {count}. Times are whole seconds (the trained form is "{t1}.00"); {{ and }} are braces.

examples:
  videocap caption clip.mp4
  videocap caption clip.mp4 --mode slide --json
  videocap caption a.mp4 b.mp4 --mode fast --instruction "Focus on camera motion."
  videocap caption long.mp4 --mode slide --frames keyframes --allow-pickle --instruction "Answer in one sentence."
"""

SUMMARIZE_EPILOG = """\
input: videocap's `caption --mode slide --json` output, or ShareGPT4Video dataset records (sharegpt4video_40k.jsonl:
`captions` [{idx, content}], idx -1 being the whole caption; times from `timestamp(s)`, or `keyframe(s)` + `fps`).
A JSON object, a JSON array or JSON Lines; one summary per record.

examples:
  videocap caption clip.mp4 --mode slide --json > clip.json && videocap summarize clip.json --instruction "One sentence."
  videocap summarize sharegpt4video_40k.jsonl --json > summaries.jsonl
"""


def add_caption_commands(commands) -> None:
    from videocap.cli import _cosine, _positive_float, _positive_int, _seconds  # here: cli.py imports this module
    caption = commands.add_parser(
        "caption", help="caption videos: fast (one request) or slide (frame by frame, then a summary)",
        description="Caption each VIDEO with the model. Text output prints each caption; --json prints one JSON "
        "record per video (mode, model, caption, segments, frame timestamps, token counts, timings). A video that fails "
        "while being captioned (a decode error mid-stream) is reported on stderr (with --json, also as a record with "
        "an 'error' and no caption) and the others go on; the exit code is then 2.",
        epilog=CAPTION_EPILOG + "\n" + MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    caption.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    caption.add_argument("--mode", choices=["fast", "slide"], default="fast", help="captioning mode (default: fast)")
    caption.add_argument("--frames", type=_frames, default=None, metavar="N|keyframes",
                         help="fast: frames in the grid (default: 16); either mode: 'keyframes'")
    caption.add_argument("--seconds", type=_positive_float, default=2.0, metavar="S",
                         help="slide: one frame every S seconds (default: 2)")
    caption.add_argument("--start", type=_seconds, default=None, metavar="S", help="window start in seconds")
    caption.add_argument("--end", type=_seconds, default=None, metavar="S", help="window end in seconds")
    caption.add_argument("--seek", choices=["exact", "keyframe"], default="exact",
                         help="decode exact frames or the nearest codec keyframes (faster; default: exact)")
    caption.add_argument("--max-side", type=_positive_int, default=None, metavar="PX",
                         help="downscale frames to at most PX while decoding (default: full size)")
    caption.add_argument("--allow-partial", action="store_true",
                         help="caption the decodable part of a truncated or damaged video instead of failing")
    _add_prompt_options(caption, slide=True)
    caption.add_argument("--keyframe-model", default=None, metavar="MODEL",
                         help="CLIP checkpoint for --frames keyframes (default: openai/clip-vit-large-patch14-336, "
                         "which ships pickled weights only: add --allow-pickle)")
    caption.add_argument("--keyframe-threshold", type=_cosine, default=0.93, metavar="T",
                         help="a candidate less similar than T to the last keyframe becomes one (default: 0.93)")
    caption.add_argument("--keyframe-interval", type=_positive_float, default=2.0, metavar="S",
                         help="seconds between keyframe candidates (default: 2)")
    caption.add_argument("--keyframe-device", default=None, metavar="DEVICE",
                         help="device for the keyframe model (default: cuda when available)")
    _add_model_options(caption, image=True)
    caption.add_argument("--json", action="store_true", help="one JSON record per video")
    caption.set_defaults(run=run_caption)

    summarize = commands.add_parser(
        "summarize", help="summarize timed per-frame captions (slide --json output, ShareGPT4Video records)",
        description="Summarize the timed captions of each record in FILE into one caption (the sliding mode's last "
        "step alone). Text only: no video needed.",
        epilog=SUMMARIZE_EPILOG + "\n" + MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    summarize.add_argument("file", metavar="FILE", help="JSON, JSON array or JSON Lines records")
    summarize.add_argument("--interval", type=_positive_float, default=None, metavar="S",
                           help="records without keyframe times: one caption every S seconds (the demo's 2)")
    summarize.add_argument("--instruction", default=None, metavar="TEXT", help="appended to the summary prompt")
    summarize.add_argument("--prompt", default=None, metavar="TEMPLATE",
                           help="replaces the summary prompt; placeholders {captions} {count}")
    _add_model_options(summarize, image=False)
    summarize.add_argument("--json", action="store_true", help="one JSON record per input record")
    summarize.set_defaults(run=run_summarize)

    recaption = commands.add_parser(
        "recaption", help="expand a short text-to-video prompt into a detailed caption",
        description="Translate TEXT (or each line of --file) into a detailed caption in the training captions' style.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    recaption.add_argument("text", nargs="?", default=None, metavar="TEXT", help="the short prompt")
    recaption.add_argument("--file", default=None, metavar="FILE", help="one prompt per line (batched)")
    recaption.add_argument("--instruction", default=None, metavar="TEXT", help="appended to the prompt")
    recaption.add_argument("--prompt", default=None, metavar="TEMPLATE",
                           help="replaces the re-caption prompt; placeholder {text}")
    _add_model_options(recaption, image=False)
    recaption.add_argument("--json", action="store_true", help="one JSON record per prompt")
    recaption.set_defaults(run=run_recaption)


def _add_prompt_options(p: argparse.ArgumentParser, slide: bool) -> None:
    p.add_argument("--instruction", default=None, metavar="TEXT",
                   help="appended to the final caption's prompt, e.g. \"Focus on camera motion.\"")
    p.add_argument("--prompt", default=None, metavar="TEMPLATE",
                   help="replaces the mode's prompt (fast: the one prompt; slide: the pair prompt)")
    if slide:
        p.add_argument("--first-prompt", default=None, metavar="TEMPLATE", help="slide: replaces the first-frame prompt")
        p.add_argument("--summary-prompt", default=None, metavar="TEMPLATE", help="slide: replaces the summary prompt")


def _add_model_options(p: argparse.ArgumentParser, image: bool) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id, alias or directory (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="weights and compute dtype (default: bf16 on GPU, fp32 on CPU)")
    if image:
        p.add_argument("--image-view", choices=["anyres", "base"], default="anyres",
                       help="anyres (as trained, default) or the 336 px base view only (the reference scripts)")
    else:
        p.set_defaults(image_view="anyres")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (can run code)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_options(p)
    add_generation_options(p)
    p.set_defaults(max_new_tokens=None)  # the family's default (ShareGPT4Video-8B: 512, as run.py)


def check_mode_prompts(args: argparse.Namespace) -> None:
    """The prompt options fit `--mode` and name only placeholders their step fills (`caption` and `batch`)."""
    from videocap.errors import VideocapError
    from videocap.tasks.prompts import Step

    if args.mode == "fast":
        if args.first_prompt is not None or args.summary_prompt is not None:
            raise VideocapError("--first-prompt and --summary-prompt belong to --mode slide")
        _check(args.prompt, Step.FAST, "--prompt")
    else:
        _check(args.prompt, Step.PAIR, "--prompt")
        _check(args.first_prompt, Step.FIRST, "--first-prompt")
        _check(args.summary_prompt, Step.SUMMARY, "--summary-prompt")


def run_caption(args: argparse.Namespace) -> int:
    from videocap.tasks import captioning
    from videocap.tasks.plan import DEFAULT_KEYFRAME_MODEL, KeyframeOptions
    from videocap.video import SeekMode

    check_mode_prompts(args)
    keyframes = KeyframeOptions(args.keyframe_model or DEFAULT_KEYFRAME_MODEL, args.keyframe_threshold,
                                args.keyframe_interval, args.keyframe_device, None, args.allow_pickle, not args.quiet)
    # Plan every video first: a bad video or window fails before the model loads.
    plans = captioning.plan_videos(args.videos, args.mode, frames=args.frames, seconds=args.seconds,
                                   start=args.start, end=args.end, seek=SeekMode(args.seek), max_side=args.max_side,
                                   allow_partial=args.allow_partial, keyframes=keyframes)
    captioner = load_from_args(args)
    many = len(plans) > 1

    def emit(result) -> None:
        if result.failed:  # this video alone: the others go on, the exit code says some failed
            print(f"videocap: error: {result.video}: {result.error}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps(result.to_dict()), flush=True)
            return
        for warning in result.warnings:
            print(f"videocap: warning: {result.video}: {warning}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            print((f"# {result.video}\n" if many else "") + result.caption + ("\n" if many else ""), flush=True)

    # `plans` is a list, so the results are one too, even for one video: a failed video is reported like any other.
    results = captioning.caption(captioner, plans, args.mode, instruction=args.instruction, prompt=args.prompt,
                                 first_prompt=args.first_prompt, summary_prompt=args.summary_prompt,
                                 progress=not args.quiet, on_result=emit, **generation_kwargs(args))
    return 2 if any(r.failed for r in results) else 0


def run_summarize(args: argparse.Namespace) -> int:
    from videocap.tasks import captioning

    from videocap.tasks.prompts import Step

    _check(args.prompt, Step.SUMMARY, "--prompt")
    sets, _ = captioning.caption_sets(args.file, args.interval)  # a malformed file fails before the model loads
    captioner = load_from_args(args)
    many = len(sets) > 1

    def emit(result) -> None:
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            print((f"# {result.source}\n" if many else "") + result.summary + ("\n" if many else ""), flush=True)

    captioning.summarize(captioner, sets, instruction=args.instruction, prompt=args.prompt, progress=not args.quiet,
                         on_result=emit, **generation_kwargs(args))
    return 0


def run_recaption(args: argparse.Namespace) -> int:
    from videocap.errors import VideocapError
    from videocap.tasks import captioning
    from videocap.tasks.prompts import Step
    from videocap.tasks.recaption import read_prompts

    if (args.text is None) == (args.file is None):
        raise VideocapError("recaption needs a TEXT or --file FILE (one of them)")
    _check(args.prompt, Step.RECAPTION, "--prompt")
    if args.text is not None and not args.text.strip():
        raise VideocapError(f"a prompt to re-caption must be non-empty text, got {args.text!r}")  # before the load
    texts = read_prompts(args.file) if args.file is not None else [args.text]
    captioner = load_from_args(args)
    many = len(texts) > 1

    def emit(result) -> None:
        if args.json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            print((f"# {result.prompt}\n" if many else "") + result.caption + ("\n" if many else ""), flush=True)

    captioning.recaption(captioner, texts, instruction=args.instruction, prompt=args.prompt, progress=not args.quiet,
                         on_result=emit, **generation_kwargs(args))
    return 0


def _check(template: str | None, step, option: str) -> None:
    """A template's placeholders, checked before the model loads."""
    from videocap.tasks.prompts import check_template

    if template is not None:
        check_template(template, step, option)


def _frames(text: str) -> int | str:
    if text == "keyframes":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of frames or 'keyframes', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of frames, got {text}")
    return value
