"""Container quirks: Matroska keyframes known only from its packets, MPEG-TS seeking by decode time,
MP4 edit lists (files cut by stream copy), AVI's unreliable presentation stamps, stated track lengths."""

import av
import pytest
from helpers import read_barcode

from videocap.video import SeekMode, Uniform16, VideoReader, probe, sample

GOP = {"g": "30", "keyint_min": "30", "sc_threshold": "0"}


def shown_frames(frames, fps=30):
    """(frame number from the reported time, frame number the picture shows) for each sampled frame."""
    return [(round(t * fps), read_barcode(image)) for t, image in zip(frames.timestamps, frames.images)]


@pytest.mark.parametrize("name,codec,options", [
    ("keys.mkv", "libx264", GOP),
    ("keys.webm", "libvpx-vp9", {"g": "30"}),
    ("bframes.ts", "libx264", GOP),
    ("bframes.avi", "mpeg4", {"bf": "2", "qscale": "2", "g": "30"}),
])
@pytest.mark.parametrize("mode", list(SeekMode))
def test_every_frame_is_the_one_its_time_says(make_video, name, codec, options, mode):
    path = make_video(name, n=300, codec=codec, options=options)
    frames = sample(path, Uniform16(), mode=mode)
    assert all(at == shows for at, shows in shown_frames(frames))
    if mode is SeekMode.EXACT:
        assert [shows for _, shows in shown_frames(frames)] == list(frames.indices)
    else:  # the nearest of the keyframes, every 30 frames (the MPEG-4 encoder also closes on one)
        assert len(set(frames.timestamps)) >= 8
        assert all(shows % 30 == 0 or shows == 299 for _, shows in shown_frames(frames))


def test_matroska_keyframes_come_from_its_packets(make_video):
    # FFmpeg reads Matroska's cues only on a first seek: the keyframes must come from the packet scan.
    path = make_video("keys.mkv", n=300, options=GOP)
    with VideoReader(path) as reader:
        assert len(reader.facts.keys.seconds) == 10


@pytest.fixture(scope="module")
def cut_by_copy(make_video, tmp_path_factory):
    """What `ffmpeg -ss 2.5 -i in.mp4 -c copy out.mp4` makes: packets from the keyframe at 2 s, the frames
    before 2.5 s hidden by an edit list."""
    source = make_video("uncut.mp4", n=150, options={"g": "60", "keyint_min": "60", "sc_threshold": "0"})
    out = tmp_path_factory.mktemp("cut") / "cut_by_copy.mp4"
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        shift = round(2.5 / stream_in.time_base)
        for packet in src.demux(stream_in):
            if packet.size == 0 or packet.dts < round(2.0 / stream_in.time_base) - 1024:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = stream_out
            dst.mux(packet)
    return out


def test_file_cut_by_stream_copy(cut_by_copy):
    info = probe(cut_by_copy)
    assert info.num_frames == 75 and info.duration == pytest.approx(2.5) and not info.truncated
    exact = sample(cut_by_copy, Uniform16())
    assert [shows - at for at, shows in shown_frames(exact)] == [75] * 16  # frame 75 is shown first
    keyframes = sample(cut_by_copy, Uniform16(), mode=SeekMode.KEYFRAME)
    # the keyframe at 2 s is hidden: the first frame shown after it stands in for it
    assert {shows for _, shows in shown_frames(keyframes)} == {75, 120}


def test_stated_track_length_with_offset_start_and_longer_audio(make_video, tmp_path):
    with_audio = make_video("longaudio.mkv", n=60, audio=True, options=GOP)
    info = probe(with_audio)
    assert info.duration == pytest.approx(2.0, abs=0.05) and not info.truncated and info.has_audio
    offset = tmp_path / "offset.mkv"
    with av.open(str(make_video("two_seconds.mkv", n=60, options=GOP))) as src, av.open(str(offset), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        for packet in src.demux(stream_in):
            if packet.size:
                packet.pts += 1000  # starts at 1 s
                packet.dts = None if packet.dts is None else packet.dts + 1000
                packet.stream = stream_out
                dst.mux(packet)
    info = probe(offset)
    assert info.duration == pytest.approx(2.0, abs=0.05) and not info.truncated
    frames = sample(offset, Uniform16())
    assert [shows for _, shows in shown_frames(frames)] == list(frames.indices)
