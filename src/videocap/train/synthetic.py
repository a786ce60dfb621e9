"""The synthetic video generator: seeded "shapes" clips with ShareGPT4Video-format ground truth.

`sample_scene(seed)` (scene.py) decides what happens; render.py draws it; language.py words it. This module joins
them into what a dataset holds: `record(scene)` is a ShareGPT4Video record (`video_id`, `video_path`,
`zip_folder`, `captions` — idx "-1" the detailed caption, "0" the first keyframe, k the change between keyframes
k - 1 and k — and their `timestamp`s in seconds), plus this generator's own fields: `summary`, `prompt` (a short
text-to-video prompt), `qa`, `facts` (background, objects, events in order with their times) and the scene's
`seed`, `fps`, `size`, `duration`. `write_clip` encodes a clip to MP4; `write_dataset` writes N clips and a
`records.jsonl`, the input `videocap train` and `videocap summarize` read.

Seeds: training draws from [0, EVAL_SEED_BASE); evaluation.py's clips start at EVAL_SEED_BASE, so the two never meet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from videocap.errors import VideocapError
from videocap.train import language, render
from videocap.train.scene import Scene, sample_scene

EVAL_SEED_BASE = 1_000_000_000  # evaluation clips: seeds from here; training seeds stay below
# The bundled example clip (src/videocap/assets/example.mp4), outside both the training and the evaluation seeds:
# the first clip from seed 900_000_000 on whose fast caption by the shipped videocap-tiny states every fact.
EXAMPLE_SEED = 900_000_005


def video_id(scene: Scene) -> str:
    return f"shapes-{scene.seed:010d}"


def record(scene: Scene, video_path: str | None = None) -> dict:
    """The ShareGPT4Video record of `scene` (captions in their first phrasing)."""
    times = language.keyframe_times(scene)
    captions = [{"idx": "-1", "content": language.detailed_caption(scene)},
                {"idx": "0", "content": language.first_frame_caption(scene)}]
    captions += [{"idx": str(k + 1), "content": language.pair_caption(scene, k)} for k in range(len(scene.events))]
    events = []
    for k, e in enumerate(language.named_events(scene)):
        start, end = scene.event_span(k)
        events.append({"kind": e.kind, "subject": e.subject, "arg": e.arg, "start": start, "end": end})
    return {
        "video_id": video_id(scene),
        "video_path": video_path or f"videos/{video_id(scene)}.mp4",
        "zip_folder": "",
        "timestamp": times,
        "captions": captions,
        "summary": language.summary(scene),
        "prompt": language.t2v_prompt(scene),
        "qa": [{"question": q.question, "answer": q.answer, "kind": q.kind} for q in language.qa_pairs(scene)],
        "facts": {"background": scene.background,
                  "objects": [{"color": o.colour, "shape": o.shape} for o in scene.objects],
                  "events": events},
        "seed": scene.seed, "fps": scene.fps, "size": [scene.width, scene.height], "duration": scene.duration,
    }


def write_clip(scene: Scene, path: str | os.PathLike, crf: int = 18) -> None:
    """Encode the clip to `path` (H.264 in MP4, yuv420p, the scene's frame rate)."""
    from videocap.video.encode import write_video

    write_video(path, render.frames(scene), fps=scene.fps, options={"crf": crf, "preset": "veryfast"})


def write_dataset(out: str | os.PathLike, n: int, *, first_seed: int = 0, progress: bool = True) -> Path:
    """Write `n` clips (seeds first_seed ... first_seed + n - 1) under `out/videos/` and their records to
    `out/records.jsonl`; returns the records file."""
    if n < 1:
        raise VideocapError(f"--n must be at least 1, got {n}")
    if first_seed < 0:
        raise VideocapError(f"--seed must be >= 0, got {first_seed}")
    out = Path(out)
    try:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideocapError(f"{out}: cannot create the dataset directory ({e.strerror or e})") from e
    path = out / "records.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for seed in tqdm(range(first_seed, first_seed + n), desc="synthesizing", unit="clip", disable=not progress):
            scene = sample_scene(seed)
            rel = f"videos/{video_id(scene)}.mp4"
            write_clip(scene, out / rel)
            f.write(json.dumps(record(scene, rel)) + "\n")
    return path
