"""Model ids, aliases and checkpoint files on disk: `resolve(spec) -> directory` and `download(spec)`.

This module owns what a model spec means (an alias, a local directory, or a Hub id `owner/name[@revision]`),
fetching the files a model needs through huggingface_hub into the standard HF cache, cache hits without any
network, offline mode (HF_HUB_OFFLINE) and turning Hub failures into videocap's typed errors. It does not read
tensors or configs (loader.py and the families do) and never downloads or runs a repository's Python code.

Environment is read at call time, not import time (huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE once, when it is imported): the endpoint and cache directory are passed to it explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from videocap.errors import (
    CheckpointError,
    HubConnectionError,
    ModelAccessError,
    ModelNotFoundError,
    NotCachedError,
    UnsafeCheckpointError,
)

log = logging.getLogger(__name__)

ALIASES: dict[str, str] = {
    "sharegpt4video-8b": "Lin-Chen/sharegpt4video-8b",
    "sharecaptioner-video": "Lin-Chen/ShareCaptioner-Video",
}

# Models shipped inside the package (no download, no network): alias -> folder under videocap/assets/.
BUNDLED: dict[str, str] = {"tiny": "videocap-tiny", "videocap-tiny": "videocap-tiny"}


def bundled(alias: str) -> Path:
    """The folder of a model shipped in the package."""
    from importlib.resources import files

    folder = Path(str(files("videocap") / "assets" / BUNDLED[alias]))
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{alias}: the bundled model is missing from {folder} (reinstall videocap)")
    return folder


# What a model needs: configs, safetensors weights and tokenizer files. Never *.py (remote code).
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "tokenizer*", "*.txt", "*.jinja"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES]

_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[^\s@]+))?")
_LOCAL_PREFIXES = ("/", "./", "../", "~")


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: a Hub repository (and revision; None means the default branch) or a local directory."""

    repo_id: str | None
    revision: str | None
    local_path: Path | None

    def __post_init__(self):
        assert (self.repo_id is None) != (self.local_path is None), "a ModelRef is either a Hub repo or a local path"


def parse_model(spec: str) -> ModelRef:
    """Parse an alias (optionally `alias@revision`), a local directory or a Hub id `owner/name[@revision]`."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    if spec.startswith(_LOCAL_PREFIXES) or (spec and path.exists()):
        if not path.exists():
            raise ModelNotFoundError(f"{spec}: no such directory")
        if not path.is_dir():
            raise ModelNotFoundError(f"{spec}: not a directory (a model is a directory with config.json and weights)")
        return ModelRef(repo_id=None, revision=None, local_path=path.resolve())
    name, _, revision = spec.partition("@")
    if name.lower() in BUNDLED and not revision:
        return ModelRef(repo_id=None, revision=None, local_path=bundled(name.lower()))
    if name.lower() in ALIASES:
        spec = ALIASES[name.lower()] + (f"@{revision}" if revision else "")
    match = _HUB_ID.fullmatch(spec)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        known = ", ".join([*BUNDLED, *ALIASES])
        raise ModelNotFoundError(
            f"{spec!r} is not a known alias ({known}), an existing directory, or a Hub id 'owner/name[@revision]'"
        )
    return ModelRef(repo_id=match["repo"], revision=match["revision"], local_path=None)


def resolve(spec: str, *, allow_pickle: bool = False, progress: bool = True) -> Path:
    """A local directory holding the model's checkpoint files, downloading them only if they are not cached.

    A cached snapshot is used without contacting the Hub (so a cached branch such as `main` is not updated;
    `download` does that). Offline (HF_HUB_OFFLINE=1) and not cached raises NotCachedError.
    """
    ref = parse_model(spec)
    if ref.local_path is not None:
        return check_checkpoint(ref.local_path, spec, allow_pickle=allow_pickle)
    cached = _from_cache(ref, spec, allow_pickle)
    if cached is not None:
        return cached
    if _offline():
        raise _not_cached(spec)
    return _fetch(ref, spec, allow_pickle, progress)


def download(spec: str, *, allow_pickle: bool = False, progress: bool = True) -> Path:
    """Like `resolve`, but asks the Hub for the revision's newest files whenever it is online.

    If the Hub cannot be reached and the model is cached, the cached copy is returned with a warning.
    """
    ref = parse_model(spec)
    if ref.local_path is not None:
        return check_checkpoint(ref.local_path, spec, allow_pickle=allow_pickle)
    if not _offline():
        try:
            return _fetch(ref, spec, allow_pickle, progress)
        except HubConnectionError as error:
            cached = _from_cache(ref, spec, allow_pickle)
            if cached is None:
                raise
            log.warning("%s; using the cached copy in %s", error, cached)
            return cached
    cached = _from_cache(ref, spec, allow_pickle)
    if cached is None:
        raise _not_cached(spec)
    return cached


def check_checkpoint(folder: Path, spec: str, *, allow_pickle: bool = False) -> Path:
    """`folder` if it holds config.json and a complete set of weights, preferring safetensors over pickles."""
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if "config.json" not in names:
        raise CheckpointError(f"{spec}: {folder} has no config.json")
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        weights = _pickles(names, spec, allow_pickle)
    if not weights:
        raise CheckpointError(f"{spec}: {folder} has no weights (*.safetensors)")
    for index in (n for n in names if n.endswith(".index.json")):
        try:
            shards = set(json.loads((folder / index).read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{spec}: {folder / index} is not a readable shard index: {e}") from e
        missing = sorted(shards - names)
        if missing:
            raise CheckpointError(f"{spec}: {folder} lacks shards listed in {index}: {', '.join(missing)}")
    return folder


def _pickles(names: set[str] | list[str], spec: str, allow_pickle: bool) -> list[str]:
    """The pickled weight files among `names`; raises unless pickles are allowed (call only without safetensors)."""
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        shown = ", ".join(pickles[:4]) + (f" and {len(pickles) - 4} more" if len(pickles) > 4 else "")
        raise UnsafeCheckpointError(
            f"{spec}: the checkpoint has only pickled weights ({shown}), which can run code when loaded; "
            "pass --allow-pickle (allow_pickle=True) if you trust its author"
        )
    return pickles


def _from_cache(ref: ModelRef, spec: str, allow_pickle: bool) -> Path | None:
    """The cached snapshot of `ref` if it is complete, without any network access; None if it is not cached."""
    try:
        # The safe patterns are always fetched in full, so huggingface_hub's completeness check (against the
        # cached file listing of the commit) holds for them whether or not pickles were fetched too.
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=_cache_dir(),
                                        local_files_only=True, allow_patterns=SAFE_PATTERNS))
    except LocalEntryNotFoundError:
        return None
    try:
        return check_checkpoint(folder, spec, allow_pickle=allow_pickle)
    except CheckpointError:
        return None  # an interrupted download: fetch the rest


def _fetch(ref: ModelRef, spec: str, allow_pickle: bool, progress: bool) -> Path:
    """Ask the Hub which files the revision has, then download the ones a model needs into the cache."""
    endpoint = _endpoint()
    with _hub_errors(spec, endpoint):
        info = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision=ref.revision)
        files = [sibling.rfilename for sibling in info.siblings or []]
        patterns = list(SAFE_PATTERNS)
        if not any(f.endswith(".safetensors") for f in files):
            if not _pickles(files, spec, allow_pickle):
                raise CheckpointError(f"{spec}: the repository has no weights (*.safetensors) at this revision")
            patterns += PICKLE_PATTERNS
        folder = snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=_cache_dir(), endpoint=endpoint,
                                   allow_patterns=patterns, tqdm_class=None if progress else _SilentTqdm)
    return check_checkpoint(Path(folder), spec, allow_pickle=allow_pickle)


@contextmanager
def _hub_errors(spec: str, endpoint: str | None) -> Iterator[None]:
    """Turn huggingface_hub and httpx failures into videocap's model errors, naming the model."""
    login = "log in with `hf auth login` or set HF_TOKEN"
    try:
        yield
    except GatedRepoError as error:  # before RepositoryNotFoundError: it is a subclass
        message = f"{spec}: the repository is gated: accept its licence on its Hub page, then {login}"
        raise ModelAccessError(message) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(f"{spec}: no such revision on the Hub") from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(f"{spec}: no such repository on the Hub (if it is private, {login})") from error
    except RemoteEntryNotFoundError as error:
        message = f"{spec}: a file of the repository is missing on the Hub ({error.response.url})"
        raise ModelNotFoundError(message) from error
    except OfflineModeIsEnabled as error:
        raise _not_cached(spec) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 404:
            raise ModelNotFoundError(f"{spec}: not found on the Hub (HTTP 404)") from error
        if status in (401, 403):
            message = f"{spec}: the Hub refused access (HTTP {status}): {login} with access to it"
            raise ModelAccessError(message) from error
        message = f"{spec}: the Hub answered HTTP {status} and the model is not cached; try again later"
        raise HubConnectionError(message) from error
    except (httpx.TransportError, LocalEntryNotFoundError, FileMetadataError) as error:
        if isinstance(error, LocalEntryNotFoundError) and isinstance(error.__cause__, OfflineModeIsEnabled):
            raise _not_cached(spec) from error
        where = endpoint or constants.ENDPOINT
        raise HubConnectionError(
            f"{spec}: cannot reach the Hub at {where} ({type(error).__name__}) and the model is not fully cached; "
            "check the network (or HF_ENDPOINT), or run `videocap download` where the Hub is reachable"
        ) from error


def _not_cached(spec: str) -> NotCachedError:
    return NotCachedError(
        f"{spec}: offline (HF_HUB_OFFLINE) and not in the cache at {_cache_dir()}; "
        f"run `videocap download {spec}` with network access first"
    )


class _SilentTqdm(hf_tqdm):
    """huggingface_hub's progress bar, always disabled (progress=False)."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline() -> bool:
    # huggingface_hub blocks every request when HF_HUB_OFFLINE was set at its import, whatever the env says now.
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return _truthy(env) or constants.HF_HUB_OFFLINE


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _cache_dir() -> Path:
    """The hub cache, as huggingface_hub would compute it from the current environment."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(os.path.expandvars(cache)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"
