"""The model commands of the `videocap` CLI: `ask`, `chat`, `download` (and, from cli_caption.py, `caption`,
`summarize`, `recaption`). Thin clients of videocap.api."""

from __future__ import annotations

import argparse
import json
import sys

from videocap.models.llava_next.prompt import DEFAULT_QUERY

DEFAULT_MODEL = "sharegpt4video-8b"

MODEL_EPILOG = """\
models: a Hub id (optionally @revision), a local checkpoint directory, or an alias:
  sharegpt4video-8b     Lin-Chen/sharegpt4video-8b (LLaVA-NeXT + Llama-3-8B, ~16.7 GB)
  sharecaptioner-video  Lin-Chen/ShareCaptioner-Video (InternLM-XComposer2-4KHD, InternLM2-7B)
The first use downloads into the Hugging Face cache (HF_HOME); later uses read the cache with no network.
HF_HUB_OFFLINE=1 never touches the network. Only safetensors weights are read unless --allow-pickle."""


def add_model_commands(commands) -> None:
    ask = commands.add_parser(
        "ask", help="answer a question about a video",
        description="Sample frames of VIDEO (ShareGPT4Video-8B's uniform16), lay them out as one image (the 8B's "
        "grid; ShareCaptioner-Video's labelled strip) and answer QUESTION with the model. The answer streams to "
        "stdout; --json prints one JSON object instead.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ask.add_argument("video", help="path to the video file")
    ask.add_argument("question", nargs="?", default=DEFAULT_QUERY, help=f"the question (default: {DEFAULT_QUERY!r})")
    add_model_options(ask)
    add_generation_options(ask)
    add_stop_option(ask)
    ask.add_argument("--json", action="store_true",
                     help="print one JSON object: answer, frame timestamps, token counts, timings")
    ask.set_defaults(run=run_ask)

    chat = commands.add_parser(
        "chat", help="a multi-turn conversation about one video",
        description="Ask questions about VIDEO one after another. The video is decoded and encoded once; each answer "
        "sees the earlier turns. Commands: /reset forgets the conversation (keeps the video), /quit (or Ctrl-D) ends.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("video", help="path to the video file")
    add_model_options(chat)
    add_generation_options(chat)
    add_stop_option(chat)
    chat.set_defaults(run=run_chat)

    download = commands.add_parser(
        "download", help="fetch a model into the local cache ahead of use",
        description="Download MODEL's config, tokenizer and safetensors weights into the Hugging Face cache, "
        "so later commands run offline. Prints the local directory.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("model", help="Hub id[@revision] or alias")
    download.add_argument("--allow-pickle", action="store_true",
                          help="also accept a repository that has only pickled (.bin) weights")
    download.set_defaults(run=run_download)

    from videocap.cli_caption import add_caption_commands  # caption, summarize, recaption

    add_caption_commands(commands)


def add_model_options(p: argparse.ArgumentParser) -> None:
    from videocap.cli import _positive_int, _seconds

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id, alias or directory (default: {DEFAULT_MODEL})")
    p.add_argument("--frames", type=_positive_int, default=16, metavar="N",
                   help="frames laid out in the one image (default: 16, as the models were trained)")
    p.add_argument("--start", type=_seconds, default=None, metavar="S", help="window start in seconds")
    p.add_argument("--end", type=_seconds, default=None, metavar="S", help="window end in seconds")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="weights and compute dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--image-view", choices=["anyres", "base"], default="anyres",
                   help="ShareGPT4Video-8B: anyres: base view + tiles, as the model was trained (default); base: the "
                   "336 px base view only, what the reference run.py and demo actually feed")
    p.add_argument("--no-preamble", dest="preamble", action="store_false",
                   help="ShareGPT4Video-8B: leave out the grid preamble the reference puts before the question")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin weights (can run code)")
    p.add_argument("--max-side", type=_positive_int, default=None, metavar="PX",
                   help="downscale frames to at most PX while decoding (cheaper for 4K sources; the grid is at most "
                   "1920 px anyway, but the reference builds it from full-size frames; default: full size)")
    p.add_argument("--allow-partial", action="store_true",
                   help="sample the decodable part of a truncated or damaged video instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_options(p)


def add_generation_options(p: argparse.ArgumentParser) -> None:
    from videocap.cli import _positive_int

    p.add_argument("--max-new-tokens", type=_positive_int, default=None, metavar="N",
                   help="stop after N new tokens (default: the model's reference: 512 for ShareGPT4Video-8B, as "
                   "run.py; 2048 for ShareCaptioner-Video, as the captioner demo)")
    p.add_argument("--num-beams", type=_positive_int, default=None, metavar="N",
                   help="beam search over N beams, 1 = greedy (default: the model's reference when not sampling: 1 "
                   "for ShareGPT4Video-8B, 3 for ShareCaptioner-Video; 1 with --temperature > 0)")
    p.add_argument("--temperature", type=_temperature, default=0.0,
                   help="0 = greedy, as run.py (default); the web demo uses 0.1 with --top-p 0.9")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling mass (default: 1.0)")
    p.add_argument("--top-k", type=_nonnegative, default=0, metavar="K",
                   help="sample among the K likeliest tokens, 0 = all (default: 0; the web demo's transformers "
                   "default was 50: --temperature 0.1 --top-p 0.9 --top-k 50 reproduces its sampling)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--repetition-penalty", type=_positive_number, default=1.0, metavar="P",
                   help="penalise tokens already in the prompt or answer: their positive logits divided by P, "
                   "negative ones multiplied (transformers' rule; default: 1.0, off)")


def add_stop_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the answer where TEXT appears (left out of it); repeat for several")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-memory-fraction", type=_fraction, default=0.9, metavar="F",
                   help="share of the free GPU memory the KV cache may take, after room for the largest prefill "
                   "step (default: 0.9)")
    p.add_argument("--eager", action="store_true",
                   help="no CUDA graphs and no look-ahead decoding (slower; for debugging)")


def load_from_args(args: argparse.Namespace):
    from videocap.api import load

    return load(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                image_view=args.image_view, progress=not args.quiet, gpu_memory_fraction=args.gpu_memory_fraction,
                eager=args.eager)


def generation_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, temperature=args.temperature,
                top_p=args.top_p, top_k=args.top_k, seed=args.seed, repetition_penalty=args.repetition_penalty)


def video_grid(args: argparse.Namespace):
    """Sample the video first: a bad video fails before a model load (16 GB of reading at 8B). The frames are laid
    out once the model is loaded (its family decides how)."""
    from videocap.tasks.ask import VideoGrid

    grid = VideoGrid.of(args.video, args.frames, start=args.start, end=args.end, max_side=args.max_side,
                        allow_partial=args.allow_partial, compose=None)
    for warning in grid.warnings:
        print(f"videocap: warning: {args.video}: {warning}", file=sys.stderr)
    return grid


def run_ask(args: argparse.Namespace) -> int:
    grid = video_grid(args)
    captioner = load_from_args(args)
    chat = captioner.chat(grid, preamble=args.preamble)
    if args.json:
        answer = chat.ask(args.question, stop=args.stop, **generation_kwargs(args))
        print(json.dumps({"video": args.video, "model": args.model, **answer.to_dict()}))
        return 0
    answer = chat.ask(args.question, stop=args.stop, on_text=_print_stream, **generation_kwargs(args))
    print()
    if not args.quiet:
        print(f"[{answer.new_tokens} tokens, {answer.timings['total']:.1f} s, {answer.finish_reason}]", file=sys.stderr)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from videocap.errors import PromptError, PromptTooLongError

    grid = video_grid(args)
    captioner = load_from_args(args)
    chat = captioner.chat(grid, preamble=args.preamble)
    times = ", ".join(f"{t:.1f}" for t in chat.timestamps)
    print(f"{args.video}: {len(chat.timestamps)} frames at {times} s. /reset forgets the conversation, /quit ends.")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not question:
            continue
        if question in ("/quit", "/exit"):
            return 0
        if question == "/reset":
            chat.reset()
            print("(conversation cleared)")
            continue
        print("model> ", end="", flush=True)
        try:
            chat.ask(question, stop=args.stop, on_text=_print_stream, **generation_kwargs(args))
        except KeyboardInterrupt:  # Ctrl-C while answering stops the answer, not the session
            print("\n(answer interrupted; that turn is not kept)")
            continue
        except PromptTooLongError as e:
            hint = "; /reset starts the conversation over" if chat.turns else "; ask something shorter"
            print(f"\nvideocap: {e}{hint}", file=sys.stderr)
            continue
        except PromptError as e:
            print(f"\nvideocap: {e}", file=sys.stderr)
            continue
        print()


def run_download(args: argparse.Namespace) -> int:
    from videocap.weights import hub

    print(hub.download(args.model, allow_pickle=args.allow_pickle))
    return 0


def _print_stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _ranged(kind: type, ok, wanted: str):
    """An argparse type: `text` parsed as `kind`, accepted when `ok(value)`; else "must be <wanted>"."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    return parse


_temperature = _ranged(float, lambda v: 0 <= v < float("inf"), ">= 0")
_nonnegative = _ranged(int, lambda v: v >= 0, "0 or more")
_positive_number = _ranged(float, lambda v: 0 < v < float("inf"), "a number > 0")
_fraction = _ranged(float, lambda v: 0 < v <= 1, "in (0, 1]")
_top_p = _fraction
