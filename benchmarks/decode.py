"""Decode benchmark: what sampling 16 frames of a 1080p video costs, three ways, side by side in one run.

  (a) full   decode every frame of the stream, convert only the 16 kept ones to RGB (decord-style readers)
  (b) exact  videocap exact mode: seek to the keyframe before each frame, decode forward to it
  (c) key    videocap keyframe mode: decode only the keyframe nearest each target

Clips: 1920x1080 H.264 (libx264, yuv420p, 30 fps, a keyframe every 60 frames, no scene-cut keyframes) of 10, 60
and 300 s, generated once into benchmarks/.cache/ (git-ignored). Each measurement opens the file afresh and
is the median of --repeat rounds; wall seconds and CPU seconds (all threads of the process) per video. (a) and (b)
are checked to return identical pixels. The three run interleaved, round by round, so that drift in the
machine's speed falls on all of them alike; (a) converts with the same persistent swscale context as videocap.

    python benchmarks/decode.py [--lengths 10 60 300] [--threads 0 1] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from videocap.video import SeekMode, Uniform16, VideoReader, plan, sample  # noqa: E402
from videocap.video.encode import write_video  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
WIDTH, HEIGHT, FPS, GOP = 1920, 1080, 30, 60


def clip(seconds: int) -> Path:
    """The benchmark clip of `seconds`, generated on first use.

    Content meant to code like camera footage: a slow sub-pixel pan over a smooth textured scene with film
    grain and four moving boxes. At CRF 23 this gives about 5 Mbit/s with keyframes about 18x the size of other
    frames (the bundled real clips show 5-15x). Clips over 60 s repeat the 60 s clip by remuxing its packets
    (closed GOPs, no re-encoding), which is as hard to decode as fresh content and much faster to make.
    """
    path = CACHE / f"h264_1080p_{seconds}s.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    if seconds > 60 and seconds % 60 == 0:
        _repeat(clip(60), tmp, seconds // 60)
    else:
        options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "preset": "fast", "crf": "23"}
        write_video(tmp, _scene(seconds * FPS), fps=FPS, options=options)
    tmp.rename(path)
    return path


def _scene(n: int):
    rng = np.random.default_rng(0)
    tex = np.zeros((HEIGHT + 8, WIDTH * 3 // 2, 3), np.float32)
    for weight, cell in ((0.6, 64), (0.3, 12), (0.1, 3)):
        tex += weight * _smooth_noise(rng, tex.shape[:2], cell)
    tex = np.clip(tex, 0, 255).astype(np.uint16)
    grain = [np.clip(rng.normal(0, 5, (HEIGHT, WIDTH, 1)), -20, 20).astype(np.int16) for _ in range(8)]
    span = tex.shape[1] - WIDTH - 1
    for i in range(n):
        xf, yf = span / 2 * (1 + np.sin(i / (FPS * 7.0))), 3 + 3 * np.sin(i / (FPS * 3.0))
        x, y = int(xf), int(yf)
        f, g = int((xf - x) * 128), int((yf - y) * 128)  # sub-pixel shift, in 1/256ths
        image = (tex[y : y + HEIGHT, x : x + WIDTH] * (256 - f - g) + tex[y : y + HEIGHT, x + 1 : x + 1 + WIDTH] * f
                 + tex[y + 1 : y + 1 + HEIGHT, x : x + WIDTH] * g) >> 8
        image = image.astype(np.int16) + grain[i % len(grain)]
        for k in range(4):
            bx, by = int((i * (3 + k) * 4 + k * 400) % (WIDTH - 200)), 100 + k * 220
            image[by : by + 160, bx : bx + 200] = (40 + 50 * k, 200 - 40 * k, 90)
        yield np.clip(image, 0, 255).astype(np.uint8)


def _smooth_noise(rng, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Random values on a grid of `cell` px, bilinearly interpolated to `shape`."""
    small = rng.integers(0, 256, (shape[0] // cell + 2, shape[1] // cell + 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, small.shape[0] - 1.001, shape[0]), np.linspace(0, small.shape[1] - 1.001, shape[1])
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = small[y0][:, x0] * (1 - fx) + small[y0][:, x0 + 1] * fx
    bottom = small[y0 + 1][:, x0] * (1 - fx) + small[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _repeat(source: Path, out: Path, times: int) -> None:
    """`times` copies of `source` back to back, by copying packets with shifted timestamps."""
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        shift = stream_in.duration
        for copy in range(times):
            src.seek(0)
            for packet in src.demux(stream_in):
                if packet.size == 0:
                    continue
                packet.pts += copy * shift
                packet.dts += copy * shift
                packet.stream = stream_out
                dst.mux(packet)


def full_decode(path: Path, threads: int) -> list[np.ndarray]:
    """Decode every frame; convert only the sampled ones (the cost of readers that decode linearly)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type, stream.codec_context.thread_count = "AUTO", threads
        wanted = set(_indices(stream.frames))
        convert = av.video.reformatter.VideoReformatter()  # the same conversion videocap uses
        out = []
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out.append(convert.reformat(frame, format="rgb24", interpolation="BICUBIC", threads=1).to_ndarray())
        return out


def _indices(n: int) -> list[int]:
    from videocap.video import Timeline

    return list(plan(Uniform16(), Timeline(n, FPS)).indices)


def measure(fns: dict, repeat: int) -> dict[str, tuple[float, float, object]]:
    """Median wall and CPU seconds of each function, the functions interleaved in every round so that
    drift in the machine's speed falls on all of them alike."""
    walls = {name: [] for name in fns}
    cpus = {name: [] for name in fns}
    results = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(time.process_time() - c0)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name]), results[name]) for name in fns}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 60, 300], help="clip lengths in seconds")
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="decoder threads (0: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)

    print(f"# decode benchmark, {date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"PyAV {av.__version__} (FFmpeg {av.library_versions['libavcodec']})", flush=True)
    paths = {s: clip(s) for s in args.lengths}
    rows = []
    for seconds, path in paths.items():
        mb = path.stat().st_size / 1e6
        for threads in args.threads:
            timed = measure({
                "full": lambda: full_decode(path, threads),
                "exact": lambda: sample(path, Uniform16(), mode=SeekMode.EXACT, threads=threads),
                "keyframe": lambda: sample(path, Uniform16(), mode=SeekMode.KEYFRAME, threads=threads),
            }, args.repeat)
            a, b, c = timed["full"], timed["exact"], timed["keyframe"]
            same = all(np.array_equal(x, y) for x, y in zip(a[2], b[2].images)) and len(a[2]) == len(b[2].images)
            distinct_keys = len(set(c[2].timestamps))
            for name, (wall, cpu, _) in (("full", a), ("exact", b), ("keyframe", c)):
                rows.append({"seconds": seconds, "mb": round(mb, 1), "threads": threads, "method": name,
                             "wall_s": round(wall, 4), "cpu_s": round(cpu, 4),
                             "speedup_wall": round(a[0] / wall, 1), "speedup_cpu": round(a[1] / cpu, 1)})
                print(f"{seconds:>4}s {mb:6.1f}MB threads={threads:<2} {name:<8} wall {wall:7.3f}s  cpu {cpu:7.3f}s"
                      f"  x{a[0] / wall:5.1f} wall  x{a[1] / cpu:5.1f} cpu", flush=True)
            print(f"      exact == full pixels: {same}; keyframe mode used {distinct_keys} distinct keyframes",
                  flush=True)
            if not same:
                print("ERROR: exact mode returned different pixels from full decoding", file=sys.stderr)
                return 1
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
