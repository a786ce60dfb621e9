"""`ask` and `Chat` end to end on a tiny checkpoint: the tokens videocap generates for a video equal transformers'
greedy generate on the same grid pixels and prompt; a chat encodes its video once; the CLI's ask/chat/errors."""

from __future__ import annotations

import json

import pytest
import torch

from llava_tiny import IMAGE_TOKEN, make_hf_model, save_layout

from videocap import api
from videocap.cli import main
from videocap.engine.engine import Engine
from videocap.engine.request import SamplingParams
from videocap.errors import PromptError
from videocap.models.llava_next.prompt import Turn

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = make_hf_model(seed=7, head_scale=8.0)
    return hf, save_layout(hf, tmp_path_factory.mktemp("ckpt") / "tiny", "hf5-save")


@pytest.fixture(scope="module")
def captioner(tiny):
    return api.load(str(tiny[1]), device="cpu", progress=False)


def test_ask_equals_transformers_generate_on_the_same_inputs(tiny, captioner, h264):
    hf, _ = tiny
    chat = captioner.chat(str(h264))
    request = captioner.processor.request([Turn("What happens?")], SamplingParams(max_new_tokens=10), image=chat.image)
    ids = [IMAGE_TOKEN if m else t for t, m in zip(request.token_ids, request.image_mask)]
    w, h = chat.grid.size
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor([ids]), pixel_values=request.images.pixels[None], image_sizes=torch.tensor([[h, w]]),
            max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0,
        )[0, len(ids):].tolist()
    answer = chat.ask("What happens?", max_new_tokens=10)
    ours = captioner.engine  # the answer's tokens are decoded text; recompute them from the final output
    assert answer.image_tokens == sum(request.image_mask) > 576  # anyres: tiles + newlines, not the base view alone
    assert answer.prompt_tokens == len(ids)
    assert answer.text == captioner.processor.decode(ref[: answer.new_tokens])
    stops = set(captioner.processor.stop_ids)
    assert answer.new_tokens == 10 or ref[answer.new_tokens] in stops
    assert len(answer.frame_timestamps) == 16
    assert ours.scheduler.has_work() is False


def test_chat_encodes_the_video_once_and_keeps_the_turns(captioner, h264, monkeypatch):
    calls = []
    original = captioner.model.encode_images
    monkeypatch.setattr(captioner.model, "encode_images", lambda *a: calls.append(1) or original(*a))
    chat = captioner.chat(str(h264), frames=4)
    first = chat.ask("What is shown?", max_new_tokens=4)
    second = chat.ask("And then?", max_new_tokens=4)
    assert len(calls) == 1
    assert second.prompt_tokens > first.prompt_tokens + first.new_tokens  # the first turn is in the prompt
    assert [t.user for t in chat.turns] == ["What is shown?", "And then?"]
    chat.reset()
    again = chat.ask("What is shown?", max_new_tokens=4)
    assert again.prompt_tokens == first.prompt_tokens and again.text == first.text and len(calls) == 1


def test_base_view_reproduces_the_reference_scripts_576_tokens(tiny, h264):
    captioner = api.load(str(tiny[1]), device="cpu", image_view="base", progress=False)
    answer = captioner.ask(str(h264), max_new_tokens=2)
    assert answer.image_tokens == 576


def test_sampling_is_reproducible_with_a_seed(captioner, h264):
    a = captioner.ask(str(h264), frames=4, max_new_tokens=6, temperature=1.5, top_p=0.95, seed=3)
    b = captioner.ask(str(h264), frames=4, max_new_tokens=6, temperature=1.5, top_p=0.95, seed=3)
    assert a.text == b.text


def test_cli_ask_json(tiny, h264, capsys):
    assert main(["ask", str(h264), "What is it?", "--model", str(tiny[1]), "--frames", "4", "--max-new-tokens", "3",
                 "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["question"] == "What is it?" and out["new_tokens"] <= 3 and len(out["frame_timestamps"]) == 4
    assert {"vision", "prefill", "first_token", "total"} <= set(out["timings"])


def test_cli_engine_and_penalty_options(tiny, h264, capsys):
    base = ["ask", str(h264), "What is it?", "--model", str(tiny[1]), "--frames", "4", "--max-new-tokens", "6",
            "--json", "--quiet", "--eager", "--gpu-memory-fraction", "0.5"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)["text"]
    assert main(base + ["--repetition-penalty", "50"]) == 0
    penalised = json.loads(capsys.readouterr().out)["text"]
    assert plain != penalised  # a heavy penalty changes a greedy answer that repeats itself or the prompt
    for bad in (["--gpu-memory-fraction", "1.5"], ["--repetition-penalty", "0"]):
        with pytest.raises(SystemExit) as e:
            main(base + bad)
        assert e.value.code == 2


def test_a_stop_string_ends_the_answer_and_the_stream_never_passes_it(captioner, h264):
    full = captioner.ask(str(h264), frames=4, max_new_tokens=24).text
    # two characters past the start of the answer, first seen there: the stream must not have shown them
    k = next(k for k in range(2, len(full) - 2)
             if "\ufffd" not in full[k : k + 2] and full.find(full[k : k + 2]) == k)
    stop = full[k : k + 2]
    expected = full[:k].strip()
    streamed = []
    answer = captioner.ask(str(h264), frames=4, max_new_tokens=24, stop=["\u2603never", stop], on_text=streamed.append)
    assert answer.text == expected and answer.finish_reason == "stop"
    assert "".join(streamed).strip() == expected and stop not in "".join(streamed)
    assert captioner.engine.runner.allocator.num_free == captioner.engine.runner.allocator.num_blocks
    with pytest.raises(PromptError):
        captioner.ask(str(h264), frames=4, stop=[""])


def test_cli_chat_repl(tiny, h264, capsys, monkeypatch):
    lines = iter(["What is it?", "/reset", "Again?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(h264), "--model", str(tiny[1]), "--frames", "4", "--max-new-tokens", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "conversation cleared" in out and out.count("model> ") == 2


@pytest.mark.parametrize("argv, needle", [
    (["ask", "VIDEO", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["ask", "/nonexistent.mp4", "--model", "MODEL"], "/nonexistent.mp4"),
    (["ask", "VIDEO", "--model", "MODEL", "--device", "cuda:0"], "cuda"),
])
def test_cli_errors_are_one_line_exit_2(argv, needle, tiny, h264, capsys):
    argv = [str(h264) if a == "VIDEO" else str(tiny[1]) if a == "MODEL" else a for a in argv]
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and err.startswith("videocap: error:")


def test_a_follow_up_prefills_only_its_new_tokens(captioner, h264, monkeypatch):
    """The video and the earlier turns come from the prefix cache: the second turn's prefill covers its question
    (and at most one partly matching block), yet the answer is the one a fresh engine gives."""
    engine = captioner.engine
    prefilled = []
    prefill = engine.runner.prefill
    monkeypatch.setattr(engine.runner, "prefill",
                        lambda seqs: prefilled.append(sum(len(s.tokens) - s.num_cached for s in seqs)) or prefill(seqs))
    chat = captioner.chat(str(h264), frames=4)
    first = chat.ask("What is shown?", max_new_tokens=6)
    second = chat.ask("And then?", max_new_tokens=6)
    new = second.prompt_tokens - first.prompt_tokens - first.new_tokens  # the question, with the turn's headers
    assert prefilled == [first.prompt_tokens - first.cached_tokens, second.prompt_tokens - second.cached_tokens]
    assert second.cached_tokens > first.prompt_tokens and prefilled[1] < new + engine.block_size
    monkeypatch.setattr(captioner, "engine", Engine(captioner.model, prefix_caching=False))
    again = captioner.chat(str(h264), frames=4)
    again.turns = list(chat.turns[:1])
    uncached = again.ask("And then?", max_new_tokens=6)
    assert (uncached.text, uncached.cached_tokens) == (second.text, 0)
