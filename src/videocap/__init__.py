"""videocap: answer questions about videos and caption them with LLaVA-style video-language models.

The Python API. Today it covers the video side (probe, sample, lay out frames); the model families, the engine
and the captioning tasks build on it.
"""

from videocap.errors import VideocapError, VideoError
from videocap.video import Every, Fps, Frames, SeekMode, Uniform, Uniform16, VideoInfo, probe, sample

__version__ = "0.1.0"

__all__ = [
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
