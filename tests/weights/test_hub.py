"""Model specs, downloads through a fake Hub on 127.0.0.1, cache hits without network, offline mode, typed errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import huggingface_hub
import pytest
from fakehub import FakeHub, point_hf_at, tiny_checkpoint

from videocap.errors import (
    CheckpointError,
    HubConnectionError,
    ModelAccessError,
    ModelNotFoundError,
    NotCachedError,
    UnsafeCheckpointError,
)
from videocap.weights.hub import ModelRef, download, parse_model, resolve

NEW, OLD = tiny_checkpoint("new"), tiny_checkpoint("old")


@pytest.fixture
def serve(monkeypatch):
    """serve(repos, gated=...) -> a running FakeHub that huggingface_hub is pointed at (offline mode off)."""
    hubs: list[FakeHub] = []

    def start(repos, **kwargs) -> FakeHub:
        hubs.append(FakeHub(repos, **kwargs).start())
        return point_hf_at(hubs[-1], monkeypatch)

    yield start
    for hub in hubs:
        hub.stop()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_download_then_cache_hit_with_the_server_stopped(serve):
    hub = serve({"org/m": {"main": NEW}})
    folder = resolve("org/m", progress=False)
    assert files_of(folder) == NEW
    requests = len(hub.log)
    assert resolve("org/m", progress=False) == folder
    assert len(hub.log) == requests, "a cache hit must not contact the Hub"
    hub.stop()
    assert resolve("org/m", progress=False) == folder
    assert download("org/m", progress=False) == folder  # unreachable Hub: falls back to the cached copy


def test_offline_uses_the_cache_without_any_request(serve, monkeypatch):
    hub = serve({"org/m": {"main": NEW}})
    folder = download("org/m", progress=False)
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("org/m") == folder
    assert download("org/m") == folder
    assert len(hub.log) == requests


def test_offline_without_cache_raises_not_cached():
    # conftest's autouse fixture sets HF_HUB_OFFLINE=1 and an empty HF_HOME
    for fetch in (resolve, download):
        with pytest.raises(NotCachedError, match=r"org/m: offline \(HF_HUB_OFFLINE\).*videocap download org/m"):
            fetch("org/m")


def test_revision_pinning(serve):
    hub = serve({"org/m": {"main": NEW, "v1": OLD}})
    assert files_of(resolve("org/m@v1", progress=False)) == OLD
    by_sha = resolve(f"org/m@{hub.commit('org/m', 'v1')}", progress=False)
    assert by_sha == resolve("org/m@v1") and by_sha.name == hub.commit("org/m", "v1")
    assert files_of(resolve("org/m", progress=False)) == NEW
    assert files_of(resolve("org/m@main", progress=False)) == NEW


def test_resolve_keeps_the_cached_branch_and_download_updates_it(serve):
    hub = serve({"org/m": {"main": OLD}})
    old = resolve("org/m", progress=False)
    hub.repos["org/m"]["main"] = NEW  # a new commit on main
    assert resolve("org/m", progress=False) == old
    new = download("org/m", progress=False)
    assert new != old and files_of(new) == NEW
    assert resolve("org/m", progress=False) == new


def test_a_cut_transfer_resumes_with_a_range_request(serve, monkeypatch):
    # Small chunks so that the bytes received before the cut reach the file (the default chunk is 10 MB).
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64)
    hub = serve({"org/m": {"main": NEW}})
    hub.cut("model.safetensors", after=100)
    folder = resolve("org/m", progress=False)
    assert (folder / "model.safetensors").read_bytes() == NEW["model.safetensors"]
    ranges = [r for m, p, r in hub.log if m == "GET" and p.endswith("/model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] is not None and 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 100


def test_an_interrupted_download_fetches_only_the_missing_files_next_time(serve, monkeypatch):
    hub = serve({"org/m": {"main": NEW}})
    hub.fail("model.safetensors", status=500)
    with pytest.raises(HubConnectionError, match="org/m: the Hub answered HTTP 500"):
        resolve("org/m", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotCachedError):  # a partial snapshot is not a cache hit
        resolve("org/m")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    before = len(hub.downloads())
    assert files_of(resolve("org/m", progress=False)) == NEW
    assert [p.rsplit("/", 1)[1] for p in hub.downloads()[before:]] == ["model.safetensors"]


def test_unknown_repo_or_revision_is_model_not_found(serve):
    serve({"org/m": {"main": NEW}})
    with pytest.raises(ModelNotFoundError, match="org/missing: no such repository"):
        resolve("org/missing", progress=False)
    with pytest.raises(ModelNotFoundError, match="org/m@nope: no such revision"):
        resolve("org/m@nope", progress=False)
    with pytest.raises(ModelNotFoundError, match="no such revision"):
        resolve("org/m@" + "0" * 40, progress=False)


@pytest.mark.parametrize("token", [None, "hf_not_accepted"])  # 401 without a token, 403 with one
def test_gated_repo_is_model_access_error(serve, monkeypatch, token):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub = serve({"org/gated": {"main": NEW}}, gated={"org/gated"})
    with pytest.raises(ModelAccessError, match="org/gated: .*accept its licence.*HF_TOKEN"):
        resolve("org/gated", progress=False)
    assert hub.downloads() == []


def test_unreachable_hub_with_nothing_cached(serve, monkeypatch):
    serve({})
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    for fetch in (resolve, download):
        with pytest.raises(HubConnectionError, match=f"org/m: cannot reach the Hub at {closed}"):
            fetch("org/m", progress=False)


def test_pickle_only_repo_needs_allow_pickle(serve):
    hub = serve({"org/old": {"main": tiny_checkpoint("old", weights="bin")}})
    unsafe = r"org/old: .*pickled weights \(pytorch_model.bin\).*--allow-pickle"
    with pytest.raises(UnsafeCheckpointError, match=unsafe):
        resolve("org/old", progress=False)
    assert hub.downloads() == [], "nothing is downloaded before the user opts in"
    folder = resolve("org/old", allow_pickle=True, progress=False)
    assert (folder / "pytorch_model.bin").exists()
    with pytest.raises(UnsafeCheckpointError):  # cached, but still refused without the opt-in
        resolve("org/old", progress=False)


def test_pickles_and_code_are_not_downloaded_when_safetensors_exist(serve):
    repo = {**NEW, "pytorch_model.bin": b"pickle", "modeling_m.py": b"import os", "merges.txt": b"a b",
            "tokenizer_config.json": b"{}", "tokenizer.model": b"sp"}
    hub = serve({"org/m": {"main": repo}})
    folder = resolve("org/m", allow_pickle=True, progress=False)
    assert sorted(files_of(folder)) == sorted(set(repo) - {"pytorch_model.bin", "modeling_m.py"})
    assert not [p for p in hub.downloads() if p.endswith((".bin", ".py"))]


def test_sharded_checkpoint_with_a_missing_shard_is_not_a_cache_hit(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(NEW["model.safetensors"])
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lacks shards .*model-00002-of-00002.safetensors"):
        resolve(str(tmp_path))


def test_aliases(serve):
    assert parse_model("sharegpt4video-8b") == ModelRef("Lin-Chen/sharegpt4video-8b", None, None)
    assert parse_model("ShareCaptioner-Video@abc") == ModelRef("Lin-Chen/ShareCaptioner-Video", "abc", None)
    serve({"Lin-Chen/sharegpt4video-8b": {"main": NEW}})
    assert files_of(resolve("sharegpt4video-8b", progress=False)) == NEW


@pytest.mark.parametrize("spec, ref", [
    ("org/m", ModelRef("org/m", None, None)),
    ("org/m@v1.0", ModelRef("org/m", "v1.0", None)),
    ("Org-1/m_2.b@" + "a" * 40, ModelRef("Org-1/m_2.b", "a" * 40, None)),
])
def test_hub_ids(spec, ref):
    assert parse_model(spec) == ref


@pytest.mark.parametrize("spec", ["", "gpt2", "org/", "org//m", "a/b/c", "org/m@", "org/m@a@b", "org/-m", "or g/m",
                                  "org/m..x"])
def test_malformed_ids_are_model_not_found(spec):
    with pytest.raises(ModelNotFoundError, match="not a known alias .*'owner/name\\[@revision\\]'"):
        parse_model(spec)


def test_local_directory_passthrough(tmp_path, monkeypatch):
    for name, data in NEW.items():
        (tmp_path / name).write_bytes(data)
    assert resolve(str(tmp_path)) == tmp_path
    monkeypatch.chdir(tmp_path.parent)
    assert resolve(f"./{tmp_path.name}") == tmp_path
    assert resolve(tmp_path.name) == tmp_path  # an existing path wins over a Hub id
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        resolve(str(tmp_path))


def test_local_pickle_only_directory_needs_allow_pickle(tmp_path):
    for name, data in tiny_checkpoint("old", weights="bin").items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        resolve(str(tmp_path))
    assert resolve(str(tmp_path), allow_pickle=True) == tmp_path


@pytest.mark.parametrize("spec", ["/no/such/model", "./no-such-model", "../no-such-model", "~/no-such-videocap-model"])
def test_missing_local_path(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=f"{spec}: no such directory"):
        resolve(spec)


def test_progress_false_prints_no_bar(serve, capfd):
    serve({"org/m": {"main": NEW}})
    resolve("org/m", progress=False)
    assert "Fetching" not in capfd.readouterr().err
