"""videocap: answer questions about videos and caption them with LLaVA-style video-language models.

The Python API: `videocap.load(model)` returns a `Captioner` (`.ask(video, question)`, `.chat(video)`,
`.caption(video, mode=...)`, `.summarize(captions)`, `.recaption(text)`); the video
side (probe, sample, lay out frames) is importable without torch. The model API is imported on first use, so
`videocap info` and friends start fast.
"""

from videocap.errors import VideocapError, VideoError
from videocap.video import Every, Fps, Frames, SeekMode, Uniform, Uniform16, VideoInfo, probe, sample

__version__ = "0.1.0"

_LAZY = {
    "load": "videocap.api",
    "Captioner": "videocap.api",
    "Chat": "videocap.tasks.ask",
    "Answer": "videocap.tasks.ask",
    "VideoGrid": "videocap.tasks.ask",
    "CaptionResult": "videocap.tasks.results",
    "CaptionFailure": "videocap.tasks.results",
    "SummaryResult": "videocap.tasks.results",
    "RecaptionResult": "videocap.tasks.results",
    "Segment": "videocap.tasks.results",
    "KeyframeOptions": "videocap.tasks.plan",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videocap' has no attribute {name!r}")


__all__ = [
    "Answer",
    "CaptionFailure",
    "CaptionResult",
    "Captioner",
    "KeyframeOptions",
    "RecaptionResult",
    "Segment",
    "SummaryResult",
    "Chat",
    "VideoGrid",
    "load",
    "Every",
    "Fps",
    "Frames",
    "SeekMode",
    "Uniform",
    "Uniform16",
    "VideoError",
    "VideoInfo",
    "VideocapError",
    "__version__",
    "probe",
    "sample",
]
