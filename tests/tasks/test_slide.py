"""The sliding mode: prompts and segments carry the sampled frames' own times, answers pair with their segments
however requests complete (across videos, out of order), a 10-minute video holds at most two decoded frames at
once, and captions that outgrow the context are summarized hierarchically."""

from __future__ import annotations

import re
import time
import weakref

import pytest

from fakes import fake_session
from helpers import barcode_frame, read_barcode

from videocap.engine.request import SamplingParams
from videocap.errors import PromptTooLongError
from videocap.tasks import captioning, driver, slide
from videocap.tasks.family import family
from videocap.tasks.plan import plan_video
from videocap.tasks.slide import SlideOptions, slide_task
from videocap.tasks.summarize import SummaryOptions
from videocap.video import VideoReader
from videocap.video.encode import write_video

LLAVA = family("llava_next")
PAIR = re.compile(r"Video frame (\d+) at (\d+)\.00 Second\(s\) and Video frame (\d+) at (\d+)\.00 Second\(s\)")


def slide_options(session, max_new_tokens: int = 8, instruction: str | None = None) -> SlideOptions:
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    return SlideOptions(sampling, SummaryOptions(sampling, session.limit, session.count, instruction))


def echo(prompt: str, request) -> str:
    """The fake model's answer names what it was asked about: the pair's frames and times."""
    if m := PAIR.search(prompt):
        return "pair {}@{} {}@{}".format(*m.groups())
    if "first frame" in prompt:
        return "first"
    return "summary"


class Recorder(VideoReader):
    """A VideoReader that records every frame it streams: time, barcode, and how many decoded images are alive at
    once (a frame the reader yields twice, as keyframe seek does, is one image)."""

    log: list[tuple[float, int]] = []
    alive: set[int] = set()  # ids of the decoded images not yet freed
    peak = 0

    def iter_frames(self, *args, **kwargs):
        for frame in super().iter_frames(*args, **kwargs):
            cls = type(self)
            cls.log.append((frame.timestamp, read_barcode(frame.image)))
            if id(frame.image) not in cls.alive:
                cls.alive.add(id(frame.image))
                weakref.finalize(frame.image, cls.alive.discard, id(frame.image))
            cls.peak = max(cls.peak, len(cls.alive))
            yield frame


@pytest.fixture
def recorder(monkeypatch):
    Recorder.log, Recorder.alive, Recorder.peak = [], set(), 0
    monkeypatch.setattr(slide, "VideoReader", Recorder)
    return Recorder


def test_prompt_times_and_segments_come_from_the_frames_decoded(llama3, tiny_cfg, make_video, recorder):
    """25 fps, a frame every 1.3 s: int(1.3 * 25) = 32 frames apart, at 0, 1.28, 2.56, 3.84 s."""
    video = make_video("slide25.mp4", n=100, fps=25)
    session = fake_session(llama3, tiny_cfg, echo)
    [result] = driver.run(session, [slide_task(plan_video(video, "slide", seconds=1.3), LLAVA, slide_options(session))])
    times = [t for t, _ in recorder.log]
    assert times == pytest.approx([0.0, 1.28, 2.56, 3.84])
    assert [code for _, code in recorder.log] == [0, 32, 64, 96]  # the frames shown are the frames timed
    assert result.frame_timestamps == pytest.approx(times)
    assert [t for s in result.segments for t in (s.start, s.end)] == pytest.approx(
        [0.0, 0.0, 0.0, 1.28, 1.28, 2.56, 2.56, 3.84])
    # prompts: whole seconds of those times (1.28 -> 1, 2.56 -> 3, 3.84 -> 4), frames numbered from 0
    assert [s.text for s in result.segments] == ["first", "pair 0@0 1@1", "pair 1@1 2@3", "pair 2@3 3@4"]
    summary = session.engine.prompt_text(session.engine.requests[-1])
    assert ("Video frame 1 at 0.00 Second(s) description: first\nVideo frame 2 at 1.00 Second(s) description: pair "
            "0@0 1@1\nVideo frame 3 at 3.00 Second(s) description: pair 1@1 2@3\nVideo frame 4 at 4.00 Second(s) "
            "description: pair 2@3 3@4\n<|eot_id|>") in summary


def test_answers_pair_with_their_segments_when_requests_finish_out_of_order(llama3, tiny_cfg, make_video):
    """Two videos through one driver; the first request takes 6 engine steps and the others 1 to 3, so answers
    arrive out of submission order. Every segment gets its own pair's answer, every pair prompt its own video's
    previous caption (the reference batch script pairs them by set iteration order)."""
    a, b = make_video("slide_a.mp4", n=100, fps=25), make_video("slide_b.mp4", n=150, fps=25)
    arrivals = []

    def steps(request):
        arrivals.append(request.request_id)
        return 6 if len(arrivals) == 1 else 1 + len(arrivals) % 3

    session = fake_session(llama3, tiny_cfg, echo, steps=steps)
    options = slide_options(session)
    results = driver.run(session, [slide_task(plan_video(a, "slide", seconds=1.0), LLAVA, options),
                                   slide_task(plan_video(b, "slide", seconds=1.5), LLAVA, options)])
    engine = session.engine
    submitted = [r.request_id for r in engine.requests]
    assert engine.finished != sorted(engine.finished, key=submitted.index)  # really out of order
    assert engine.max_running >= 2  # the two videos' requests shared engine steps
    for result in results:
        assert result.segments[0].text == "first"
        for k, seg in enumerate(result.segments[1:]):
            assert seg.text == f"pair {k}@{int(seg.start + 0.5)} {k + 1}@{int(seg.end + 0.5)}"
    # every pair prompt quotes the caption before it in the same video
    for request in engine.requests:
        prompt = engine.prompt_text(request)
        if m := PAIR.search(prompt):
            before = prompt.split("What happend before is: ")[1].split("<|eot_id|>")[0]
            i = int(m.group(1))
            expected = "first" if i == 0 else "pair {}@".format(i - 1)
            assert before.startswith(expected), (prompt, before)
    assert len(results[0].segments) == 4 and len(results[1].segments) == 5


def test_out_of_order_on_the_real_engine_matches_each_video_alone(tiny_base_captioner, make_video):
    """Two videos with different answer lengths share the tiny model's engine; each gets exactly the captions it
    gets when captioned alone."""
    a, b = make_video("slide_c.mp4", n=60, fps=10), make_video("slide_d.mp4", n=80, fps=10)
    session = captioning.session_of(tiny_base_captioner)
    finished = []
    generate = session.engine.generate

    def logging_generate(requests):
        for out in generate(requests):
            if out.finished:
                finished.append(out.request_id)
            yield out

    plans = [plan_video(a, "slide", seconds=2.0), plan_video(b, "slide", seconds=2.0)]
    alone = [driver.run(session, [slide_task(p, LLAVA, slide_options(session, n))])[0]
             for p, n in zip(plans, (12, 2))]
    session.engine.generate = logging_generate
    try:
        together = driver.run(session, [slide_task(p, LLAVA, slide_options(session, n))
                                        for p, n in zip(plans, (12, 2))])
    finally:
        del session.engine.generate
    assert finished != sorted(finished)  # b's short answers overtook a's long ones
    for one, both in zip(alone, together):
        assert [s.text for s in both.segments] == [s.text for s in one.segments]
        assert both.caption == one.caption and both.frame_timestamps == one.frame_timestamps


def test_ten_minute_video_holds_at_most_two_frames(tiny_ckpt, tiny_cfg, video_dir, recorder):
    """600 s at 1 fps (80x48): 300 frames, one every 2 s, through the real processor (the engine is the stand-in:
    the model is not what is measured). Frames alive at once are counted with weak references on the decoded
    arrays, not from the task's own counter."""
    from videocap.models.llava_next.prompt import load_tokenizer

    path = video_dir / "ten_minutes.mp4"
    if not path.exists():
        write_video(path, (barcode_frame(i, 80, 48) for i in range(600)), fps=1, codec="libx264",
                    options={"g": "30"})
    session = fake_session(load_tokenizer(tiny_ckpt), tiny_cfg, lambda p, r: "a")
    t0 = time.perf_counter()
    [result] = driver.run(session, [slide_task(plan_video(path, "slide"), LLAVA, slide_options(session))])
    assert len(result.frame_timestamps) == 300 and result.frame_timestamps[-1] == pytest.approx(598.0)
    assert len(result.segments) == 300 and result.segments[-1].end == pytest.approx(598.0)
    assert [code for _, code in recorder.log] == list(range(0, 600, 2))
    assert recorder.peak <= 2 and result.peak_frames_held == 2
    assert result.requests >= 301
    assert time.perf_counter() - t0 < 60


def test_hierarchical_summary_with_a_tiny_context(llama3, tiny_cfg, h264):
    """8 captions, a context of 170 tokens: the captions are summarized in groups, then the group summaries; every
    request fits, and only the final one carries the instruction."""
    session = fake_session(llama3, tiny_cfg, lambda p, r: "summary" if "Summarize" in p else "A red square moves.",
                           limit=170)
    options = slide_options(session, max_new_tokens=16, instruction="One sentence.")
    [result] = driver.run(session, [slide_task(plan_video(h264, "slide", seconds=0.5), LLAVA, options)])
    assert len(result.segments) == 8 and result.summary_levels >= 2
    summaries = [r for r in session.engine.requests if r.images is None]
    assert len(summaries) >= 3
    for request in summaries:
        assert len(request.token_ids) + 16 <= 170
    texts = [session.engine.prompt_text(r) for r in summaries]
    assert all("One sentence." not in t for t in texts[:-1]) and texts[-1].count("One sentence.") == 1
    # the top level summarizes group summaries, timed at each group's last caption
    assert "description: summary\n" in texts[-1] and "A red square" not in texts[-1]
    assert result.caption == "summary"


def test_summary_that_cannot_shrink_is_refused(llama3, tiny_cfg, h264):
    session = fake_session(llama3, tiny_cfg, lambda p, r: "word " * 40, limit=150)
    with pytest.raises(PromptTooLongError, match="no two captions fit"):
        driver.run(session, [slide_task(plan_video(h264, "slide", seconds=1.0), LLAVA,
                                        slide_options(session, max_new_tokens=4))])


def test_hierarchical_summary_on_the_tiny_model(tiny_base_captioner, h264):
    result = tiny_base_captioner.caption(str(h264), "slide", seconds=0.5, max_new_tokens=6, context_limit=300)
    assert result.summary_levels >= 2 and len(result.segments) == 8


def test_a_frame_decoded_twice_is_not_a_pair(llama3, tiny_cfg, h264, recorder):
    """Keyframe seek on h264 (a keyframe every 1 s), a frame every 0.5 s: the 8 planned times decode as the frames
    at 0, 1, 2, 3 s, most of them twice. A repeated frame is skipped (with a warning), never sent as a pair of one
    frame with itself, and no more than two frames are alive at once."""
    from videocap.video import SeekMode

    session = fake_session(llama3, tiny_cfg, echo)
    plan = plan_video(h264, "slide", seconds=0.5, seek=SeekMode.KEYFRAME)
    assert len(plan.timestamps) == 8
    [result] = driver.run(session, [slide_task(plan, LLAVA, slide_options(session))])
    decoded = [t for t, _ in recorder.log]
    assert len(decoded) == 8 and len(set(decoded)) < len(decoded)  # repeats really happened
    assert result.frame_timestamps == tuple(sorted(set(decoded)))
    assert all(s.start < s.end for s in result.segments[1:])
    assert [s.text for s in result.segments[1:]] == [
        f"pair {k}@{int(s.start + 0.5)} {k + 1}@{int(s.end + 0.5)}" for k, s in enumerate(result.segments[1:])]
    assert result.requests == len(result.frame_timestamps) + 1
    assert any("decoded as the frame before" in w for w in result.warnings)
    assert recorder.peak <= 2 and result.peak_frames_held == 2


def test_group_summaries_finishing_out_of_order_keep_their_groups_order(llama3, tiny_cfg, h264):
    """A hierarchical round asks for several group summaries at once; the first group's finishes last. The top
    summary still lists each group's summary in video order, timed at that group's last caption."""
    DESC = re.compile(r"Video frame \d+ at (\d+)\.00 Second\(s\) description: (.*)")

    def answer(prompt, request):
        if "Summarize" in prompt:  # name the group by its first and last captions and the last one's time
            lines = DESC.findall(prompt)
            return f"G[{lines[0][1]}|{lines[-1][1]}#{lines[-1][0]}]"
        return echo(prompt, request)

    summaries = []

    def steps(request):
        if request.images is not None:
            return 1
        summaries.append(request.request_id)
        return 20 - len(summaries)  # each summary of a round finishes before the one submitted before it

    session = fake_session(llama3, tiny_cfg, answer, steps=steps, limit=200)
    options = slide_options(session, max_new_tokens=16)
    [result] = driver.run(session, [slide_task(plan_video(h264, "slide", seconds=0.5), LLAVA, options)])
    assert result.summary_levels >= 2
    engine = session.engine
    first_round = [r for r in engine.requests if r.images is None][:-1]
    assert len(first_round) >= 2
    done = [rid for rid in engine.finished if rid in {r.request_id for r in first_round}]
    assert done != sorted(done)  # the round really finished out of order
    top = DESC.findall(engine.prompt_text(engine.requests[-1]))
    texts = [s.text for s in result.segments]
    spans, k = [], 0
    for t, text in top:  # each line: a group summary (or a caption passed through), in video order
        if text.startswith("G["):
            body, at = text[2:-1].rsplit("#", 1)
            first, last = body.split("|")
            assert texts.index(first) == k, (k, top)
            k = texts.index(last)
            assert int(t) == int(at) == int(result.segments[k].end + 0.5)
        else:
            assert texts.index(text) == k
        spans.append(t)
        k += 1
    assert k == len(texts) and spans == sorted(spans, key=int)
