"""Decoding on the GPU's video engines (`--decode-device cuda`): the same pixels as FFmpeg's CPU decoders.

The exactness tests need an NVIDIA GPU with NVDEC and skip elsewhere; the argument checks run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from videocap.video import SeekMode, VideoReader
from videocap.video.encode import write_video
from videocap.video.hardware import DecodeDeviceError, check_device, mps_running, parse_device


def _cuda_decodes() -> bool:
    try:
        check_device("cuda")
        return True
    except DecodeDeviceError:
        return False


needs_nvdec = pytest.mark.skipif(not _cuda_decodes(), reason="needs an NVIDIA GPU whose video decoder FFmpeg can use")


def test_devices_parse():
    assert parse_device(None) is None and parse_device("cpu") is None
    assert parse_device("cuda") == "cuda" and parse_device("cuda:1") == "cuda:1"
    for bad in ("gpu", "cuda:x", "cuda:", "CUDA"):
        with pytest.raises(DecodeDeviceError, match="unknown decode device"):
            parse_device(bad)


def test_mps_is_found_where_its_clients_look(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()
    (tmp_path / "control").touch()  # the control daemon's pipe
    assert mps_running()


@pytest.mark.skipif(_cuda_decodes(), reason="this machine decodes on CUDA")
def test_reader_on_a_machine_without_nvdec_is_a_clear_error(tmp_path):
    path = tmp_path / "a.mp4"
    write_video(path, (np.full((64, 64, 3), k * 20, np.uint8) for k in range(4)), fps=4)
    with pytest.raises(DecodeDeviceError, match="cannot decode on cuda"):
        VideoReader(path, device="cuda")


def _clip(path, width, height, n=96, fps=24, pix_fmt="yuv420p", rotation=0, **options):
    rng = np.random.default_rng(width * 7 + height)
    base = rng.integers(0, 256, (height + 40, width + 80, 3), dtype=np.uint8)
    frames = []
    for k in range(n):
        image = base[(k // 3) % 40 : (k // 3) % 40 + height, k % 80 : k % 80 + width].copy()
        image[(k * 5) % (height - 8) : (k * 5) % (height - 8) + 8, :16] = (255, 32 * (k % 8), 0)
        frames.append(image)
    opts = {"g": "24", "bf": "3", "crf": "20", **options}
    write_video(path, frames, fps=fps, pix_fmt=pix_fmt, options=opts, rotation=rotation)
    return n / fps


@needs_nvdec
@pytest.mark.parametrize("width, height, rotation", [(320, 182, 0), (1920, 1080, 0), (250, 144, 90)])
@pytest.mark.parametrize("seek", [SeekMode.EXACT, SeekMode.KEYFRAME])
def test_gpu_frames_equal_cpu_frames(tmp_path, width, height, rotation, seek):
    path = tmp_path / "a.mp4"
    seconds = _clip(path, width, height, rotation=rotation)
    times = [seconds * k / 17 for k in range(16)] + [seconds * 0.5]
    with VideoReader(path, threads=1) as cpu, VideoReader(path, threads=1, device="cuda") as gpu:
        want, got = cpu.read(times, seek), gpu.read(times, seek)
        assert gpu.info.rotation == cpu.info.rotation == rotation
        assert gpu.gpu_frames > 0 and cpu.gpu_frames == 0  # NVDEC decoded them, not FFmpeg's CPU fallback
    for w, g in zip(want, got):
        assert g.timestamp == w.timestamp
        assert g.image.shape == w.image.shape and np.array_equal(g.image, w.image)


@needs_nvdec
def test_gpu_downscale_and_full_range_equal_cpu(tmp_path):
    path = tmp_path / "a.mp4"
    seconds = _clip(path, 640, 360, pix_fmt="yuvj420p")
    times = [seconds * k / 9 for k in range(8)]
    with VideoReader(path, threads=1) as cpu, VideoReader(path, threads=1, device="cuda:0") as gpu:
        for max_side in (None, 200):
            want, got = cpu.read(times, max_side=max_side), gpu.read(times, max_side=max_side)
            assert all(np.array_equal(w.image, g.image) for w, g in zip(want, got))
        assert gpu.gpu_frames > 0


@needs_nvdec
def test_fast_input_on_gpu_equals_cpu(tmp_path):
    from videocap.tasks.family import family
    from videocap.tasks.fast import fast_input
    from videocap.tasks.plan import plan_video

    path = tmp_path / "a.mp4"
    _clip(path, 480, 270, n=120)
    cpu = fast_input(plan_video(path, "fast"), family("llava_next"), threads=1)
    gpu = fast_input(plan_video(path, "fast", decode_device="cuda"), family("llava_next"), threads=1)
    assert gpu.timestamps == cpu.timestamps
    assert np.array_equal(np.asarray(gpu.image), np.asarray(cpu.image))


_TORCH_FIRST = """
import sys
import numpy as np
import torch
from videocap.video import VideoReader

torch.zeros(1, device="cuda")  # torch makes the primary context active before FFmpeg sees the GPU
path, seconds = sys.argv[1], float(sys.argv[2])
times = [seconds * k / 5 for k in range(4)]
with VideoReader(path, threads=1) as cpu, VideoReader(path, threads=1, device="cuda") as gpu:
    same = all(np.array_equal(w.image, g.image) for w, g in zip(cpu.read(times), gpu.read(times)))
    print("same" if same and gpu.gpu_frames > 0 else f"differ ({gpu.gpu_frames} GPU frames)")
"""


@needs_nvdec
def test_gpu_decoding_in_a_process_where_torch_holds_cuda(tmp_path):
    """The engine's process: torch made the primary context active first (a fresh process, so that no earlier
    test's decoder holds the context already)."""
    import subprocess
    import sys

    path = tmp_path / "a.mp4"
    seconds = _clip(path, 320, 180)
    done = subprocess.run([sys.executable, "-c", _TORCH_FIRST, str(path), str(seconds)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]
