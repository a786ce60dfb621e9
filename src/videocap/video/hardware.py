"""Decoding on the GPU's video engines (NVDEC) through FFmpeg's CUDA hwaccel, with the CPU decoder's pixels.

FFmpeg's own parser and H.264/HEVC/VP9/AV1 decoders still read the stream (so seeking, `skip_frame` and damage
handling stay as on the CPU); only the reconstruction of pictures moves to the GPU. Frames stay in GPU memory
until a target is converted, and only targets are downloaded. Decoding is bit-exact by the codecs' standards,
so the downloaded planes equal the CPU decoder's; a downloaded frame is handed to the RGB conversion in the
planar layout the CPU decoder outputs (NV12 is re-laid as yuv420p), so the RGB is the CPU path's to the bit.
Streams NVDEC cannot decode (4:2:2 H.264, say) fall back to the CPU decoder inside FFmpeg, frame for frame.

Each process that decodes this way holds a CUDA context on its device (a few hundred MiB of GPU memory): the
device's primary context where torch has not made it active in that process (decode workers), else one per
opened file. Contexts of different processes take turns on the GPU unless CUDA MPS runs (`mps_running`): beside
a model's engine, decode in few processes, or under MPS.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache

import av

from videocap.errors import VideocapError

# The GPU's semi-planar output and the planar format FFmpeg's CPU decoders give for the same stream.
_PLANAR = {"nv12": "yuv420p", "p010le": "yuv420p10le", "p016le": "yuv420p16le", "nv16": "yuv422p",
           "p210le": "yuv422p10le", "p216le": "yuv422p16le", "nv24": "yuv444p", "p410le": "yuv444p10le",
           "p416le": "yuv444p16le"}


class DecodeDeviceError(VideocapError):
    """The decode device asked for cannot be used (no NVIDIA driver, no such GPU, an FFmpeg without CUDA)."""


def parse_device(device: str | None) -> str | None:
    """Normalise a decode device: None or "cpu" → None (FFmpeg's CPU decoders), "cuda" / "cuda:N" → as given."""
    if device is None or device == "cpu":
        return None
    kind, sep, index = device.partition(":")
    if kind != "cuda" or (sep and not index.isdigit()):
        raise DecodeDeviceError(f"unknown decode device {device!r}: use cpu, cuda or cuda:N")
    return device


def hwaccel(device: str | None, own_context: bool | None = None):
    """The `av.open(hwaccel=...)` value for a parsed decode device (None for the CPU).

    FFmpeg shares the device's primary CUDA context (one per process, cheap to reopen) unless torch already made
    that context active here: FFmpeg wants it with other flags and refuses. Then (`own_context`, by default when
    torch has initialised CUDA in this process) each opened file gets a context of its own.
    """
    if device is None:
        return None
    from av.codec.hwaccel import HWAccel

    if own_context is None:
        torch = sys.modules.get("torch")
        own_context = torch is not None and torch.cuda.is_initialized()
    _, _, index = device.partition(":")
    options = {"primary_ctx": "0"} if own_context else None
    accel = HWAccel(device_type="cuda", device=index or None, allow_software_fallback=True, is_hw_owned=True,
                    options=options)
    if not own_context and device not in _held:
        # Each opened file retains the primary context and releases it on close; the last release destroys it,
        # and building it again costs far more than decoding a video's frames. One reference held for the
        # process's lifetime keeps it.
        _held[device] = accel.create(av.Codec("h264", "r"))
    return accel


_held: dict[str, object] = {}  # device -> a device context retaining its primary CUDA context


@lru_cache(maxsize=8)
def check_device(device: str | None) -> None:
    """Raise `DecodeDeviceError` unless `device` can decode here: creates (and drops) its CUDA device context."""
    device = parse_device(device)
    if device is None:
        return
    from av.codec.hwaccel import hwdevices_available

    if "cuda" not in hwdevices_available():
        raise DecodeDeviceError(f"cannot decode on {device}: this FFmpeg (PyAV) was built without CUDA")
    try:
        hwaccel(device, own_context=True).create(av.Codec("h264", "r"))
    except av.error.FFmpegError as e:
        raise DecodeDeviceError(
            f"cannot decode on {device}: no usable NVIDIA GPU or driver here ({e.strerror or e}); use --decode-device cpu"
        ) from e


def mps_running() -> bool:
    """Whether a CUDA MPS control daemon is listening where this process's CUDA clients would look for it. Under
    MPS the GPU work of every process runs in one shared context; without it, the contexts of different processes
    (each decoding process's and the engine's) take turns on the GPU."""
    pipes = os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"
    return os.path.exists(os.path.join(pipes, "control"))


def is_hardware(frame) -> bool:
    return frame.format.name == "cuda"


def to_software(frame):
    """A GPU frame downloaded, in the planar format the CPU decoder would have output; other frames as they are."""
    if not is_hardware(frame):
        return frame
    sw = frame.sw_format.name
    return frame.reformat(format=_PLANAR.get(sw, sw))
