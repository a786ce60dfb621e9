"""Decoding frames at timestamps: exact and keyframe modes, codecs, rotation, VFR, bit depth, downscale."""

import numpy as np
import pytest
from helpers import H, W, read_barcode

from videocap.video import CountSource, Every, SeekMode, Uniform, Uniform16, VideoReader, probe, sample


def barcodes(frames):
    return [read_barcode(image) for image in frames.images]


def test_exact_mode_returns_the_sampled_frames(h264):
    frames = sample(h264, Uniform16())
    assert barcodes(frames) == list(frames.indices)
    assert frames.timestamps == pytest.approx([i / 30 for i in frames.indices])
    assert len(frames.images) == 16
    assert all(im.shape == (H, W, 3) and im.dtype == np.uint8 for im in frames.images)


def test_exact_mode_dense_and_backwards_requests(h264):
    with VideoReader(h264) as reader:
        wanted = [0.5, 0.0, 3.9, 1.0, 1.0, 2.0 - 1 / 30, 2.0, 0.5 + 1 / 30]
        got = reader.read(wanted)
    assert [read_barcode(f.image) for f in got] == [15, 0, 117, 30, 30, 59, 60, 16]
    assert [f.requested for f in got] == wanted


def test_exact_mode_picks_the_nearest_frame_between_frames(h264):
    with VideoReader(h264) as reader:
        got = reader.read([1.01, 1.02, 3.99])  # frames at 1.0, 1.0333..., and the last one at 3.9666...
    assert [read_barcode(f.image) for f in got] == [30, 31, 119]
    assert got[0].timestamp == pytest.approx(1.0)


def test_keyframe_mode_takes_nearest_keyframes_and_reports_their_times(h264):
    frames = sample(h264, Uniform16(), mode=SeekMode.KEYFRAME)
    codes = barcodes(frames)
    assert all(code % 30 == 0 for code in codes)  # keyframes every 30 frames
    assert frames.timestamps == pytest.approx([code / 30 for code in codes])
    # 4 keyframes for 16 targets: frames repeat, each the keyframe nearest its target
    assert sorted(set(codes)) == [0, 30, 60, 90]
    for requested, code in zip(frames.requested, codes):
        assert code == min([0, 30, 60, 90], key=lambda k: abs(k / 30 - requested))


@pytest.mark.parametrize(
    "name,codec,kwargs",
    [
        ("hevc.mp4", "libx265", {}),
        ("vp9.webm", "libvpx-vp9", {}),
        ("av1.mkv", "libsvtav1", {}),
        ("h264.mkv", "libx264", {}),
        ("h264.mov", "libx264", {}),
        ("mpeg4.avi", "mpeg4", {"options": {"qscale": "2"}}),
    ],
)
def test_codecs_and_containers(make_video, name, codec, kwargs):
    path = make_video(name, n=45, codec=codec, **kwargs)
    info = probe(path)
    assert info.num_frames == 45 and info.fps == pytest.approx(30)
    frames = sample(path, Uniform(5))
    assert barcodes(frames) == [0, 7, 22, 37, 44]  # get_seq_frames over 45 frames


def test_gif(make_video):
    path = make_video("anim.gif", n=20, fps=10, codec="gif", pix_fmt="rgb8")
    info = probe(path)
    assert info.num_frames == 20 and info.fps == pytest.approx(10)
    frames = sample(path, Uniform(3))
    assert barcodes(frames) == [0, 10, 19]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(make_video, rotation):
    path = make_video(f"rot{rotation}.mp4", n=10, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((H, W) if rotation in (90, 270) else (W, H))
    image = sample(path, Uniform(1)).images[0]
    assert image.shape == (info.height, info.width, 3)
    # the red marker sits top-left in the stored picture; turning it clockwise moves it clockwise around
    corner = {90: image[:20, -20:], 180: image[-20:, -20:], 270: image[-20:, :20]}[rotation]
    assert corner[..., 0].mean() > 180 and corner[..., 1].mean() < 80


def test_variable_frame_rate_timestamps(make_video):
    times = [round(0.04 * i + (0.5 if i >= 20 else 0.0) + (0.013 if i % 2 else 0.0), 3) for i in range(40)]
    path = make_video("vfr.mp4", n=40, times=times)
    info = probe(path)
    assert info.variable_frame_rate
    frames = sample(path, Every(0.5))  # every int(0.5 * avg fps) frames, at their true times
    assert frames.timestamps == pytest.approx([times[i] for i in frames.indices], abs=1e-4)
    assert barcodes(frames) == list(frames.indices)
    with VideoReader(path) as reader:
        got = reader.read([times[25]])[0]
    assert read_barcode(got.image) == 25 and got.timestamp == pytest.approx(times[25], abs=1e-4)


def test_ten_bit_source_becomes_8bit_rgb(make_video):
    path = make_video("hevc10.mp4", n=10, codec="libx265", pix_fmt="yuv420p10le")
    info = probe(path)
    assert info.bit_depth == 10 and info.pix_fmt == "yuv420p10le"
    frames = sample(path, Uniform(1))
    assert frames.info.bit_depth == 10 and frames.info.pix_fmt == "yuv420p10le"  # filled in from the frame
    image = frames.images[0]
    assert image.dtype == np.uint8
    red = image[10:50, 10:60].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50
    assert read_barcode(image) == 0


def test_max_side_downscales_during_conversion(h264, make_video):
    frames = sample(h264, Uniform(3), max_side=160)
    assert [im.shape for im in frames.images] == [(120, 160, 3)] * 3
    assert barcodes(frames) == [0, 60, 119]
    rotated = make_video("rot90.mp4", n=10, rotation=90)
    assert sample(rotated, Uniform(1), max_side=100).images[0].shape == (100, 75, 3)
    assert sample(h264, Uniform(1), max_side=4000).images[0].shape == (H, W, 3)


def test_frame_count_sources(make_video, h264):
    assert probe(h264).num_frames_source is CountSource.CONTAINER
    mkv = make_video("count.mkv", n=33)
    counted = probe(mkv)
    assert counted.num_frames == 33 and counted.num_frames_source is CountSource.COUNTED
    estimated = probe(mkv, count_frames=False)
    assert estimated.num_frames_source is CountSource.ESTIMATED and abs(estimated.num_frames - 33) <= 1


def test_audio_and_metadata(make_video, h264):
    with_audio = make_video("audio.mp4", n=30, audio=True)
    assert probe(with_audio).has_audio and not probe(h264).has_audio
    info = probe(h264)
    assert (info.codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", W, H)
    assert info.duration == pytest.approx(4.0) and not info.truncated


def test_iter_frames_streams_in_order(h264):
    with VideoReader(h264) as reader:
        codes = [read_barcode(f.image) for f in reader.iter_frames([i / 2 for i in range(8)])]
        assert codes == [i * 15 for i in range(8)]
        with pytest.raises(ValueError):
            list(reader.iter_frames([1.0, 0.5]))


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_results_do_not_depend_on_the_number_of_threads(h264, threads):
    for mode in SeekMode:
        frames = sample(h264, Uniform16(), mode=mode, threads=threads)
        reference = sample(h264, Uniform16(), mode=mode, threads=1)
        assert frames.timestamps == reference.timestamps
        assert all(np.array_equal(a, b) for a, b in zip(frames.images, reference.images))
    assert barcodes(sample(h264, Uniform16(), threads=threads)) == list(sample(h264, Uniform16()).indices)


def test_hdr_tagged_ten_bit_source_converts_with_its_own_matrix(make_video):
    # BT.2020 matrix, PQ transfer, as HDR10 phones write: the RGB comes out 8-bit through the BT.2020 matrix
    # (no tone mapping, as FFmpeg's scale filter does), so the red marker round-trips to red.
    params = "log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc"
    path = make_video("hdr10.mp4", n=10, codec="libx265", pix_fmt="yuv420p10le", options={"x265-params": params})
    frames = sample(path, Uniform(3))
    red = frames.images[0][10:50, 10:60].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50
    assert barcodes(frames) == [0, 5, 9]


def test_one_frame_video_gives_that_frame_n_times(make_video):
    path = make_video("single.mp4", n=1)
    frames = sample(path, Uniform16())
    assert frames.indices == (0,) * 16 and frames.timestamps == (0.0,) * 16
    assert barcodes(frames) == [0] * 16
