"""The video side of videocap: probe, sample, decode and lay out frames. See frames.sample() for the one call."""

from videocap.video.decode import DecodedFrame, SeekMode, VideoReader
from videocap.video.frames import Frames, sample
from videocap.video.probe import CountSource, VideoInfo, probe
from videocap.video.sampling import Every, Fps, SamplePlan, Timeline, Uniform, Uniform16, plan

__all__ = [
    "CountSource",
    "DecodedFrame",
    "Every",
    "Fps",
    "Frames",
    "SamplePlan",
    "SeekMode",
    "Timeline",
    "Uniform",
    "Uniform16",
    "VideoInfo",
    "VideoReader",
    "plan",
    "probe",
    "sample",
]
