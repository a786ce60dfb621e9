"""The tiny model's evaluation protocol, fixed before training: 200 held-out clips, three measures.

Clips: seeds EVAL_SEED_BASE ... EVAL_SEED_BASE + 199 (training seeds stay below EVAL_SEED_BASE), encoded to MP4
(H.264) and read back through the normal inference path — `Captioner.caption` (fast: uniform16 grid; slide: a
frame every 2 s, pair captions, summary) and the `ask` prompt over the 16-frame grid for questions. At least half
of the clips have two or more objects or two or more events (a test pins this).

Measures (facts.py): for fast and slide captions, micro-averaged precision and recall of the parsed facts
(background, objects, events) against the scene's, the pairwise order accuracy of the events found and the share
of multi-event clips whose event sequence is exactly right; for QA, the share of questions answered right (short
answers compared after lower-casing and dropping punctuation and articles; "What happens first?" by its parsed
event).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from videocap.train import facts as facts_mod
from videocap.train import language
from videocap.train.scene import Scene, sample_scene
from videocap.train.synthetic import EVAL_SEED_BASE, video_id, write_clip

EVAL_CLIPS = 200
MODES = ("fast", "slide", "qa")
CHUNK = 16  # videos per caption call


def eval_scenes(n: int = EVAL_CLIPS) -> list[Scene]:
    return [sample_scene(EVAL_SEED_BASE + i) for i in range(n)]


def write_clips(scenes: list[Scene], folder: Path, progress: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for scene in tqdm(scenes, desc="encoding clips", unit="clip", disable=not progress, file=sys.stderr):
        path = folder / f"{video_id(scene)}.mp4"
        if not path.is_file():
            write_clip(scene, path)
        paths.append(path)
    return paths


def normalize(answer: str) -> str:
    words = re.sub(r"[^a-z0-9 ]", " ", answer.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def qa_correct(qa: language.QA, answer: str) -> bool:
    if qa.kind == "first":
        return facts_mod.events(facts_mod.parse(answer))[:1] == facts_mod.events(facts_mod.parse(qa.answer))
    return normalize(answer) == normalize(qa.answer)


def ask_all(captioner, paths: list[Path], scenes: list[Scene], progress: bool) -> list[list[str]]:
    """Every clip's questions, batched through the driver with the `ask` prompt (16-frame grid + preamble)."""
    from videocap.tasks import driver
    from videocap.tasks.ask import VideoGrid
    from videocap.tasks.captioning import family_of, sampling_of, session_of

    session = session_of(captioner)
    sampling = sampling_of(family_of(captioner), max_new_tokens=32)

    def task(path: Path, scene: Scene):
        image = VideoGrid.of(path, 16).image
        replies = yield [driver.Ask(q.question, image, True, sampling) for q in language.qa_pairs(scene)]
        return [r.text for r in replies]

    total = sum(len(language.qa_pairs(s)) for s in scenes)
    with tqdm(total=total, desc="questions", unit="req", disable=not progress, file=sys.stderr) as bar:
        return driver.run(session, [task(p, s) for p, s in zip(paths, scenes)], on_request=lambda: bar.update(1),
                          max_active=32)


def evaluate(model: str | os.PathLike, *, n: int = EVAL_CLIPS, modes: tuple[str, ...] = MODES,
             device: str | None = None, workdir: str | os.PathLike | None = None, progress: bool = True,
             details: str | os.PathLike | None = None) -> dict:
    """Run the protocol on `model` (anything `videocap.load` takes); returns the figures as a dict."""
    import tempfile

    import videocap

    scenes = eval_scenes(n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        paths = write_clips(scenes, folder, progress)
        captioner = videocap.load(model, device=device, progress=False)
        result: dict = {"clips": n, "multi": sum(len(s.objects) >= 2 or len(s.events) >= 2 for s in scenes),
                        "device": str(next(captioner.model.parameters()).device)}
        per_clip: list[dict] = [{"video": video_id(s), "facts": language.facts(s)} for s in scenes]
        for mode in ("fast", "slide"):
            if mode not in modes:
                continue
            t0 = time.perf_counter()
            outputs = []
            for k in range(0, len(paths), CHUNK):
                outputs += captioner.caption([str(p) for p in paths[k : k + CHUNK]], mode, progress=progress,
                                             max_new_tokens=160)
            score = facts_mod.Score()
            for scene, out, row in zip(scenes, outputs, per_clip):
                text = out.caption if not out.failed else ""
                score.add(facts_mod.parse(text), language.facts(scene))
                row[mode] = text
            result[mode] = {**score.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
        if "qa" in modes:
            t0 = time.perf_counter()
            answers = ask_all(captioner, paths, scenes, progress)
            right, kinds = 0, {}
            for scene, got, row in zip(scenes, answers, per_clip):
                row["qa"] = []
                for qa, answer in zip(language.qa_pairs(scene), got):
                    ok = qa_correct(qa, answer)
                    right += ok
                    counts = kinds.setdefault(qa.kind, [0, 0])
                    counts[0] += ok
                    counts[1] += 1
                    row["qa"].append([qa.question, qa.answer, answer, ok])
            asked = sum(c[1] for c in kinds.values())
            result["qa"] = {"accuracy": round(right / asked, 4), "questions": asked,
                            "by_kind": {k: round(c[0] / c[1], 4) for k, c in sorted(kinds.items())},
                            "seconds": round(time.perf_counter() - t0, 2)}
    if details is not None:
        Path(details).write_text("\n".join(json.dumps(row) for row in per_clip) + "\n")
    return result


def format_result(result: dict) -> str:
    lines = [f"clips: {result['clips']} ({result['multi']} with >= 2 objects or >= 2 events)"]
    for mode in ("fast", "slide"):
        if mode in result:
            r = result[mode]
            lines.append(f"{mode:5s} captions: precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
                         f"order {r['order_accuracy']:.3f} ({r['event_pairs']} event pairs)  exact order "
                         f"{r['exact_order']:.3f} ({r['multi_event_clips']} clips)  [{r['seconds']} s]")
            lines.append("      recall by fact: " + ", ".join(f"{k} {v:.2f}" for k, v in r["recall_by_kind"].items()))
    if "qa" in result:
        r = result["qa"]
        lines.append(f"QA: accuracy {r['accuracy']:.3f} over {r['questions']} questions  [{r['seconds']} s]")
        lines.append("      by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind"].items()))
    return "\n".join(lines)
