"""The command line: help, info, frames (layouts and frame files), as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import read_barcode
from PIL import Image

from videocap.cli import build_parser, main

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "videocap" / "assets" / "example.mp4"


def test_help_explains_every_command_and_option(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"info", "frames"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"videocap {name} {action.option_strings or action.dest} has no help"
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
    assert "uniform16" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "videocap.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "info" in result.stdout and "frames" in result.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_info_table_and_json(h264, capsys):
    assert main(["info", str(h264)]) == 0
    out = capsys.readouterr().out
    assert "320x240" in out and "120 (from the container)" in out and "h264" in out
    assert main(["info", str(h264), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_frames"] == 120 and info["num_frames_source"] == "container" and info["fps"] == 30.0
    assert info["rotation"] == 0 and info["has_audio"] is False


def test_frames_grid_and_dir(h264, tmp_path, capsys):
    grid, folder = tmp_path / "grid.png", tmp_path / "frames"
    assert main(["frames", str(h264), "--strategy", "uniform16", "--layout", "grid", "-o", str(grid),
                 "--dir", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["indices"] == [3, 10, 18, 25, 33, 40, 48, 55, 63, 70, 77, 85, 92, 100, 107, 115]
    assert Image.open(grid).size == (4 * 320 + 150, 4 * 240 + 150)
    files = sorted(folder.iterdir())
    assert len(files) == 16 and files[1].name == "frame_001_00000.333s.png"
    assert [read_barcode(np.asarray(Image.open(f))) for f in files] == result["indices"]


def test_frames_strip_every_window_keyframe(h264, tmp_path, capsys):
    strip = tmp_path / "strip.jpg"
    assert main(["frames", str(h264), "--strategy", "every", "--seconds", "1", "--start", "1", "--end", "3.5",
                 "--layout", "strip", "-o", str(strip), "--mode", "keyframe"]) == 0
    out = capsys.readouterr().out
    assert "3 frames (keyframe) at 1.00, 2.00, 3.00 s" in out
    assert Image.open(strip).size == (320 + 20 + 100, 3 * 260 + 20)


def test_frames_pair_needs_two_frames(h264, tmp_path, capsys):
    pair = tmp_path / "pair.png"
    assert main(["frames", str(h264), "--strategy", "uniform", "--frames", "2", "--layout", "pair",
                 "-o", str(pair)]) == 0
    assert Image.open(pair).size == (320, 2 * 240 + 50)
    assert main(["frames", str(h264), "--layout", "pair", "-o", str(pair)]) == 2
    assert "exactly 2 frames" in capsys.readouterr().err


def test_frames_max_side(h264, tmp_path):
    folder = tmp_path / "small"
    assert main(["frames", str(h264), "--strategy", "uniform", "--frames", "1", "--max-side", "64",
                 "--dir", str(folder), "--ext", "jpg"]) == 0
    (only,) = folder.iterdir()
    assert Image.open(only).size == (64, 48) and only.suffix == ".jpg"


@pytest.mark.parametrize("args", [["--frames", "0"], ["--seconds", "-2"], ["--start", "x"], ["--mode", "fast"]])
def test_bad_options_exit_2(h264, args, capsys):
    with pytest.raises(SystemExit) as done:
        main(["frames", str(h264), *args])
    assert done.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unwritable_output_is_a_clean_error(h264, tmp_path, capsys):
    assert main(["frames", str(h264), "-o", str(tmp_path / "grid.unknownext")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videocap: error: ") and "grid.unknownext" in err


def test_bundled_example_is_small_and_samples(capsys):
    assert EXAMPLE.stat().st_size < 400_000
    assert main(["info", str(EXAMPLE), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from videocap.train.scene import sample_scene
    from videocap.train.synthetic import EXAMPLE_SEED

    scene = sample_scene(EXAMPLE_SEED)  # a generator clip (the tiny model's demo)
    assert info["num_frames"] == scene.num_frames and info["duration"] == pytest.approx(scene.duration)


def test_a_closed_stdout_pipe_ends_quietly(h264):
    """`videocap ... | head -1`: the reader closes the pipe before videocap writes; no traceback, exit 141."""
    proc = subprocess.Popen([sys.executable, "-m", "videocap.cli", "info", str(h264), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even imported videocap
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_broken_pipe_in_a_command_is_exit_141(monkeypatch, capsys):
    import videocap.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["info"].set_defaults(run=broken)
    assert cli.main(["info", "x.mp4"]) == 141
    assert capsys.readouterr().err == ""
