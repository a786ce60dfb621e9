"""Sampling strategies against hand-computed cases of the reference formulas."""

import pytest

from videocap.errors import WindowError
from videocap.video.sampling import Every, Fps, Timeline, Uniform, Uniform16, frame_range, plan


def indices(strategy, n, fps=30.0, start=None, end=None, times=None):
    return list(plan(strategy, Timeline(n, fps, times), start, end).indices)


def test_uniform16_matches_the_seed_formula_by_hand():
    # N=300: seg = 299/16 = 18.6875, start = int(9.34375) = 9, k-th = 9 + round(18.6875 k)
    assert indices(Uniform16(), 300) == [9, 28, 46, 65, 84, 102, 121, 140, 159, 177, 196, 215, 233, 252, 271, 289]


def test_uniform16_rounds_half_to_even_like_numpy():
    # N=9: seg = 8/16 = 0.5; round(0.5 k) for k = 1, 3, 5, 7 hits .5 and goes to the even neighbour
    assert indices(Uniform16(), 9) == [0, 0, 1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 7, 8]


def test_uniform16_takes_any_n():
    # N=240, n=4: seg = 239/4 = 59.75, start = 29, offsets 0, 60 (59.75), 120 (119.5 -> even), 179 (179.25)
    assert indices(Uniform16(4), 240) == [29, 89, 149, 208]


def test_one_frame_video_repeats_its_frame():
    assert indices(Uniform16(), 1) == [0] * 16
    assert indices(Uniform(5), 1) == [0] * 5


def test_uniform_includes_first_and_last_like_get_seq_frames():
    # total 100, n 8: seg = 100/6; middle k = (round(seg k) + round(seg (k+1))) // 2
    assert indices(Uniform(8), 100) == [0, 8, 25, 41, 58, 75, 91, 99]
    assert indices(Uniform(2), 100) == [0, 99]
    assert indices(Uniform(1), 100) == [0]


def test_uniform_in_a_window():
    # window 1 s..3 s at 30 fps -> frames [30, 90); n 4: seg = 60/2 = 30 -> middles 30+15, 30+45
    assert indices(Uniform(4), 300, start=1, end=3) == [30, 45, 75, 89]


def test_every_two_seconds_like_the_captioner_demo():
    assert indices(Every(2), 300) == [0, 60, 120, 180, 240]
    # window [3, 9.5]: start int(3*30)=90, end min(int(9.5*30), 300)=285
    assert indices(Every(2), 300, start=3, end=9.5) == [90, 150, 210, 270]
    # int(2 * 29.97) = 59 frames, not 60
    assert indices(Every(2), 150, fps=29.97) == [0, 59, 118]


def test_every_steps_at_least_one_frame():
    assert indices(Every(0.01), 5) == [0, 1, 2, 3, 4]
    assert indices(Every(2), 4, fps=0.4) == [0, 1, 2, 3]  # int(2 * 0.4) = 0 -> 1


def test_fps_samples_interval_centres():
    assert indices(Fps(1), 300) == [15, 45, 75, 105, 135, 165, 195, 225, 255, 285]


def test_fps_spreads_max_frames_over_the_whole_window():
    # delta = 10 s / 4 = 2.5 s: centres 1.25, 3.75, 6.25, 8.75 s -> 37.5, 112.5, 187.5, 262.5 -> half to even
    assert indices(Fps(1, max_frames=4), 300) == [38, 112, 188, 262]


def test_timestamps_are_frame_times():
    p = plan(Every(1), Timeline(90, 30.0))
    assert p.timestamps == (0.0, 1.0, 2.0)


def test_variable_frame_rate_timeline_uses_exact_times():
    times = (0.0, 0.1, 0.15, 0.5, 0.55, 1.0, 1.2)
    t = Timeline(7, 6.0, times)
    assert t.index_at(0.5) == 3 and t.index_at(0.52) == 3 and t.index_at(0.0) == 0
    p = plan(Uniform(3), t)
    assert p.indices == (0, 3, 6) and p.timestamps == (0.0, 0.5, 1.2)
    assert frame_range(t, 0.5, 1.1) == (3, 5)


@pytest.mark.parametrize(
    "start,end,message",
    [
        (12.0, None, "only 10.000 s long"),
        (3.0, 2.0, "empty"),
        (-1.0, None, "before the start"),
        (None, 0.0, "before the start"),
        (9.99, 9.995, "holds no frame"),
    ],
)
def test_windows_outside_the_video_are_errors(start, end, message):
    with pytest.raises(WindowError, match=message):
        plan(Uniform16(), Timeline(300, 30.0), start, end)


def test_window_end_past_the_video_is_clamped():
    assert indices(Every(2), 300, start=8, end=60) == [240]


def test_bad_strategy_parameters_are_rejected():
    for make in (lambda: Uniform16(0), lambda: Uniform(-1), lambda: Every(0), lambda: Fps(0), lambda: Fps(1, 0)):
        with pytest.raises(ValueError):
            make()
