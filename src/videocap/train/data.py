"""Where training examples come from, and how they become batches.

- `SyntheticSource` (examples.py): the generator, rendered in memory (the default; nothing stored).
- `RecordSource`: ShareGPT4Video-format records (JSON, JSON array or JSONL; `videocap train synth` writes them)
  with their video files, synthetic or real: the whole-video caption (idx "-1") trains the fast mode and the
  `ask` default question; per-keyframe captions with `timestamp`(s) train the first-frame and pair steps; a
  `summary` field trains the summary step (from those captions); a `prompt` field re-captioning; `qa` pairs
  questions. Frames are decoded from the file exactly as the modes decode them (uniform16 for the grid, the
  records' keyframe times for the steps).

`Examples` is the map-style dataset (example i is always the same example, so a resumed run sees the data it
would have seen) and `collate` pads a batch on the right.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from videocap.errors import RecordError
from videocap.models.llava_next.prompt import DEFAULT_QUERY
from videocap.models.llava_next.processor import LlavaNextProcessor
from videocap.tasks.prompts import Step, render, summary_lines
from videocap.tasks.records import from_record, parse_records, read_text
from videocap.train.examples import FAMILY, Example, Prompted, encode
from videocap.video import SeekMode, Uniform16, VideoReader, sample


class RecordSource:
    """Examples from ShareGPT4Video records: record i % N, a task among those the record supports."""

    def __init__(self, path: str | os.PathLike, processor: LlavaNextProcessor):
        path = os.fspath(path)
        self.root = Path(path).parent
        self.processor = processor
        self.records = []
        for record, where in parse_records(path, read_text(path, "a records file")):
            video = record.get("video_path") or record.get("video")
            if not isinstance(video, str) or not video:
                raise RecordError(f"{where}: no 'video_path' to train on")
            folder = record.get("zip_folder") or ""
            full = self.root / folder / video
            if not full.is_file():
                raise RecordError(f"{where}: video {full} not found (video_path is read relative to the records "
                                  "file's folder and its zip_folder)")
            captions = from_record(record, where) if "captions" in record else None
            if captions is None or captions.reference is None:
                raise RecordError(f"{where}: needs 'captions' with a whole-video caption (idx -1)")
            self.records.append((record, full, captions))

    def __len__(self) -> int:
        return len(self.records)

    def __call__(self, index: int) -> Example:
        record, path, captions = self.records[index % len(self.records)]
        rng = random.Random(f"record/{index}")
        tasks = ["fast", "describe"]
        steps = [(s.end, s.text) for s in captions.segments]
        if steps:
            tasks += ["first"] + ["pair"] * (len(steps) > 1)
            if isinstance(record.get("summary"), str):
                tasks.append("summary")
        if isinstance(record.get("prompt"), str):
            tasks.append("recaption")
        if record.get("qa"):
            tasks += ["qa", "qa"]
        task = rng.choice(tasks)
        return encode(self.processor, self.prompted(task, record, str(path), captions.reference, steps, rng))

    def prompted(self, task, record, path, reference, steps, rng) -> Prompted:
        if task in ("fast", "describe", "qa"):
            image = FAMILY.fast_layout(sample(path, Uniform16()).images)
            if task == "qa":
                qa = rng.choice(record["qa"])
                return Prompted(qa["question"], qa["answer"], image, True)
            return Prompted(render(FAMILY.prompts.fast, Step.FAST) if task == "fast" else DEFAULT_QUERY, reference,
                            image, True)
        if task == "first":
            [frame] = _frames(path, [steps[0][0]])
            return Prompted(render(FAMILY.prompts.first, Step.FIRST, t=int(round(steps[0][0]))), steps[0][1],
                            FAMILY.frame(frame), FAMILY.prompts.first_preamble)
        if task == "pair":
            k = rng.randrange(len(steps) - 1)
            (t1, previous), (t2, text) = steps[k], steps[k + 1]
            a, b = _frames(path, [t1, t2])
            query = render(FAMILY.prompts.pair, Step.PAIR, i=k, j=k + 1, t1=int(round(t1)), t2=int(round(t2)),
                           previous=previous)
            return Prompted(query, text, FAMILY.pair_layout(a, b), FAMILY.prompts.pair_preamble)
        if task == "summary":
            return Prompted(render(FAMILY.prompts.summary, Step.SUMMARY, captions=summary_lines(steps)),
                            record["summary"])
        return Prompted(render(FAMILY.prompts.recaption, Step.RECAPTION, text=record["prompt"]), reference)


def _frames(path: str, times: list[float]):
    with VideoReader(path) as reader:
        return [f.image for f in reader.read(times, SeekMode.EXACT)]


class Examples(Dataset):
    """Examples [start, stop) of a source, by index."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Example:
        return self.source(self.start + i)


def collate(examples: list[Example], pad_id: int = 0) -> dict:
    """Right-padded (B, T) tensors, the tiles of every image in order, and each image's size."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    image_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[b, :n], labels[b, :n], image_mask[b, :n] = e.input_ids, e.labels, e.image_mask
    tiles = [e.pixels for e in examples if e.pixels is not None]
    return {"input_ids": input_ids, "labels": labels, "image_mask": image_mask,
            "pixels": torch.cat(tiles) if tiles else None,
            "sizes": [e.size for e in examples if e.pixels is not None],
            "tokens": sum(len(e.input_ids) for e in examples)}
