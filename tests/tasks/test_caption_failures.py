"""A video that fails mid-way fails alone: of three videos captioned together, the middle one's decoder breaks
after its first frame (a cut-off file), the other two are captioned as when alone, the failure is one record
(--json) or one stderr line, the exit code is 2, and the engine is left with every KV block free. The API's list
form returns a `CaptionFailure` at the video's place; one video alone raises its typed error."""

from __future__ import annotations

import json
import shutil

import pytest

from videocap import cli_caption
from videocap.cli import main
from videocap.errors import PromptError, TruncatedVideoError
from videocap.tasks import captioning, driver, slide
from videocap.tasks.driver import Ask
from videocap.tasks.results import CaptionFailure, CaptionResult
from videocap.video import VideoReader

REASON = "the file ends at 1.00 s, before the frames the container promises"


class CutOff(VideoReader):
    """A reader whose stream breaks after the first frame for files named truncated*.mp4; it records whether every
    reader it opened was closed."""

    opened: list[CutOff] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closed = False
        type(self).opened.append(self)

    def iter_frames(self, *args, **kwargs):
        for n, frame in enumerate(super().iter_frames(*args, **kwargs)):
            if n == 1 and "truncated" in self.path:
                raise TruncatedVideoError(self.path, REASON)
            yield frame

    def close(self):
        self.closed = True
        super().close()


@pytest.fixture
def videos(make_video, h264, video_dir, monkeypatch):
    CutOff.opened = []
    monkeypatch.setattr(slide, "VideoReader", CutOff)
    broken = video_dir / "truncated.mp4"
    if not broken.exists():
        shutil.copy(h264, broken)  # probes and plans as the good file does: it breaks only when decoded
    return [str(h264), str(broken), str(make_video("failures_other.mp4", n=50, fps=10))]


def all_free(engine) -> bool:
    allocator = engine.runner.allocator
    return not engine.scheduler.has_work() and allocator.num_free == allocator.num_blocks


@pytest.mark.parametrize("as_json", [True, False])
def test_cli_one_video_failing_mid_slide_fails_alone(tiny_base_captioner, videos, capsys, monkeypatch, as_json):
    monkeypatch.setattr(cli_caption, "load_from_args", lambda args: tiny_base_captioner)
    argv = ["caption", *videos, "--mode", "slide", "--seconds", "2", "--max-new-tokens", "2", "--quiet"]
    assert main(argv + (["--json"] if as_json else [])) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"videocap: error: {videos[1]}: {REASON}"]
    if as_json:
        records = {r["video"]: r for r in map(json.loads, out.splitlines())}
        assert set(records) == set(videos)
        assert records[videos[1]] == {"video": videos[1], "mode": "slide", "model": tiny_base_captioner.name,
                                      "error": REASON}
        for good in (videos[0], videos[2]):
            assert "error" not in records[good] and records[good]["requests"] == len(records[good]["segments"]) + 1
    else:
        assert out.count("# ") == 2 and f"# {videos[0]}\n" in out and f"# {videos[2]}\n" in out
        assert videos[1] not in out
    assert all(reader.closed for reader in CutOff.opened) and len(CutOff.opened) == 3
    assert all_free(tiny_base_captioner.engine)


def test_api_list_has_the_failure_in_its_place(tiny_base_captioner, videos):
    alone = [tiny_base_captioner.caption(v, "slide", max_new_tokens=2) for v in (videos[0], videos[2])]
    seen = []
    results = tiny_base_captioner.caption(videos, "slide", max_new_tokens=2, on_result=seen.append)
    assert [type(r) for r in results] == [CaptionResult, CaptionFailure, CaptionResult]
    assert [r.failed for r in results] == [False, True, False]
    failure = results[1]
    assert failure.video == videos[1] and failure.error == REASON and failure.mode == "slide"
    assert isinstance(failure.exception, TruncatedVideoError) and failure.exception.path == videos[1]
    assert sorted(r.video for r in seen) == sorted(videos)  # the callback gets the failure too
    for one, together in zip(alone, (results[0], results[2])):
        assert together.caption == one.caption and together.segments == one.segments
    assert all_free(tiny_base_captioner.engine)

    with pytest.raises(TruncatedVideoError, match=REASON):  # one video alone: the typed error, as before
        tiny_base_captioner.caption(videos[1], "slide", max_new_tokens=2)
    assert all_free(tiny_base_captioner.engine)


def test_driver_contains_only_the_errors_it_is_told(tiny_base_captioner):
    """A request that cannot be built ends its task alone (the task's cleanup runs); a bug in a task stops
    everything, and the other tasks' requests in flight are aborted."""
    session = captioning.session_of(tiny_base_captioner)
    cleaned = []

    def task(name: str, text: str, rounds: int = 1):
        try:
            for _ in range(rounds):
                [reply] = yield [Ask(text)]
            return reply.text
        finally:
            cleaned.append(name)

    def bug():
        yield [Ask("Say one word.")]
        raise ZeroDivisionError("a bug")

    results = driver.run(session, [task("a", "Say one word.", 2), task("b", "Here <image> is"),
                                   task("c", "Say one word.")], contain=(PromptError,))
    assert isinstance(results[0], str) and isinstance(results[1], PromptError) and isinstance(results[2], str)
    assert sorted(cleaned) == ["a", "b", "c"]
    assert all_free(tiny_base_captioner.engine)

    with pytest.raises(ZeroDivisionError):
        driver.run(session, [task("long", "Count to a thousand.", 50), bug()], contain=(PromptError,))
    assert all_free(tiny_base_captioner.engine)
