"""What goes wrong around an answer: abandoned generations, streamed text that decoding rewrites, tied
embeddings, prompts past the context, damaged checkpoints, odd options — each handled without a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llava_tiny import make_hf_model, save_layout
from tokenizers_util import SHARED_TOKENIZERS, make_llama3_tokenizer

from videocap import api
from videocap.cli import main
from videocap.errors import CheckpointError, DeviceError
from videocap.models.llava_next import prompt
from videocap.models.llava_next.weights import load
from videocap.tasks.ask import TextStream

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_layout(make_hf_model(seed=11, head_scale=8.0), tmp_path_factory.mktemp("ckpt") / "m", "hf4")


@pytest.fixture(scope="module")
def captioner(ckpt):
    return api.load(str(ckpt), device="cpu", progress=False)


def variant(ckpt, tmp_path, edit_config=None, edit_dir=None):
    out = tmp_path / "variant"
    shutil.copytree(ckpt, out)
    if edit_config:
        config = json.loads((out / "config.json").read_text())
        edit_config(config)
        (out / "config.json").write_text(json.dumps(config))
    if edit_dir:
        edit_dir(out)
    return out


def test_an_abandoned_answer_leaves_nothing_behind(captioner, h264):
    chat = captioner.chat(str(h264), frames=4)
    expected = captioner.chat(str(h264), frames=4).ask("What is it?", max_new_tokens=8).text

    def interrupt(text):  # Ctrl-C while the answer streams
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.ask("Describe every detail.", max_new_tokens=200, on_text=interrupt)
    engine = captioner.engine
    assert not engine.scheduler.has_work()
    assert engine.runner.allocator.num_free == engine.runner.allocator.num_blocks
    assert captioner.chat(str(h264), frames=4).ask("What is it?", max_new_tokens=8).text == expected


@pytest.mark.skipif(not (SHARED_TOKENIZERS / "llama3").is_dir(), reason="../shared/tokenizers is absent")
@pytest.mark.parametrize("answer", ["He said 'sorry' and left.", "The sign reads ' stop ' in red .", "Café ☕ time, isn't it ?"])
def test_streamed_text_equals_the_final_answer_when_decoding_rewrites_it(answer, tmp_path):
    tokenizer = prompt.load_tokenizer(make_llama3_dir(tmp_path))
    ids = tokenizer.encode(answer, add_special_tokens=False).ids
    emitted = []
    stream = TextStream(lambda i: prompt.decode(tokenizer, i), emitted.append)
    for n in range(1, len(ids) + 1):
        stream.update(ids[:n])
    stream.finish(ids)
    assert "".join(emitted) == prompt.decode(tokenizer, ids)


def make_llama3_dir(tmp_path):
    out = tmp_path / "llama3"
    make_llama3_tokenizer(out)
    return out


def test_tied_embeddings_load_and_stay_tied(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    def untie(out):
        for shard in out.glob("*.safetensors"):
            state = load_file(shard)
            state.pop("language_model.lm_head.weight", None)
            save_file(state, shard)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        index["weight_map"].pop("language_model.lm_head.weight")
        (out / "model.safetensors.index.json").write_text(json.dumps(index))

    tied = variant(ckpt, tmp_path, lambda c: c["text_config"].update(tie_word_embeddings=True), untie)
    model = load(tied, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.llm.embed_tokens.weight.data_ptr()
    assert model.lm_head.weight.abs().sum() > 0


def test_a_prompt_past_the_context_is_a_one_line_error_and_chat_goes_on(ckpt, h264, tmp_path, capsys, monkeypatch):
    small = variant(ckpt, tmp_path, lambda c: c["text_config"].update(max_position_embeddings=1000))
    argv = ["--model", str(small), "--frames", "1", "--image-view", "base", "--quiet"]
    assert main(["ask", str(h264), "why " * 300, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videocap: error:") and "context" in err and "\n" not in err

    lines = iter(["why " * 40, "why " * 40, "why " * 40, "/reset", "ok?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(h264), *argv, "--max-new-tokens", "30"]) == 0
    captured = capsys.readouterr()
    assert "/reset starts the conversation over" in captured.err
    assert captured.out.count("model> ") == 4  # the turn after /reset is answered


@pytest.mark.parametrize("damage, needle", [
    (lambda out: [s.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
                  for s in out.glob("*.safetensors")], "Git LFS"),
    (lambda out: (out / "generation_config.json").write_text("{not json"), "generation config"),
    (lambda out: (out / "config.json").write_text("[1, 2]"), "JSON object"),
])
def test_damaged_checkpoints_are_one_line_errors(ckpt, h264, tmp_path, capsys, damage, needle):
    bad = variant(ckpt, tmp_path, edit_dir=damage)
    with pytest.raises(CheckpointError, match=needle):
        api.load(str(bad), device="cpu", progress=False)
    assert main(["ask", str(h264), "--model", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videocap: error:") and "\n" not in err


def test_an_image_marker_in_the_question_is_refused(ckpt, h264, capsys):
    assert main(["ask", str(h264), "what is in <image>?", "--model", str(ckpt), "--quiet"]) == 2
    assert "<image>" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["meta", "cuda:7", "tpu"])
def test_unusable_devices_are_refused(ckpt, device):
    with pytest.raises(DeviceError):
        api.load(str(ckpt), device=device, progress=False)


def test_tiny_temperatures_sample_without_overflow_and_leave_the_global_rng_alone(captioner, h264):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    answer = captioner.ask(str(h264), frames=4, max_new_tokens=4, temperature=1e-40, top_p=0.9, top_k=50)
    assert torch.equal(torch.rand(3), expected)
    greedy = captioner.ask(str(h264), frames=4, max_new_tokens=4)
    assert answer.text == greedy.text  # a vanishing temperature is greedy


def test_the_stream_ends_with_the_whole_answer_even_when_it_ends_inside_a_character():
    pieces = {1: "a b c \ufffd", 2: "a b c d\ufffd"}
    emitted = []
    stream = TextStream(lambda ids: pieces[len(ids)], emitted.append)
    stream.update([0])
    stream.finish([0, 0])
    assert "".join(emitted) == "a b c d\ufffd"


def test_text_without_spaces_streams_before_the_end():
    text = "这是一个没有空格的很长的回答" * 3
    emitted = []
    stream = TextStream(lambda ids: text[: len(ids)], emitted.append)
    for n in range(1, len(text) + 1):
        stream.update(list(range(n)))
    assert len(emitted) > 10  # not one piece at the end
    stream.finish(list(range(len(text))))
    assert "".join(emitted) == text


def test_vanishing_temperature_on_the_cli(ckpt, h264, capsys):
    assert main(["ask", str(h264), "--model", str(ckpt), "--frames", "2", "--max-new-tokens", "3",
                 "--temperature", "1e-50", "--quiet"]) == 0


def test_a_bad_window_fails_before_the_model_loads(h264, capsys):
    assert main(["ask", str(h264), "--model", "/nonexistent/model", "--start", "3", "--end", "1"]) == 2
    err = capsys.readouterr().err
    assert str(h264) in err and "/nonexistent/model" not in err


def test_load_accepts_a_path_object(ckpt, h264):
    from pathlib import Path

    assert api.load(Path(ckpt), device="cpu", progress=False).ask(h264, frames=2, max_new_tokens=2).new_tokens >= 1


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.update(image_grid_pinpoints=[[0, 336]]), "pinpoint"),
    (lambda c: c.update(vision_feature_layer=-9), "feature layer"),
    (lambda c: c.update(vision_feature_select_strategy="full"), "full"),
    (lambda c: c["text_config"].update(hidden_size="64"), "hidden_size"),
    (lambda c: c["text_config"].update(vocab_size=300), "tokenizer"),
])
def test_configs_that_cannot_work_are_refused_when_loading(ckpt, tmp_path, edit, needle):
    bad = variant(ckpt, tmp_path, edit)
    with pytest.raises(CheckpointError, match=needle):
        api.load(str(bad), device="cpu", progress=False)


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_refused(ckpt, tmp_path):
    import struct

    def shrink(out):
        shard = sorted(out.glob("*.safetensors"))[0]
        data = shard.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        name = next(k for k in header if k != "__metadata__")
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start, end - 4]
        raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        assert len(raw) == n
        shard.write_bytes(data[:8] + raw + data[8 + n :])

    with pytest.raises(CheckpointError, match="bytes for shape"):
        load(variant(ckpt, tmp_path, edit_dir=shrink), dtype=torch.float32)
