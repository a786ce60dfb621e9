"""Bad input: each case is a typed VideoError in the API naming the file, and one line with exit code 2 in the CLI."""

import os

import av
import numpy as np
import pytest
from helpers import corrupt_middle, cut, read_barcode
from PIL import Image

from videocap.cli import main
from videocap.errors import (
    CorruptVideoError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    VideoError,
    VideoNotFoundError,
    WindowError,
)
from videocap.video import SeekMode, Uniform, Uniform16, VideoReader, probe, sample
from videocap.video.encode import write_audio


@pytest.fixture(scope="module")
def faststart(make_video):
    """An MP4 with its index first (as web uploads are), so that a cut-off copy still opens."""
    return make_video("faststart.mp4", n=120, options={"g": "30", "crf": "18"},
                      container_options={"movflags": "+faststart"})


@pytest.fixture
def bad(tmp_path, make_video, faststart):
    """name -> (path, expected exception type) for every kind of bad input."""
    plain = make_video("plain.mp4", n=60, options={"g": "30"})
    mkv = make_video("plain.mkv", n=120, options={"g": "30"})
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("these are my notes, not a video\n" * 50)
    write_audio(tmp_path / "song.m4a", 1.0)
    Image.new("RGB", (64, 48), "red").save(tmp_path / "photo.png")
    (tmp_path / "photo.png").rename(tmp_path / "photo.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")
    return {
        "missing": (tmp_path / "nope.mp4", VideoNotFoundError),
        "directory": (tmp_path / "folder.mp4", NotAVideoError),
        "empty": (tmp_path / "empty.mp4", NotAVideoError),
        "text": (tmp_path / "notes.mp4", NotAVideoError),
        "audio only": (tmp_path / "song.m4a", NoVideoStreamError),
        "still image": (tmp_path / "photo.mp4", NotAVideoError),
        "pipe": (tmp_path / "pipe.mp4", NotAVideoError),
        "cut, index last": (cut(plain, tmp_path / "cut.mp4"), TruncatedVideoError),
        "cut, index first": (cut(faststart, tmp_path / "cut_fs.mp4"), TruncatedVideoError),
        "cut matroska": (cut(mkv, tmp_path / "cut.mkv", 0.6), TruncatedVideoError),
        "corrupt middle": (corrupt_middle(faststart, tmp_path / "corrupt.mp4"), CorruptVideoError),
    }


REASONS = {
    "missing": "no such file",
    "directory": "is a directory",
    "empty": "empty file",
    "text": "not a video",
    "audio only": "no video stream (audio only)",
    "still image": "a still image",
    "pipe": "not a regular file",
    "cut, index last": "moov",
    "cut, index first": "cut off",
    "cut matroska": "cut off",
    "corrupt middle": "decoding failed",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_api_raises_a_typed_error_naming_the_file(bad, case):
    path, kind = bad[case]
    with pytest.raises(kind) as caught:
        sample(path, Uniform(8))
    assert isinstance(caught.value, VideoError)
    assert str(path) in str(caught.value) and REASONS[case] in str(caught.value)


@pytest.mark.parametrize("case", list(REASONS))
def test_cli_prints_one_line_and_exits_2(bad, case, capsys, tmp_path):
    path, _ = bad[case]
    out = tmp_path / "grid.png"
    assert main(["frames", str(path), "--strategy", "uniform", "--frames", "8", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("videocap: error: ") and str(path) in err
    assert "Traceback" not in err and not out.exists()


def test_truncated_file_with_allow_partial_samples_the_decodable_part(bad, capsys, tmp_path):
    path, _ = bad["cut, index first"]
    assert probe(path).truncated
    frames = sample(path, Uniform(4), allow_partial=True)
    assert frames.partial and any("truncated" in w for w in frames.warnings)
    assert 20 < frames.indices[-1] < 119  # the decodable part, not the whole promised clip
    assert [read_barcode(im) for im in frames.images] == [round(t * 30) for t in frames.timestamps]
    assert all(abs(t - r) < 0.1 for t, r in zip(frames.timestamps, frames.requested))
    assert main(["frames", str(path), "--allow-partial", "--json", "-o", str(tmp_path / "g.png")]) == 0
    captured = capsys.readouterr()
    assert '"partial": true' in captured.out and "warning" in captured.err and (tmp_path / "g.png").exists()


def test_truncated_matroska_with_allow_partial(bad):
    path, _ = bad["cut matroska"]
    assert probe(path).truncated  # its demuxing just ends: only the stated track duration tells
    frames = sample(path, Uniform(3), allow_partial=True)
    assert frames.partial and 30 < frames.indices[-1] < 119
    assert [read_barcode(im) for im in frames.images] == [round(t * 30) for t in frames.timestamps]


def test_corrupt_stream_with_allow_partial_skips_the_damage(bad):
    path, _ = bad["corrupt middle"]
    frames = sample(path, Uniform(8), allow_partial=True)
    assert frames.partial and frames.warnings and len(frames) == 8


def test_window_outside_the_video(faststart, capsys):
    with pytest.raises(WindowError) as caught:
        sample(faststart, Uniform(4), start=10, end=20)
    assert str(faststart) in str(caught.value) and "4.000 s long" in str(caught.value)
    assert main(["frames", str(faststart), "--start", "10"]) == 2
    assert "window starts at 10.0 s" in capsys.readouterr().err


def test_info_reports_truncation_without_failing(bad, capsys):
    path, _ = bad["cut, index first"]
    assert main(["info", str(path)]) == 0
    captured = capsys.readouterr()
    assert "truncated" in captured.out and "truncated" in captured.err


def corrupt_keyframe(path, out, which: int):
    """A copy of `path` whose `which`-th keyframe packet is overwritten with noise."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = [p for p in container.demux(stream) if p.size and p.is_keyframe]
    data = bytearray(path.read_bytes())
    target = keys[which]
    noise = np.random.default_rng(1).integers(0, 256, target.size - 16, dtype=np.uint8).tobytes()
    data[target.pos + 16 : target.pos + target.size] = noise
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("mode", list(SeekMode))
def test_damaged_keyframe_with_allow_partial_returns_no_concealed_garbage(faststart, tmp_path, mode):
    path = corrupt_keyframe(faststart, tmp_path / "badkey.mp4", which=2)  # the keyframe at 2 s
    with pytest.raises(CorruptVideoError):
        sample(path, Uniform16(), mode=mode)
    frames = sample(path, Uniform16(), mode=mode, allow_partial=True)
    assert frames.warnings
    # every returned picture is the frame its reported time says: nothing from the broken GOP (2-3 s)
    assert [read_barcode(im) for im in frames.images] == [round(t * 30) for t in frames.timestamps]
    assert not any(2.0 <= t < 3.0 for t in frames.timestamps)


def test_output_path_errors_are_one_line(faststart, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["frames", str(faststart), "--dir", str(tmp_path / "afile")]) == 2
    assert main(["frames", str(faststart), "-o", str(tmp_path / "afile" / "grid.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("videocap: error: ") and "afile" in line for line in err)


def test_layout_too_large_to_build_is_refused(faststart, capsys):
    assert main(["frames", str(faststart), "--frames", "100000", "-o", "never.png"]) == 2
    assert "canvas" in capsys.readouterr().err and not os.path.exists("never.png")


def test_reader_keeps_a_bounded_pool_of_decoders(faststart):
    rng = np.random.default_rng(0)
    with VideoReader(faststart, threads=3) as reader:
        for k in range(40):
            reader.read(list(rng.uniform(0, 3.9, size=1 + k % 5)), list(SeekMode)[k % 2])
        assert len(reader._all) <= 3
