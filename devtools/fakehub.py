"""A local fake of the Hugging Face Hub, for tests that drive the real huggingface_hub client.

`FakeHub` serves tiny repos on 127.0.0.1 (a threaded stdlib HTTP server) with the routes
and headers huggingface_hub 2.4.0 uses for a download:

- `GET /api/models/{repo}/revision/{rev}`: model info (`sha`, `siblings`, `gated`);
- `GET /api/models/{repo}/tree/{rev}?recursive=true`: files with size, git oid, LFS info;
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag` (for LFS files the
  sha256, with `X-Linked-Etag`/`X-Linked-Size`), and `Range: bytes=N-` for resumes.

It never advertises Xet storage, so the client always takes the plain HTTP path. Errors
carry the `X-Error-Code` headers the client maps to its exceptions: a missing repo is 404
`RepoNotFound`; a gated repo's files need `Authorization: Bearer <FakeHub.token>` (no token:
401 `GatedRepo`, `token_without_access`: 403 `GatedRepo`); any other token is rejected with
401 "Invalid credentials". Listing a gated repo is public, as on the real Hub.

Knobs for tests: `break_after` (close the connection mid-body), `slow` (sleep between
chunks), and counters of the bytes served per file (`served`) and of every request
(`requests`).

Tests use it through the `fake_hub` fixture (tests/conftest.py); `make run` serves a demo
repo with it (`python manage.py fake_hub`), so the download and switch flows can be tried
offline.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 64 * 1024
# Files this big (or weights) are served as LFS files, like on the Hub.
LFS_THRESHOLD = 10 * 1024
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_oid(self.content)

    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.content)}\n"
        ).encode()

    def tree_entry(self, path: str) -> dict[str, Any]:
        if not self.lfs:
            return {
                "type": "file",
                "path": path,
                "size": len(self.content),
                "oid": git_blob_oid(self.content),
            }
        pointer = self.pointer()
        return {
            "type": "file",
            "path": path,
            "size": len(self.content),
            "oid": git_blob_oid(pointer),
            "lfs": {"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)},
        }


@dataclass
class FakeRepo:
    repo_id: str
    commit: str
    files: dict[str, FakeFile]
    gated: bool = False


@dataclass
class ServedRequest:
    method: str
    path: str
    range: str | None
    status: int
    bytes_sent: int = 0


@dataclass
class _Break:
    after_bytes: int
    times: int


@dataclass
class _Slow:
    seconds_per_chunk: float
    chunk: int = CHUNK


@dataclass
class FakeHub:
    """The fake Hub server. Use as a context manager, or start()/stop()."""

    port: int = 0  # 0 = a free port
    token: str = "hf_fake_token_with_access"
    token_without_access: str = "hf_fake_token_without_access"
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[ServedRequest] = field(default_factory=list)
    _served: Counter[tuple[str, str]] = field(default_factory=Counter)
    _breaks: dict[tuple[str, str], _Break] = field(default_factory=dict)
    _slow: dict[tuple[str, str], _Slow] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- repos and knobs ---------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        gated: bool = False,
        commit: str | None = None,
    ) -> str:
        """Publish a repo (replacing one of the same id); returns its commit sha."""
        if commit is None:
            digest = hashlib.sha1(repo_id.encode())
            for path in sorted(files):
                digest.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
            commit = digest.hexdigest()
        fake_files = {
            path: FakeFile(
                content=content,
                lfs=len(content) >= LFS_THRESHOLD or path.endswith(_LFS_SUFFIXES),
            )
            for path, content in files.items()
        }
        with self._lock:
            self.repos[repo_id] = FakeRepo(repo_id, commit, fake_files, gated)
        return commit

    def break_after(self, repo_id: str, path: str, n_bytes: int, *, times: int = 1) -> None:
        """The next `times` GETs of the file close the connection after `n_bytes` of body."""
        with self._lock:
            self._breaks[(repo_id, path)] = _Break(n_bytes, times)

    def slow(
        self, repo_id: str, path: str, seconds_per_chunk: float, *, chunk: int = CHUNK
    ) -> None:
        """Serve the file in `chunk`-byte pieces with a sleep after each (0 turns it off)."""
        with self._lock:
            if seconds_per_chunk <= 0:
                self._slow.pop((repo_id, path), None)
            else:
                self._slow[(repo_id, path)] = _Slow(seconds_per_chunk, chunk)

    def served(self, repo_id: str, path: str) -> int:
        """Bytes of this file's content written to clients so far (all GETs)."""
        with self._lock:
            return self._served[(repo_id, path)]

    def file_requests(self, repo_id: str, path: str, method: str = "GET") -> list[ServedRequest]:
        suffix = f"/{repo_id}/resolve/"
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method and r.path.startswith(suffix) and r.path.endswith("/" + path)
            ]

    # --- server ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Hub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        # A short poll interval keeps stop() (which waits for the next poll) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- used by the handler -----------------------------------------------------------

    def _take_break(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            brk = self._breaks.get((repo_id, path))
            if brk is None or brk.times <= 0:
                return None
            brk.times -= 1
            return brk.after_bytes

    def _slowness(self, repo_id: str, path: str) -> _Slow | None:
        with self._lock:
            return self._slow.get((repo_id, path))

    def _count(self, repo_id: str, path: str, n: int, record: ServedRequest) -> None:
        with self._lock:
            self._served[(repo_id, path)] += n
            record.bytes_sent += n

    def _record(self, record: ServedRequest) -> None:
        with self._lock:
            self.requests.append(record)


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_INFO_RE = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE_RE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")
_RESOLVE_RE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub
    # HTTP/1.0: one request per connection, so breaking a body off is just a close.
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        record = ServedRequest(
            method=self.command, path=unquote(url.path), range=self.headers.get("Range"), status=0
        )
        self.hub._record(record)
        try:
            self._check_token()
            if match := _TREE_RE.match(url.path):
                self._tree(match, parse_qs(url.query), record)
            elif match := _INFO_RE.match(url.path):
                self._info(match, record)
            elif match := _RESOLVE_RE.match(url.path):
                self._resolve(match, head=head, record=record)
            else:
                raise _HubError(404, None, f"No route for {url.path}")
        except _HubError as err:
            record.status = err.status
            self._send_error(err, head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download): nothing to answer

    # --- auth and lookup ---------------------------------------------------------------

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _check_token(self) -> None:
        token = self._bearer()
        if token is not None and token not in (self.hub.token, self.hub.token_without_access):
            raise _HubError(401, None, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, rev: str) -> FakeRepo:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        if unquote(rev) not in ("main", repo.commit):
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        return repo

    # --- routes ------------------------------------------------------------------------

    def _info(self, match: re.Match[str], record: ServedRequest) -> None:
        repo = self._repo(match["repo"], match["rev"] or "main")
        body = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(repo.files)],
        }
        record.status = 200
        self._send_json(body)

    def _tree(
        self, match: re.Match[str], query: dict[str, list[str]], record: ServedRequest
    ) -> None:
        repo = self._repo(match["repo"], match["rev"])
        prefix = (unquote(match["sub"]).strip("/") + "/") if match["sub"] else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())}
                    )
            if recursive or len(parts) == 1:
                entries.append(repo.files[path].tree_entry(path))
        record.status = 200
        self._send_json(entries)

    def _resolve(self, match: re.Match[str], *, head: bool, record: ServedRequest) -> None:
        repo = self._repo(match["repo"], match["rev"])
        path = unquote(match["path"])
        if repo.gated:
            token = self._bearer()
            if token is None:
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                    repo.commit,
                )
            if token != self.hub.token:
                raise _HubError(
                    403,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted and you are not in the "
                    "authorized list.",
                    repo.commit,
                )
        fake = repo.files.get(path)
        if fake is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist", repo.commit)

        size = len(fake.content)
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and not head:
            m = _RANGE_RE.match(range_header.strip())
            if m is None:
                raise _HubError(416, None, f"Unsupported Range {range_header}", repo.commit)
            start = int(m[1])
            end = min(int(m[2]), size - 1) if m[2] else size - 1
            if start >= size or start > end:
                raise _HubError(416, None, f"Range {range_header} not satisfiable", repo.commit)
            status = 206

        self.send_response(status)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{fake.etag}"')
        if fake.lfs:
            self.send_header("X-Linked-Etag", f'"{fake.sha256}"')
            self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        record.status = status
        if head:
            return
        self._send_body(repo.repo_id, path, fake.content[start : end + 1], record)

    def _send_body(self, repo_id: str, path: str, body: bytes, record: ServedRequest) -> None:
        cut = self.hub._take_break(repo_id, path)
        slow = self.hub._slowness(repo_id, path)
        chunk = slow.chunk if slow else CHUNK
        limit = len(body) if cut is None else min(cut, len(body))
        offset = 0
        while offset < limit:
            piece = body[offset : min(offset + chunk, limit)]
            self.wfile.write(piece)
            self.wfile.flush()
            self.hub._count(repo_id, path, len(piece), record)
            offset += len(piece)
            if slow:
                time.sleep(slow.seconds_per_chunk)
        if cut is not None and cut < len(body):
            # Drop the connection mid-body, as a flaky network would.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- responses ---------------------------------------------------------------------

    def _send_json(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: _HubError, *, head: bool) -> None:
        data = json.dumps({"error": err.message}).encode()
        self.send_response(err.status)
        if err.code:
            self.send_header("X-Error-Code", err.code)
        self.send_header("X-Error-Message", err.message)
        if err.commit:
            self.send_header("X-Repo-Commit", err.commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
