"""`videocap batch` argument handling: bad input is one line and exit 2, before any model loads."""

from __future__ import annotations

import math

import pytest

from videocap.cli import main
from videocap.errors import BatchInputError


@pytest.mark.parametrize("argv, needle", [
    (["batch", "MISSING", "--out", "J"], "no such file, directory or glob match"),
    (["batch", "CLIPS", "--out", "J", "--mode", "slide", "--frames", "4"], "--frames is for --mode fast"),
    (["batch", "CLIPS", "--out", "J", "--prompt", "{oops}"], "{oops}"),
    (["batch", "CLIPS", "--out", "J", "--first-prompt", "{t}"], "belong to --mode slide"),
    (["batch", "CLIPS", "--out", "J", "--shard", "4/4"], "0 <= I < N"),
    (["batch", "CLIPS", "--out", "J", "--shard", "x"], "must be I/N"),
    (["batch", "CLIPS", "--out", "/proc/no/such/dir/j.jsonl"], "j.jsonl"),
    (["batch", "CLIPS", "--out", "J", "--decode-device", "gpu"], "unknown decode device 'gpu'"),
    (["batch", "CLIPS", "--out", "J", "--decode-device", "cuda", "--ray"], "Ray's decode tasks run on CPU"),
    (["batch", "CLIPS", "--out", "J", "--decode-device", "cuda", "--mode", "slide"], "is for --mode fast"),
])
def test_bad_input_is_one_line_exit_2_before_the_model_loads(argv, needle, clips, tmp_path, capsys):
    subs = {"MISSING": str(tmp_path / "missing"), "CLIPS": str(clips), "J": str(tmp_path / "j.jsonl")}
    argv = [subs.get(a, a) for a in argv] + ["--model", str(tmp_path / "no-model"), "--quiet"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err and "no-model" not in err


def test_help_explains_inputs_journal_and_scale(capsys):
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    text = capsys.readouterr().out
    for needle in ("--decode-workers", "--gpus", "--shard", "--ray", "--retry-failed", "--export", "manifest",
                   "resume", "--max-duration", "--decode-device", "NVDEC", "--decode-threads", "MPS"):
        assert needle in text


def test_decode_device_without_a_usable_gpu_fails_before_the_journal(clips, tmp_path, capsys):
    from videocap.video.hardware import DecodeDeviceError, check_device

    try:
        check_device("cuda")
        pytest.skip("this machine decodes on CUDA")
    except DecodeDeviceError:
        pass
    journal = tmp_path / "j.jsonl"
    code = main(["batch", str(clips), "--out", str(journal), "--decode-device", "cuda", "--model", "tiny", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot decode on cuda" in err[0] and "--decode-device cpu" in err[0]
    assert not journal.exists()


def test_bad_model_fails_before_the_journal(clips, tmp_path, capsys):
    journal = tmp_path / "j.jsonl"
    code = main(["batch", str(clips), "--out", str(journal), "--model", str(tmp_path / "no-model"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-model" in err[0]
    assert not journal.exists()


def test_gpu_decoding_defaults_to_a_few_processes_of_several_threads(monkeypatch):
    """About one video in flight per core either way; on the GPU in processes of GPU_DECODE_THREADS threads (fewer
    CUDA contexts), unless --decode-workers / --decode-threads say otherwise."""
    from videocap.batch import BatchConfig
    from videocap.batch.decode import GPU_DECODE_THREADS

    monkeypatch.setattr("os.cpu_count", lambda: 17)
    cpu, gpu = BatchConfig("in", "out"), BatchConfig("in", "out", decode_device="cuda")
    assert (cpu.workers, cpu.threads) == (16, 1) and cpu.prefetch_size == 32
    assert (gpu.workers, gpu.threads) == (math.ceil(16 / GPU_DECODE_THREADS), GPU_DECODE_THREADS)
    assert gpu.prefetch_size == 2 * gpu.workers * gpu.threads
    four = BatchConfig("in", "out", decode_device="cuda", gpus=4)  # a decode process on each engine's GPU
    assert four.decode_devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:3") and four.workers == 4
    mine = BatchConfig("in", "out", decode_device="cuda", decode_workers=3, decode_threads=5, prefetch=9)
    assert (mine.workers, mine.threads, mine.prefetch_size) == (3, 5, 9)
    processes = BatchConfig("in", "out", decode_device="cuda", decode_workers=15)  # as before --decode-threads
    assert (processes.workers, processes.threads) == (15, 1)
    with pytest.raises(BatchInputError, match="--decode-threads must be at least 1"):
        BatchConfig("in", "out", decode_threads=0)
    with pytest.raises(BatchInputError, match="--decode-threads is for local jobs"):
        BatchConfig("in", "out", decode_threads=4, ray="")
