"""A Hugging Face Hub cache written by hand, in huggingface_hub's documented layout, for offline tests:
``models--OWNER--REPO/{refs/<branch>, blobs/<content address>, snapshots/<commit>/<file> -> blob}``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def content_address(data: bytes, large: bool) -> str:
    """The blob name the Hub uses: sha256 for LFS (large) files, git's blob sha1 otherwise."""
    if large:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def add_to_hf_cache(
    hub_cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40, branch: str = "main"
) -> Path:
    """Put ``files`` (path in the repo -> bytes) into ``hub_cache`` as revision ``commit`` of
    ``repo_id`` on ``branch``; returns the snapshot folder."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / content_address(data, large=not name.endswith(".json"))
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


class FakeHub:
    """A local HTTP server answering the two requests huggingface_hub makes to download a file
    (HEAD for its metadata, GET for its bytes) from ``repos`` (repo id -> {path: bytes}), with the
    Hub's error headers for unknown repositories and files. Point ``HF_ENDPOINT`` at ``url``."""

    def __init__(self, repos: dict[str, dict[str, bytes]], commit: str = "b" * 40) -> None:
        import http.server
        import threading

        hub = self
        self.repos, self.commit = repos, commit
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                parts = self.path.split("?")[0].strip("/").split("/")
                repo_id, rest = "/".join(parts[:2]), parts[2:]
                if repo_id not in hub.repos:
                    return self._error(404, "RepoNotFound", "Repository Not Found")
                if len(rest) < 3 or rest[0] != "resolve" or rest[1] not in ("main", hub.commit):
                    return self._error(404, "RevisionNotFound", "Revision Not Found")
                data = hub.repos[repo_id].get("/".join(rest[2:]))
                if data is None:
                    return self._error(404, "EntryNotFound", "Entry Not Found")
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{content_address(data, large=True)}"')
                self.send_header("X-Repo-Commit", hub.commit)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, message: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
