"""The captioning modes end to end on the tiny model, from the CLI and the API: fast and slide records, several
videos, keyframes through the selector's interface, re-captioning, instructions, and bad input (exit 2 before
the model loads)."""

from __future__ import annotations

import json

import pytest

from videocap.cli import main
from videocap.errors import PromptError, VideocapError
from videocap.tasks import plan as plan_module
from videocap.tasks.plan import KeyframeOptions

RECORD_KEYS = {"video", "mode", "model", "caption", "segments", "frame_timestamps", "prompt_tokens", "new_tokens",
               "requests", "finish_reason", "timings"}


def cli(*argv) -> int:
    return main([str(a) for a in argv])


def test_cli_fast_json_for_two_videos(tiny_ckpt, h264, make_video, capsys):
    other = make_video("cli_other.mp4", n=45, fps=15)
    assert cli("caption", h264, other, "--model", tiny_ckpt, "--frames", 4, "--max-new-tokens", 3, "--json",
               "--quiet", "--instruction", "One sentence.") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["video"] for r in records) == sorted([str(h264), str(other)])
    for r in records:
        assert RECORD_KEYS <= set(r) and r["mode"] == "fast" and r["model"] == str(tiny_ckpt)
        assert len(r["frame_timestamps"]) == 4 and r["segments"] == [] and 1 <= r["new_tokens"] <= 3
        assert r["requests"] == 1 and {"decode_video", "vision", "prefill", "total"} <= set(r["timings"])


def test_cli_slide_json(tiny_ckpt, h264, capsys):
    assert cli("caption", h264, "--mode", "slide", "--seconds", 1.5, "--model", tiny_ckpt, "--max-new-tokens", 2,
               "--image-view", "base", "--json", "--quiet") == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["mode"] == "slide" and record["frame_timestamps"] == [0.0, 1.5, 3.0]
    assert [(s["start"], s["end"]) for s in record["segments"]] == [(0.0, 0.0), (0.0, 1.5), (1.5, 3.0)]
    assert record["requests"] == 4 and record["summary_levels"] == 1 and record["peak_frames_held"] == 2


def test_cli_text_output_prints_the_caption(tiny_ckpt, h264, capsys, tiny_captioner):
    assert cli("caption", h264, "--model", tiny_ckpt, "--frames", 4, "--max-new-tokens", 3, "--quiet") == 0
    out = capsys.readouterr().out.strip()
    assert out == tiny_captioner.caption(str(h264), frames=4, max_new_tokens=3).caption


def test_api_modes_and_instruction(tiny_captioner, h264):
    fast = tiny_captioner.caption(str(h264), max_new_tokens=3)
    assert fast.mode == "fast" and len(fast.frame_timestamps) == 16 and fast.to_dict()["caption"] == fast.caption
    focused = tiny_captioner.caption(str(h264), max_new_tokens=3, instruction="Focus on camera motion.")
    assert focused.prompt_tokens > fast.prompt_tokens
    both = tiny_captioner.caption([str(h264), str(h264)], "slide", seconds=2.0, max_new_tokens=2)
    assert len(both) == 2 and both[0].segments == both[1].segments


@pytest.mark.parametrize("argv, needle", [
    (["caption", "/nonexistent.mp4"], "/nonexistent.mp4"),
    (["caption", "VIDEO", "--start", "100"], "window"),
    (["caption", "VIDEO", "--mode", "slide", "--frames", "8"], "not 8 frames"),
    (["caption", "VIDEO", "--prompt", "{t1} {oops}"], "{oops}"),
    (["caption", "VIDEO", "--mode", "slide", "--summary-prompt", "{text}"], "{text}"),
    (["recaption"], "TEXT or --file"),
    (["recaption", "--file", "/nonexistent.txt"], "/nonexistent.txt"),
    (["recaption", "   "], "non-empty text"),
])
def test_bad_input_is_one_line_exit_2_before_the_model_loads(argv, needle, h264, tmp_path, capsys):
    """The model path does not exist: these errors must come first."""
    argv = [str(h264) if a == "VIDEO" else a for a in argv] + ["--model", str(tmp_path / "no-model"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("videocap: error:") and needle in err
    assert "no-model" not in err


def test_prompt_placeholders_are_checked_in_the_api(tiny_captioner, h264):
    with pytest.raises(PromptError, match=r"\{frame\}"):
        tiny_captioner.caption(str(h264), "slide", prompt="{frame}")
    with pytest.raises(VideocapError, match="unknown captioning mode"):
        tiny_captioner.caption(str(h264), "dense")


def test_recaption_cli_batches_a_file(tiny_ckpt, tmp_path, capsys, tiny_captioner):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a corgi on a beach at sunset\n\n  a city street at night  \n")
    assert cli("recaption", "--file", prompts, "--model", tiny_ckpt, "--max-new-tokens", 3, "--json", "--quiet") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == ["a corgi on a beach at sunset", "a city street at night"]
    alone = tiny_captioner.recaption("a city street at night", max_new_tokens=3)
    assert records[1]["caption"] == alone.caption  # batched or alone, the same greedy answer
    assert cli("recaption", "a corgi", "--model", tiny_ckpt, "--max-new-tokens", 2, "--quiet") == 0
    assert capsys.readouterr().out.strip() == tiny_captioner.recaption("a corgi", max_new_tokens=2).caption


class FakeSelector:
    """Stands in for video/keyframes.py's KeyframeSelector (its interface: load(), select())."""

    loads: list[dict] = []
    calls: list[dict] = []

    @classmethod
    def load(cls, **kwargs):
        cls.loads.append(kwargs)
        return cls()

    def select(self, path, **kwargs):
        self.calls.append(kwargs)
        return [3.0, 0.0, 1.6]


@pytest.fixture
def fake_keyframes(monkeypatch):
    """The selector replaced inside video/keyframes.py (or a stand-in module where that file is absent)."""
    import sys
    import types

    FakeSelector.loads, FakeSelector.calls = [], []
    plan_module.keyframe_selector.cache_clear()
    try:
        import videocap.video.keyframes as module
    except ImportError:
        module = types.SimpleNamespace(DEFAULT_INTERVAL=2.0, DEFAULT_THRESHOLD=0.93,
                                       DEFAULT_MODEL="openai/clip-vit-large-patch14-336")
        monkeypatch.setitem(sys.modules, "videocap.video.keyframes", module)
    monkeypatch.setattr(module, "KeyframeSelector", FakeSelector, raising=False)
    yield FakeSelector
    plan_module.keyframe_selector.cache_clear()


def test_keyframes_drive_the_slide_mode(tiny_ckpt, h264, capsys, fake_keyframes):
    assert cli("caption", h264, "--mode", "slide", "--frames", "keyframes", "--keyframe-model", "tiny-clip",
               "--keyframe-threshold", 0.8, "--keyframe-interval", 1.0, "--model", tiny_ckpt, "--max-new-tokens", 2,
               "--image-view", "base", "--json", "--quiet", "--allow-pickle") == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["frame_timestamps"] == pytest.approx([0.0, 1.6, 3.0], abs=0.02)
    assert record["segments"][2]["end"] == pytest.approx(3.0)
    [load] = fake_keyframes.loads
    assert load["model"] == "tiny-clip" and load["allow_pickle"] is True
    [call] = fake_keyframes.calls
    assert call["threshold"] == 0.8 and call["interval"] == 1.0


def test_keyframes_in_the_fast_mode_api(tiny_captioner, h264, fake_keyframes):
    result = tiny_captioner.caption(str(h264), frames="keyframes", keyframes=KeyframeOptions(model="tiny-clip"),
                                    max_new_tokens=2)
    assert len(result.frame_timestamps) == 3
    assert fake_keyframes.calls[0]["threshold"] == 0.93 and fake_keyframes.calls[0]["interval"] == 2.0
