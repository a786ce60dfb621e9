"""`videocap.load` and the CLI on a Hub id, served by the fake Hub on 127.0.0.1: a tiny LLaVA-NeXT checkpoint is
downloaded and answers about a video, then loads again from the cache with the server gone and offline mode on;
`videocap download` prints the cache folder; a model the Hub does not have is a one-line error, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakehub import FakeHub, point_hf_at

from llava_tiny import make_hf_model, save_layout

from videocap import api
from videocap.cli import main

pytest.importorskip("transformers")

REPO = "org/tiny-llava"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a tiny LLaVA-NeXT checkpoint (config, safetensors, tokenizer), as the Hub repo holds them."""
    folder = save_layout(make_hf_model(seed=4, head_scale=8.0), tmp_path_factory.mktemp("tiny") / "m", "hf5-save")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(tiny_files, monkeypatch):
    """A running fake Hub serving REPO, with huggingface_hub pointed at it (offline mode off)."""
    server = FakeHub({REPO: {"main": tiny_files}}).start()
    yield point_hf_at(server, monkeypatch)
    server.stop()


def go_offline(hub: FakeHub, monkeypatch) -> None:
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_load_downloads_answers_then_loads_from_the_cache_offline(hub, h264, monkeypatch):
    captioner = api.load(REPO, device="cpu", progress=False)
    assert "model.safetensors" in {path.rsplit("/", 1)[-1] for path in hub.downloads()}
    first = captioner.ask(str(h264), "What happens?", frames=4, max_new_tokens=3)
    assert 1 <= first.new_tokens <= 3 and first.image_tokens > 0 and len(first.frame_timestamps) == 4

    go_offline(hub, monkeypatch)  # with the server stopped, any request would fail
    again = api.load(REPO, device="cpu", progress=False)
    answer = again.ask(str(h264), "What happens?", frames=4, max_new_tokens=3)
    assert answer.text == first.text and answer.new_tokens == first.new_tokens  # greedy: the same weights


def test_cli_download_prints_the_cached_folder(hub, tiny_files, tmp_path, capsys):
    assert main(["download", REPO]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.is_dir() and folder.is_relative_to(tmp_path / "hf")  # conftest's HF_HOME
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert (folder / "model.safetensors").read_bytes() == tiny_files["model.safetensors"]


@pytest.mark.parametrize("online", [True, False])
def test_cli_ask_for_a_missing_model_is_one_line_exit_2(online, hub, h264, capsys, monkeypatch):
    if not online:
        go_offline(hub, monkeypatch)
    assert main(["ask", str(h264), "--model", "org/missing", "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("videocap: error:") and "\n" not in err and "org/missing" in err
    assert captured.out == ""
