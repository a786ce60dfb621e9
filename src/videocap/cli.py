"""The `videocap` command line: a thin client of the Python API (video commands here, model commands in
cli_models.py).

Every user-caused error ends as one line on stderr and exit code 2; nothing here knows how decoding works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from PIL import Image

from videocap import __version__
from videocap.cli_batch import add_batch_command
from videocap.cli_models import add_model_commands
from videocap.cli_train import add_train_commands
from videocap.errors import VideocapError

from videocap.video import Every, Fps, SeekMode, Uniform, Uniform16, VideoInfo, VideoReader, layout, probe
from videocap.video.frames import choose
from videocap.video.sampling import SamplePlan

DESCRIPTION = """\
videocap answers questions about videos and captions them with LLaVA-style video-language models
(ShareGPT4Video-8B, ShareCaptioner-Video). Run `videocap COMMAND --help` for a command's options."""

FRAMES_EPILOG = """\
strategies (N = frames in the video or window):
  uniform16  ShareGPT4Video-8B's sampling: seg=(N-1)/n, frame k = int(seg/2) + round(seg*k); --frames n (16)
  uniform    n frames evenly spread, first and last included (ShareCaptioner-Video's demo); --frames n
  every      one frame every int(seconds*fps) frames, at least 1 (ShareCaptioner-Video); --seconds (2)
  fps        --rate frames per second at interval centres, at most --max-frames (then spread evenly)
  keyframes  semantic keyframes, as ShareGPT4Video's keyframe script picks them: the first frame (after any
             leading solid-colour frames), then every ceil(fps*S)-th frame (--keyframe-interval S, 2) whose CLIP
             feature (CLS token of the last layer, --keyframe-model) has cosine similarity below
             --keyframe-threshold (0.93) to the last keyframe's, and the last frame when it is at least one
             interval after the last keyframe. The script's clip-length rules (skip under 10 s, cut at 120 s)
             are off unless --keyframe-min-duration / --keyframe-max-duration are given. OpenAI's CLIP checkpoint
             ships only pickled weights: it needs --allow-pickle.

seek modes:
  exact      decode from the keyframe before each frame to the frame itself (the frame sampling asked for)
  keyframe   decode only the nearest keyframe: much faster, but sparse keyframes repeat frames; the times
             actually used are reported

examples:
  videocap frames clip.mp4 --layout grid -o grid.png
  videocap frames clip.mp4 --strategy every --seconds 2 --layout strip -o strip.png
  videocap frames clip.mp4 --strategy uniform --frames 8 --dir frames/ --start 10 --end 40
  videocap frames clip.mp4 --strategy keyframes --allow-pickle --layout strip -o keyframes.png"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at interpreter exit
        return code
    except VideocapError as e:
        print(f"videocap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videocap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`videocap caption ... --json | head -1`): stop quietly
        _discard_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by a closed pipe


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videocap", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"videocap {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info", help="describe a video: duration, frames, fps, size, rotation, codec",
        description="Print what a video is: duration, frame count (and where it came from), average fps, "
        "size as displayed, rotation, codec, pixel format, audio. Reads the container's metadata; decodes "
        "only the first frame (for rotation); demuxes the packets (no decoding) when the container has no complete "
        "frame index, or its index shows a variable frame rate or an edit list.",
    )
    info.add_argument("video", help="path to the video file")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    info.add_argument(
        "--no-count", dest="count", action="store_false",
        help="when the container has no frame count, estimate it as duration x fps instead of counting packets",
    )
    info.set_defaults(run=run_info)

    frames = commands.add_parser(
        "frames", help="sample frames of a video and write them, or their grid/strip/pair layout",
        description="Sample frames of a video with one of the models' strategies, decode them, and write the "
        "layout image (-o) and/or the individual frames (--dir).",
        epilog=FRAMES_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    frames.add_argument("video", help="path to the video file")
    frames.add_argument("--strategy", choices=["uniform16", "uniform", "every", "fps", "keyframes"],
                        default="uniform16",
                        help="how frames are chosen (default: uniform16; see below)")
    frames.add_argument("--frames", type=_positive_int, default=16, metavar="N",
                        help="frames to sample for uniform16 and uniform (default: 16)")
    frames.add_argument("--seconds", type=_positive_float, default=2.0, metavar="S",
                        help="interval for --strategy every (default: 2)")
    frames.add_argument("--rate", type=_positive_float, default=1.0, metavar="FPS",
                        help="frames per second for --strategy fps (default: 1)")
    frames.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                        help="cap for --strategy fps (default: none)")
    frames.add_argument("--start", type=_seconds, default=None, metavar="S",
                        help="window start in seconds (default: the beginning)")
    frames.add_argument("--end", type=_seconds, default=None, metavar="S",
                        help="window end in seconds (default: the end)")
    frames.add_argument("--mode", choices=[m.value for m in SeekMode], default=SeekMode.EXACT.value,
                        help="exact frames or nearest keyframes (default: exact)")
    frames.add_argument("--max-side", type=_positive_int, default=None, metavar="PX",
                        help="downscale frames so their longest side is at most PX while converting to RGB "
                        "(cheaper for 4K sources; default: full size)")
    frames.add_argument("--allow-partial", action="store_true",
                        help="sample the decodable part of a truncated or damaged file instead of failing")
    frames.add_argument("--threads", type=_nonnegative_int, default=0, metavar="N",
                        help="decoder threads (default: 0, one per core)")
    frames.add_argument("--layout", choices=["grid", "strip", "pair", "none"], default="grid",
                        help="what -o writes: ShareGPT4Video-8B grid, ShareCaptioner-Video labelled strip, "
                        "the sliding captioner's frame pair (needs exactly 2 frames), or nothing (default: grid)")
    frames.add_argument("-o", "--output", metavar="IMAGE", help="write the layout image here (.png, .jpg, ...)")
    frames.add_argument("--dir", metavar="DIR",
                        help="write each frame here as frame_<k>_<seconds>s.<ext> (created if missing)")
    frames.add_argument("--ext", choices=["png", "jpg"], default="png", help="image type for --dir (default: png)")
    frames.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_keyframe_options(frames)
    frames.add_argument("--quiet", action="store_true", help="no progress bars (keyframes)")
    frames.set_defaults(run=run_frames)
    add_model_commands(commands)
    add_batch_command(commands)
    add_train_commands(commands)
    return parser


def run_info(args: argparse.Namespace) -> int:
    info = probe(args.video, count_frames=args.count)
    if args.json:
        print(json.dumps(info.to_dict()))
    else:
        print(format_info(info))
    if info.truncated:
        print(f"videocap: warning: {info.path}: truncated: the data ends before what the container promises "
              "(sampling needs --allow-partial)", file=sys.stderr)
    return 0


def run_frames(args: argparse.Namespace) -> int:
    strategy = {
        "uniform16": lambda: Uniform16(args.frames),
        "uniform": lambda: Uniform(args.frames),
        "every": lambda: Every(args.seconds),
        "fps": lambda: Fps(args.rate, args.max_frames),
        "keyframes": lambda: None,
    }[args.strategy]()
    mode = SeekMode(args.mode)
    compose_layout = bool(args.output) and args.layout != "none"
    if args.dir:
        _make_dir(args.dir)
    written: list[str] = []
    with VideoReader(args.video, allow_partial=args.allow_partial, threads=args.threads) as reader:
        if strategy is None:
            found = scan_keyframes(args, reader, mode)
            chosen = SamplePlan(found.indices, found.timestamps)
        else:
            chosen = choose(reader, strategy, args.start, args.end)
        if compose_layout:  # a layout needs every frame in memory at once
            _check_memory(len(set(chosen.timestamps)), reader.output_size(args.max_side))
            decoded = reader.read(chosen.timestamps, mode, args.max_side)
        else:  # frames are written as they are decoded: memory stays flat however many there are
            decoded = reader.iter_frames(chosen.timestamps, mode, args.max_side)
        timestamps = []
        images = []
        for k, frame in enumerate(decoded):
            timestamps.append(frame.timestamp)
            if compose_layout:
                images.append(frame.image)
            if args.dir:
                path = os.path.join(args.dir, f"frame_{k:03d}_{frame.timestamp:09.3f}s.{args.ext}")
                _save(Image.fromarray(frame.image), path)
                written.append(path)
        warnings, partial = list(reader.warnings), reader.partial or bool(reader.warnings)
    for warning in warnings:
        print(f"videocap: warning: {args.video}: {warning}", file=sys.stderr)
    if compose_layout:
        _save(compose(images, args.layout), args.output)
        written.insert(0, args.output)
    if args.json:
        result = {
            "path": args.video, "strategy": args.strategy, "mode": mode.value,
            "indices": list(chosen.indices), "requested": list(chosen.timestamps),
            "timestamps": timestamps, "partial": partial, "warnings": warnings, "written": written,
        }
        if strategy is None:
            result["keyframes"] = keyframe_record(args, found)
        print(json.dumps(result))
    else:
        times = ", ".join(f"{t:.2f}" for t in timestamps)
        print(f"{len(timestamps)} frames ({mode.value}) at {times} s")
        if compose_layout:
            print(f"wrote {args.output}")
        if args.dir:
            print(f"wrote {len(timestamps)} frames to {args.dir}")
    return 0


def add_keyframe_options(p: argparse.ArgumentParser) -> None:
    """The keyframe selector's options (any command that can pick frames by keyframes)."""
    from videocap.video.keyframes import DEFAULT_INTERVAL, DEFAULT_MODEL, DEFAULT_THRESHOLD

    p.add_argument("--keyframe-model", default=DEFAULT_MODEL, metavar="MODEL",
                   help=f"CLIP checkpoint for keyframes: Hub id[@revision] or directory (default: {DEFAULT_MODEL})")
    p.add_argument("--keyframe-threshold", type=_cosine, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"a candidate whose similarity to the last keyframe is below T becomes a keyframe "
                   f"(cosine, -1 to 1; lower keeps fewer; default: {DEFAULT_THRESHOLD})")
    p.add_argument("--keyframe-interval", type=_positive_float, default=DEFAULT_INTERVAL, metavar="S",
                   help=f"seconds between keyframe candidates (default: {DEFAULT_INTERVAL:g})")
    p.add_argument("--keyframe-min-duration", type=_positive_float, default=None, metavar="S",
                   help="refuse videos (windows) of S seconds or less, as the keyframe script skips clips under "
                   "10 s (default: off)")
    p.add_argument("--keyframe-max-duration", type=_positive_float, default=None, metavar="S",
                   help="consider only the first S seconds, as the keyframe script cuts at 120 s (default: off)")
    p.add_argument("--keyframe-device", default=None, metavar="DEVICE",
                   help="device for the keyframe model: cuda, cuda:N or cpu (default: cuda when available)")
    if "--allow-pickle" not in p._option_string_actions:  # model commands have it already, for both models
        p.add_argument("--allow-pickle", action="store_true",
                       help="accept pickled .bin weights for the keyframe model (can run code; OpenAI's CLIP needs it)")


def scan_keyframes(args: argparse.Namespace, reader: VideoReader, mode: SeekMode):
    """The keyframes of `reader`'s video with the options of `add_keyframe_options`."""
    from videocap.video.keyframes import KeyframeSelector

    choose(reader, Every(args.keyframe_interval), args.start, args.end)  # a bad window fails before the model loads
    selector = KeyframeSelector.load(args.keyframe_model, device=args.keyframe_device, progress=not args.quiet,
                                     allow_pickle=args.allow_pickle)
    return selector.scan(
        reader, threshold=args.keyframe_threshold, interval=args.keyframe_interval, start=args.start, end=args.end,
        seek=mode, max_side=args.max_side, min_duration=args.keyframe_min_duration,
        max_duration=args.keyframe_max_duration,
    )


def keyframe_record(args: argparse.Namespace, found) -> dict:
    return {
        "model": args.keyframe_model, "threshold": args.keyframe_threshold, "interval": args.keyframe_interval,
        "interval_frames": found.interval_frames, "candidates": found.candidates,
        "skipped_solid": found.skipped_solid, "similarities": list(found.similarities),
    }


# Frames held at once for a layout beyond this are refused rather than risking the machine's memory.
MAX_LAYOUT_BYTES = 4 << 30


def _check_memory(count: int, size: tuple[int, int]) -> None:
    need = count * size[0] * size[1] * 3
    if need > MAX_LAYOUT_BYTES:
        raise VideocapError(
            f"a layout of {count} frames of {size[0]}x{size[1]} needs {need / 2**30:.1f} GiB of frames in memory; "
            "use fewer --frames, --max-side, or --dir alone (which streams)"
        )


def compose(images: list, kind: str):
    if kind == "grid":
        return layout.grid(images)
    if kind == "strip":
        return layout.strip(images)
    if len(images) != 2:
        raise VideocapError(f"--layout pair needs exactly 2 frames, the strategy gave {len(images)}; "
                            "try --strategy uniform --frames 2")
    return layout.pair(images[0], images[1])


def format_info(info: VideoInfo) -> str:
    count_from = {"container": "from the container", "counted": "counted", "estimated": "estimated"}
    rows = [
        ("file", info.path),
        ("container", info.format),
        ("codec", f"{info.codec} ({info.pix_fmt}, {info.bit_depth}-bit)"),
        ("size", f"{info.width}x{info.height} as displayed" + (f", rotated {info.rotation} deg" if info.rotation else "")),
        ("fps", f"{info.fps:.3f} average" + (" (variable frame rate)" if info.variable_frame_rate else "")),
        ("duration", f"{info.duration:.3f} s"),
        ("frames", f"{info.num_frames} ({count_from[info.num_frames_source.value]})"),
        ("audio", "yes" if info.has_audio else "no"),
        ("file size", f"{info.size_bytes / 1e6:.2f} MB"),
    ]
    if info.truncated:
        rows.append(("damage", "truncated (the data ends before what the container promises)"))
    return "\n".join(f"{name:<10} {value}" for name, value in rows)


def _save(image, path: str) -> None:
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        image.save(path)
    except (ValueError, OSError) as e:
        raise VideocapError(f"{path}: cannot write the image ({e})") from e


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise VideocapError(f"{path}: cannot create the folder ({e.strerror or e})") from e


def _positive_int(text: str) -> int:
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _parse(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _parse(float, text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _cosine(text: str) -> float:
    value = _parse(float, text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a cosine similarity from -1 to 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _parse(float, text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _parse(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())
