"""A fake Hugging Face Hub on 127.0.0.1 for testing the download path without a network.

It serves repos given as {repo_id: {revision: {filename: bytes}}} through the endpoints huggingface_hub 1.x calls
for `model_info`, `snapshot_download` and `hf_hub_download`:

    GET  /api/models/{repo}[/revision/{rev}] commit sha and file list (model_info / repo_info; default: main)
    GET  /api/models/{repo}/tree/{rev}       recursive file listing (snapshot_download lists files with it)
    HEAD /{repo}/resolve/{rev}/{file}        X-Repo-Commit, ETag, Content-Length (get_hf_file_metadata)
    GET  /{repo}/resolve/{rev}/{file}        the bytes; honours `Range: bytes=N-` (http_get resumes with it)

A revision key is a branch or tag name (its commit sha is derived from the repo, the name and the files:
`commit()`) or a 40-hex commit sha; requests may name either. Failures carry the X-Error-Code header that
huggingface_hub's `hf_raise_for_status` dispatches on: RepoNotFound, RevisionNotFound and EntryNotFound (404), GatedRepo
(401 without a token, 403 with one; like the real Hub, a gated repo's info and listing stay public).
`cut(file, after)` makes the next GET of a file stop after some bytes; `fail(file, status)` makes it answer an error.
Every request is recorded in `log` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

Repos = dict[str, dict[str, dict[str, bytes]]]
_SHA = re.compile(r"[0-9a-f]{40}")


def tiny_checkpoint(tag: str = "v0", *, weights: str = "safetensors") -> dict[str, bytes]:
    """A few-hundred-byte model: config.json, weights (model.safetensors or pytorch_model.bin), tokenizer.json.

    `tag` goes into every file so that two revisions have different contents.
    """
    import torch
    from safetensors.torch import save

    tensors = {"embed.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8) + len(tag),
               "tag": torch.tensor(list(tag.encode()), dtype=torch.uint8)}
    files = {
        "config.json": json.dumps({"model_type": "tiny", "hidden_size": 8, "tag": tag}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {tag: 0}}}).encode(),
    }
    if weights == "safetensors":
        files["model.safetensors"] = save(tensors)
    else:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        files["pytorch_model.bin"] = buffer.getvalue()
    return files


def point_hf_at(hub: FakeHub, monkeypatch) -> FakeHub:
    """Send huggingface_hub to `hub` for the rest of a test: HF_ENDPOINT, offline mode off, no token.

    huggingface_hub reads HF_HUB_OFFLINE once, at import (conftest sets it for every test, so whichever test imports
    it first decides): its copy is patched too.
    """
    import huggingface_hub

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


class FakeHub:
    """A threaded HTTP server imitating the Hub. Use as a context manager, or start()/stop() (same port)."""

    def __init__(self, repos: Repos, *, gated: set[str] | None = None):
        self.repos = repos
        self.gated = gated or set()
        self.log: list[tuple[str, str, str | None]] = []
        self._breaks: dict[str, tuple[str, int]] = {}  # filename -> ("cut", bytes) or ("fail", status), once
        self._lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering: the port refuses connections afterwards (HTTP/1.0, so no kept-alive connection lingers)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def commit(self, repo_id: str, revision: str) -> str:
        """The commit sha a revision name stands for (it changes when the revision's files change)."""
        if _SHA.fullmatch(revision):
            return revision
        digest = hashlib.sha1(f"{repo_id}@{revision}".encode())
        for name, data in sorted(self.repos[repo_id][revision].items()):
            digest.update(name.encode() + hashlib.sha1(data).digest())
        return digest.hexdigest()

    def cut(self, filename: str, after: int) -> None:
        """The next GET of `filename` sends `after` bytes of the body, then drops the connection."""
        self._breaks[filename] = ("cut", after)

    def fail(self, filename: str, status: int = 500) -> None:
        """The next GET of `filename` answers `status` instead of the file."""
        self._breaks[filename] = ("fail", status)

    def downloads(self, filename: str | None = None) -> list[str]:
        """Paths of the file GETs so far (optionally of one filename)."""
        gets = [path for method, path, _ in self.log if method == "GET" and "/resolve/" in path]
        return [path for path in gets if filename is None or path.endswith("/" + filename)]

    def _lookup(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | tuple[int, str]:
        """(commit sha, files) of a revision, or (HTTP status, X-Error-Code) when there is none."""
        if repo_id not in self.repos:
            return 404, "RepoNotFound"
        for name, files in self.repos[repo_id].items():
            if revision in (name, self.commit(repo_id, name)):
                return self.commit(repo_id, name), files
        return 404, "RevisionNotFound"

    def _take_break(self, filename: str) -> tuple[str, int] | None:
        with self._lock:
            return self._breaks.pop(filename, None)


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: stop() really cuts the network

    def log_message(self, format: str, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def _route(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        self.hub.log.append((self.command, path, self.headers.get("Range")))
        parts = [unquote(p) for p in path.strip("/").split("/")]  # split first: a quoted revision may hold '/'
        if parts[:2] == ["api", "models"] and len(parts) == 4:  # no revision: the default branch
            self._api("/".join(parts[2:4]), "revision", "main")
        elif parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            self._api("/".join(parts[2:4]), parts[4], parts[5])
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), send_body)
        else:
            self._error(404, "NotFound", f"no route for {path}")

    def _api(self, repo_id: str, kind: str, revision: str) -> None:
        found = self.hub._lookup(repo_id, revision)
        if isinstance(found[0], int):
            return self._error(found[0], found[1], f"{repo_id}@{revision}: {found[1]}")
        sha, files = found
        if kind == "revision":
            gated = "manual" if repo_id in self.hub.gated else False
            body = {"id": repo_id, "sha": sha, "private": False, "gated": gated,
                    "siblings": [{"rfilename": name} for name in sorted(files)]}
        else:
            body = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in sorted(files.items())]
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, filename: str, send_body: bool) -> None:
        if repo_id in self.hub.gated:
            status = 403 if self.headers.get("Authorization") else 401
            return self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
        found = self.hub._lookup(repo_id, revision)
        if isinstance(found[0], int):
            return self._error(found[0], found[1], f"{repo_id}@{revision}: {found[1]}")
        sha, files = found
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} not in {repo_id}", {"X-Repo-Commit": sha})
        data = files[filename]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        broken = self.hub._take_break(filename) if send_body else None
        if broken is not None and broken[0] == "fail":
            return self._error(broken[1], "", f"{filename}: injected failure")
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and send_body:
            start, status = int(match[1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if broken is None:
            return self._send(status, body, headers, send_body)
        self._send(status, body[: broken[1]], {**headers, "Content-Length": str(len(body))})
        self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str], send_body: bool = True) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)
