"""Semantic keyframes: a tiny random CLIP in OpenAI's CLIPModel layout gives transformers' features through
videocap's loader and Hub cache; the preprocessing is transformers' CLIP image processor; the selection rule
(cuts, leading solid frames, drift, last frame, windows, dataset length rules) on generated clips with stub features
where a random CLIP's similarities would mean nothing; `videocap frames --strategy keyframes`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakehub import FakeHub, point_hf_at
from helpers import read_barcode
from safetensors.torch import load_file

from videocap.cli import main
from videocap.errors import (
    CheckpointError,
    KeyframeSettingsError,
    UnsafeCheckpointError,
    VideoNotFoundError,
    VideoTooShortError,
    WindowError,
)
from videocap.models.clip_vision import ClipPreprocessConfig, load_clip_config, preprocess
from videocap.video import SeekMode, VideoReader
from videocap.video.encode import write_video
from videocap.video.keyframes import KeyframeSelector, interval_frames, is_solid

transformers = pytest.importorskip("transformers")

# OpenAI's preprocessor_config.json for clip-vit-large-patch14-336 (the old feature-extractor format: sizes as ints).
OPENAI_336 = {
    "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336,
}
TINY_SIDE = 56  # 4 x 4 patches of 14 px
REPO = "org/tiny-clip"
W, H, FPS = 64, 48, 30


# -- a tiny CLIP --------------------------------------------------------------------------------------------------


def make_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=TINY_SIDE, patch_size=14),
        projection_dim=8,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # larger than the init, so that a wrong layer or norm shows
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel saved by transformers (config.json with text and vision halves, model.safetensors)
    and OpenAI's preprocessor config at the tiny size."""
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    make_clip().save_pretrained(folder)
    tiny = {**OPENAI_336, "size": TINY_SIDE, "crop_size": TINY_SIDE}
    (folder / "preprocessor_config.json").write_text(json.dumps(tiny))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def pickled(folder: Path) -> dict[str, bytes]:
    files = files_of(folder)
    tensors = load_file(folder / "model.safetensors")
    # OpenAI's 2022 pytorch_model.bin also holds the position_ids buffers older transformers saved
    tensors["vision_model.embeddings.position_ids"] = torch.arange((TINY_SIDE // 14) ** 2 + 1)[None]
    tensors["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    del files["model.safetensors"]
    return {**files, "pytorch_model.bin": buffer.getvalue()}


# -- generated clips ----------------------------------------------------------------------------------------------

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "black": (0, 0, 0)}


def scene(colour: str, k: int) -> np.ndarray:
    """A frame of a scene: its colour with a moving texture (never a single colour), or plain black."""
    base = np.zeros((H, W, 3), np.uint8) + np.array(COLOURS[colour], np.uint8)
    if colour != "black":
        y, x = np.mgrid[0:H, 0:W]
        base[((x + 2 * k) // 8 + y // 8) % 2 == 0] //= 2
    return base


def clip(path: Path, scenes: list[tuple[str, int]]) -> Path:
    frames = [scene(colour, k) for colour, n in scenes for k in range(n)]
    write_video(path, frames, fps=FPS, options={"crf": "12", "g": "30"})
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("keyframe-videos")
    return {
        "cuts": clip(out / "cuts.mp4", [("red", 60), ("green", 120), ("blue", 120)]),  # cuts at 2 s and 6 s
        "black": clip(out / "black.mp4", [("black", 15), ("red", 90), ("green", 95)]),
        "all-black-start": clip(out / "all-black.mp4", [("black", 80), ("red", 100)]),
        "late-cut": clip(out / "late-cut.mp4", [("red", 120), ("green", 50)]),
        "one-scene": clip(out / "one-scene.mp4", [("red", 100)]),
    }


def colour_features(images) -> torch.Tensor:
    """A stub feature that means something: the frame's centred mean colour on a 2 x 2 grid (12 numbers)."""
    out = []
    for image in images:
        h, w = image.shape[0] // 2, image.shape[1] // 2
        cells = [image[i * h:(i + 1) * h, j * w:(j + 1) * w].reshape(-1, 3).mean(0) for i in (0, 1) for j in (0, 1)]
        out.append(np.concatenate(cells) - 64.0)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def stub(embed=colour_features, **kwargs) -> KeyframeSelector:
    return KeyframeSelector(embed, progress=False, **kwargs)


# -- the CLIP side ------------------------------------------------------------------------------------------------


def test_features_equal_transformers_clip_vision_model(clip_dir, h264):
    """The feature is CLIPVisionModel's last_hidden_state[:, 0] (= hidden_states[-1][:, 0], the script's), before
    the post-layernorm, on the same pixels."""
    from transformers import CLIPVisionModel

    selector = KeyframeSelector.load(clip_dir, device="cpu", progress=False)
    with VideoReader(h264) as reader:
        frames = [f.image for f in reader.read([0.0, 1.0, 2.5])]
    ours = selector.embed(frames)
    pixels = preprocess(frames, load_clip_config(clip_dir)[1])
    oracle = CLIPVisionModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        out = oracle(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(ours, out.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, out.hidden_states[-1][:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, out.pooler_output, atol=1e-2)  # the pooler output is post-layernorm


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (1280, 720), (337, 2000), (336, 336)])
def test_preprocessing_equals_transformers_clip_image_processor(size, h264):
    """OpenAI's 336 preprocessor config through transformers' PIL CLIP processor (the 4.x CLIPImageProcessor the
    script ran) gives the same pixels as ours, on decoded frames resized to odd shapes."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    with VideoReader(h264) as reader:
        frames = [np.asarray(Image.fromarray(f.image).resize(size)) for f in reader.read([0.5, 3.0])]
    cfg = ClipPreprocessConfig.from_json(OPENAI_336, 336)
    assert (cfg.shortest_edge, cfg.crop, cfg.resample) == (336, (336, 336), 3)
    ours = preprocess(frames, cfg)
    theirs = CLIPImageProcessorPil(**OPENAI_336)(frames, return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (2, 3, 336, 336) and ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_config_from_openai_layouts(clip_dir, tmp_path):
    vision, pre = load_clip_config(clip_dir)
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_layers) == (TINY_SIDE, 14, 32, 2)
    assert pre.crop == (TINY_SIDE, TINY_SIDE) and pre.mean == tuple(OPENAI_336["image_mean"])
    # Old CLIP configs carry vision_config_dict, which transformers lets win over vision_config.
    old = tmp_path / "old"
    old.mkdir()
    raw = json.loads((clip_dir / "config.json").read_text())
    raw["vision_config"]["image_size"] = 224
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "patch_size")
    raw["vision_config_dict"] = {**{k: raw["vision_config"][k] for k in keys}, "image_size": TINY_SIDE}
    (old / "config.json").write_text(json.dumps(raw))
    assert load_clip_config(old)[0] == vision
    assert load_clip_config(old)[0].image_size == TINY_SIDE
    assert load_clip_config(old)[1].crop == (TINY_SIDE, TINY_SIDE)  # no preprocessor config: the tower's size
    (old / "config.json").write_text(json.dumps({"model_type": "llava_next", "vision_config": raw["vision_config"]}))
    with pytest.raises(CheckpointError, match="not a CLIP model"):
        load_clip_config(old)


def test_load_from_the_hub_then_offline_from_the_cache(clip_dir, h264, monkeypatch):
    hub = point_hf_at(FakeHub({REPO: {"main": files_of(clip_dir)}}).start(), monkeypatch)
    try:
        first = KeyframeSelector.load(REPO, device="cpu", progress=False)
        assert any(p.endswith("/model.safetensors") for p in hub.downloads())
    finally:
        hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = KeyframeSelector.load(REPO, device="cpu", progress=False)  # the server is gone: the cache serves
    with VideoReader(h264) as reader:
        frames = [f.image for f in reader.read([0.0, 2.0])]
    torch.testing.assert_close(first.embed(frames), again.embed(frames), rtol=0, atol=0)
    assert again.select(h264) [0] == 0.0


def test_a_saved_clip_vision_model_loads_too(clip_dir, tmp_path, h264):
    """transformers 5 saves a CLIPVisionModel without the `vision_model.` prefix."""
    from transformers import CLIPVisionModel

    loaded = CLIPVisionModel.from_pretrained(clip_dir)
    oracle = CLIPVisionModel(loaded.config).eval()  # a model built afresh saves its own names, not the loaded ones
    oracle.load_state_dict(loaded.state_dict())
    oracle.save_pretrained(tmp_path / "vision")
    assert not any(k.startswith("vision_model.") for k in load_file(tmp_path / "vision" / "model.safetensors"))
    (tmp_path / "vision" / "preprocessor_config.json").write_bytes((clip_dir / "preprocessor_config.json").read_bytes())
    with VideoReader(h264) as reader:
        frames = [f.image for f in reader.read([0.5, 3.5])]
    ours = KeyframeSelector.load(tmp_path / "vision", device="cpu", progress=False).embed(frames)
    with torch.no_grad():
        theirs = oracle(pixel_values=preprocess(frames, load_clip_config(clip_dir)[1])).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_pickle_only_checkpoint_needs_allow_pickle(clip_dir, tmp_path, h264, monkeypatch):
    """openai/clip-vit-large-patch14-336 publishes only pytorch_model.bin: refused with a way out, then loaded."""
    hub = point_hf_at(FakeHub({REPO: {"main": pickled(clip_dir)}}).start(), monkeypatch)
    try:
        with pytest.raises(UnsafeCheckpointError) as refused:
            KeyframeSelector.load(REPO, device="cpu", progress=False)
        message = str(refused.value)
        assert "keyframe model" in message and "--allow-pickle" in message and "pytorch_model.bin" in message
        assert "\n" not in message
        selector = KeyframeSelector.load(REPO, device="cpu", progress=False, allow_pickle=True)
    finally:
        hub.stop()
    reference = KeyframeSelector.load(clip_dir, device="cpu", progress=False)
    with VideoReader(h264) as reader:
        frames = [f.image for f in reader.read([1.0])]
    torch.testing.assert_close(selector.embed(frames), reference.embed(frames), rtol=0, atol=0)


def test_a_checkpoint_missing_vision_weights_names_them(clip_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, data in files_of(clip_dir).items():
        (broken / name).write_bytes(data)
    from safetensors.torch import save_file

    tensors = load_file(clip_dir / "model.safetensors")
    del tensors["vision_model.post_layernorm.weight"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 1: post_layernorm\.weight"):
        KeyframeSelector.load(broken, device="cpu", progress=False)


# -- the rule -----------------------------------------------------------------------------------------------------


def test_keyframes_at_the_scene_cuts(videos):
    """Candidates every 60 frames (2 s at 30 fps); a cut makes the next candidate a keyframe; the last frame is
    kept, 120 frames after the last keyframe."""
    found = stub().scan(videos["cuts"])
    assert found.interval_frames == 60 and found.candidates == 5 and found.skipped_solid == 0
    assert found.indices == (0, 60, 180, 299)
    assert found.timestamps == pytest.approx((0.0, 2.0, 6.0, 299 / 30))
    assert found.similarities[0] is None and found.similarities[-1] is None
    assert all(s < 0.93 for s in found.similarities[1:-1])
    assert stub().select(videos["cuts"]) == list(found.timestamps)


def test_leading_black_frames_are_skipped(videos):
    found = stub().scan(videos["black"])
    assert found.skipped_solid == 15 and found.indices[0] == 15
    # candidates counted from the first content frame: 75 (still red), 135 (green since 105), 195; the last, 199
    assert found.indices == (15, 135, 199) and found.timestamps[0] == pytest.approx(0.5)


def test_solid_frames_are_skipped_at_most_one_interval(videos):
    """All of the first interval black: its last frame (59) becomes the first keyframe, as in the script."""
    found = stub().scan(videos["all-black-start"])
    assert found.skipped_solid == 59 and found.indices[0] == 59
    assert found.indices[1] == 119  # the first candidate, red, differs from black


def test_last_frame_only_when_an_interval_after_the_last_keyframe(videos):
    found = stub().scan(videos["late-cut"])  # 170 frames: red to 119, green from 120
    assert found.indices == (0, 120)  # 169 - 120 < 60: no last frame
    assert stub().scan(videos["one-scene"]).indices == (0, 99)  # nothing kept after the first: the last frame is
    assert stub().scan(videos["one-scene"], interval=10).indices == (0, 99)  # ...even within one interval


def barcode_features(angles):
    """Stub features from each frame's barcode index: a unit vector at `angles(index)` radians."""

    def embed(images):
        theta = torch.tensor([float(angles(read_barcode(image))) for image in images])
        return torch.stack([theta.cos(), theta.sin()], dim=1)

    return embed


def test_similarity_is_to_the_last_keyframe_not_the_previous_candidate(h264):
    """A slow drift (each candidate 0.3 rad from the one before, cosine 0.955 > 0.93) still makes a keyframe
    once it has drifted far enough from the last keyframe."""
    selector = stub(barcode_features(lambda i: 0.3 * (i // 15)))
    found = selector.scan(h264, interval=0.5)  # 120 frames: candidates at 15, 30, ..., 105
    assert found.interval_frames == 15
    assert found.indices == (0, 30, 60, 90, 119)
    assert found.similarities[1] == pytest.approx(np.cos(0.6), abs=1e-6)


def test_threshold_and_interval_options(h264):
    selector = stub(barcode_features(lambda i: 0.01 * i))
    assert selector.scan(h264, threshold=-1).indices == (0, 119)
    assert selector.scan(h264, threshold=1.0, interval=1).indices == (0, 30, 60, 90, 119)
    assert selector.scan(h264, threshold=np.cos(0.55), interval=1).indices == (0, 60, 119)


def test_embeds_in_small_batches_and_each_candidate_once(h264):
    sizes: list[int] = []
    inner = barcode_features(lambda i: 0.0)

    def embed(images):
        sizes.append(len(images))
        return inner(images)

    found = stub(embed, batch_size=3).scan(h264, interval=0.2)  # 6-frame steps: 20 candidates with the first
    assert found.candidates == 20 and sum(sizes) == 20 and max(sizes) <= 3 and sizes[0] == 1


def test_window_and_seek_modes(h264):
    selector = stub(barcode_features(lambda i: 0.6 * (i // 30)))
    found = selector.scan(h264, start=1.0, end=3.5, interval=1)  # frames 30..104; 104 is too close to 90
    assert found.indices == (30, 60, 90)
    assert selector.scan(h264, start=1.0, end=4, interval=1).indices == (30, 60, 90, 119)
    assert [read_barcode(f.image) for f in VideoReader(h264).read(list(found.timestamps))] == list(found.indices)
    fast = selector.scan(h264, seek=SeekMode.KEYFRAME, interval=1)  # keyframes every 30 frames in this clip
    assert fast.indices == (0, 30, 60, 90, 119)
    with pytest.raises(WindowError, match=str(h264)):
        selector.scan(h264, start=10)


def test_dataset_length_rules_are_options(videos):
    selector = stub()
    with pytest.raises(VideoTooShortError, match="not more than the 10 s minimum"):
        selector.scan(videos["cuts"], min_duration=10)  # 300 frames: the script wants more than 10 s
    assert selector.scan(videos["cuts"], min_duration=9.9).indices == (0, 60, 180, 299)
    cut = selector.scan(videos["cuts"], max_duration=4)  # frames 0..120, as the script reads while i / fps <= 4
    assert cut.indices == (0, 60, 120)


@pytest.mark.parametrize("bad", [dict(threshold=1.5), dict(threshold=float("nan")), dict(interval=0),
                                 dict(interval=float("inf")), dict(min_duration=-1)])
def test_bad_settings_are_typed_errors(bad, h264):
    with pytest.raises(KeyframeSettingsError):
        stub().select(h264, **bad)


def test_helpers():
    assert interval_frames(30, 2) == 60 and interval_frames(30000 / 1001, 2) == 60 and interval_frames(1, 0.1) == 1
    assert interval_frames(25, 0.5) == 13
    flat = np.full((8, 8, 3), (200, 10, 10), np.uint8)
    assert is_solid(flat)
    flat[0, 0, 1] = 12
    assert is_solid(flat)
    flat[0, 0, 1] = 13
    assert not is_solid(flat)


# -- the command line ---------------------------------------------------------------------------------------------


def test_cli_frames_keyframes(clip_dir, videos, tmp_path, capsys):
    out = tmp_path / "kf"
    assert main(["frames", str(videos["cuts"]), "--strategy", "keyframes", "--keyframe-model", str(clip_dir),
                 "--keyframe-threshold", "-1", "--dir", str(out), "--layout", "none", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["strategy"] == "keyframes" and result["indices"] == [0, 299]
    assert result["timestamps"] == pytest.approx([0.0, 299 / 30]) and len(list(out.iterdir())) == 2
    assert result["keyframes"]["model"] == str(clip_dir) and result["keyframes"]["threshold"] == -1


@pytest.mark.parametrize("args, expect", [
    (["--keyframe-model", "/no/such/clip"], "/no/such/clip"),
    (["--keyframe-min-duration", "60"], "minimum"),
    (["--start", "50"], "window"),
])
def test_cli_bad_input_is_one_line_exit_2(args, expect, clip_dir, videos, capsys):
    argv = ["frames", str(videos["cuts"]), "--strategy", "keyframes", "--quiet"]
    if "--keyframe-model" not in args:
        argv += ["--keyframe-model", str(clip_dir)]
    assert main(argv + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videocap: error:") and "\n" not in err and expect in err


def test_cli_rejects_bad_options_and_missing_videos(clip_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["frames", "v.mp4", "--strategy", "keyframes", "--keyframe-threshold", "2"])
    assert done.value.code == 2
    assert main(["frames", str(tmp_path / "none.mp4"), "--strategy", "keyframes",
                 "--keyframe-model", str(clip_dir), "--quiet"]) == 2
    assert "none.mp4" in capsys.readouterr().err


def test_missing_video_is_typed(tmp_path):
    with pytest.raises(VideoNotFoundError):
        stub().select(tmp_path / "missing.mp4")


def test_caption_modes_select_keyframes_with_a_real_tiny_clip(clip_dir, videos, tmp_path, capsys):
    """`videocap caption --frames keyframes` end to end: the tiny CLIP checkpoint (not a stand-in selector) picks
    the frames, both modes caption exactly those frames with the tiny LLaVA-NeXT model."""
    from llava_tiny import make_hf_model, save_layout

    from videocap.tasks.plan import keyframe_selector

    ckpt = save_layout(make_hf_model(seed=7, head_scale=8.0), tmp_path / "tiny-llava", "hf5-save")
    video = videos["cuts"]
    expected = KeyframeSelector.load(model=str(clip_dir), device="cpu", progress=False).select(video)
    assert len(expected) >= 3
    keyframe_selector.cache_clear()
    try:
        for mode in ("fast", "slide"):
            assert main(["caption", str(video), "--mode", mode, "--frames", "keyframes", "--keyframe-model",
                         str(clip_dir), "--keyframe-device", "cpu", "--model", str(ckpt), "--device", "cpu",
                         "--max-new-tokens", "2", "--image-view", "base", "--json", "--quiet"]) == 0
            [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert record["frame_timestamps"] == pytest.approx(expected, abs=1e-6)
            assert record["requests"] == (1 if mode == "fast" else len(expected) + 1)
    finally:
        keyframe_selector.cache_clear()
