"""The Hugging Face Hub adapter: the only module that imports huggingface_hub.

It answers four questions for the rest of TalkTuah, with plain synchronous functions
that the download worker calls in its own process:

- what would a download of a repo fetch (`plan_download`: commit, files, sizes, with
  the weights vLLM never loads left out), and is there room for it (`check_disk`);
- fetch it into the Hugging Face cache that vLLM reads (`download`), with byte progress,
  cancellation, and resume of a partially downloaded file on the next run;
- what is in that cache, and is it complete (`cached_models`, `snapshot_path`).

Every failure leaves as a `HubError` (plumbing/errors.py) whose subclass says what went
wrong (`RepoNotFound`, `RepoGated`, `DiskFull`, `DownloadCancelled`, ...) and whose text
a person can act on.

Why `download` does not just call `snapshot_download`: in huggingface_hub 2.4.0 a file
is written to a process-unique `<etag>.<uuid>.incomplete` temporary that is deleted when
the download fails or is interrupted, so an interrupted run restarts that file from
byte 0 (the library only resumes within one call, after a dropped connection). We keep
our own partial blob (`blobs/<etag>.incomplete`) and continue it with the library's
`http_get` (Range requests, retries), then let `hf_hub_download` link the finished blob
into the snapshot, so the cache layout stays the library's. It also gives exact per-file
progress, and matches files by exact path rather than by glob.

huggingface_hub reads HF_ENDPOINT from the environment once, at import time, so the
endpoint (from Django settings) is passed explicitly to every call, and the library is
imported inside the functions, never at module import.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings

from plumbing.errors import (
    DiskFull,
    DownloadCancelled,
    HubError,
    HubFailure,
    HubUnauthorized,
    HubUnreachable,
    RepoGated,
    RepoNotFound,
)

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoFile as HfRepoFile

logger = logging.getLogger(__name__)

# Headroom on top of the bytes still to download (logs, lock files, a config rewrite).
DISK_MARGIN_BYTES = 256 * 1024 * 1024
# Bytes per progress update: the library's default (10 MiB) makes progress jumpy.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# At most this many on_progress calls per second (the caller throttles DB writes further).
PROGRESS_CALLS_PER_SECOND = 20

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Formats of other frameworks that vLLM never loads (TF, Flax, ONNX, Core ML, Rust, ...).
_NEVER_LOADED_SUFFIXES = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel")
_NEVER_LOADED_DIRS = ("onnx/", "coreml/", "openvino/")
# Superseded when the repo has safetensors: vLLM loads those and ignores these.
_SUPERSEDED_SUFFIXES = (".bin", ".pth", ".pt", ".gguf")


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    # The name of the file's blob in the cache: the LFS sha256, else the git blob id.
    etag: str = ""


@dataclass(frozen=True)
class RepoPlan:
    repo_id: str
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    # Files of the repo left out on purpose (weights vLLM will not load, .gitattributes).
    skipped: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    current_file: str
    per_file: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    commit: str
    snapshot_path: Path
    size_bytes: int
    complete: bool
    last_modified: float


# --- settings --------------------------------------------------------------------------


def _endpoint() -> str:
    return str(settings.HF_ENDPOINT).rstrip("/")


def _cache_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else settings.HF_CACHE_DIR).expanduser()


def _token(token: str | None) -> str | Literal[False]:
    # False, not None: with None the library would also try a token saved by
    # `hf auth login` on this host; the gateway uses only the token it is configured with.
    return token or settings.HF_TOKEN or False


def _repo_dir(cache_dir: Path, repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")


# --- errors ----------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """1234567890 -> '1.2 GB' (decimal units, as the Hub shows sizes)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _to_hub_error(
    exc: BaseException, *, repo_id: str, revision: str, token: str | Literal[False]
) -> HubError:
    """Translate what huggingface_hub (or the disk) raised into one HubError."""
    import httpx2
    from huggingface_hub import errors

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFull(f"The disk of the Hugging Face cache is full: {exc}.")
    if isinstance(exc, errors.GatedRepoError):
        if token:
            return RepoGated(
                f"The repo '{repo_id}' is gated and the configured HF_TOKEN has no access to "
                f"it: accept its terms at https://huggingface.co/{repo_id} with that account.",
            )
        return RepoGated(
            f"The repo '{repo_id}' is gated: accept its terms at "
            f"https://huggingface.co/{repo_id} and set HF_TOKEN to a token of that account.",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return RepoNotFound(f"The repo '{repo_id}' has no revision '{revision}' on the Hub.")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return RepoNotFound(f"A file of '{repo_id}' is missing on the Hub ({exc.response.url}).")
    if isinstance(exc, errors.DisabledRepoError):
        return RepoNotFound(f"The repo '{repo_id}' is disabled on the Hub.")
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = "check the token in HF_TOKEN" if token else "set HF_TOKEN"
        return RepoNotFound(
            f"The repo '{repo_id}' does not exist on the Hub (or is private: {hint}).",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code
        if status == 401:
            return HubUnauthorized("The Hub rejected the token (401 Unauthorized): check HF_TOKEN.")
        if status == 403:
            return HubUnauthorized(
                f"The Hub refused access to '{repo_id}' (403 Forbidden): the token in "
                "HF_TOKEN lacks the permission to read it.",
            )
        if status == 429 or status >= 500:
            return HubUnreachable(
                f"The Hub is unavailable for now (HTTP {status}) while fetching '{repo_id}': "
                "retry later.",
            )
        return HubFailure(f"The Hub answered HTTP {status} for '{repo_id}': {exc}")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubUnreachable("HF_HUB_OFFLINE is set in this process: it cannot reach the Hub.")
    if isinstance(exc, httpx2.TransportError | errors.LocalEntryNotFoundError | TimeoutError):
        return HubUnreachable(f"Cannot reach the Hub at {_endpoint()}: {exc}")
    if isinstance(exc, errors.HFValidationError):
        return HubFailure(f"'{repo_id}' is not a valid Hub repo id: {exc}")
    return HubFailure(f"Unexpected error from the Hub client for '{repo_id}': {exc!r}")


# --- planning --------------------------------------------------------------------------


def _select_files(entries: Iterable[HfRepoFile]) -> tuple[list[RepoFile], list[str]]:
    """Keep what vLLM needs (config, tokenizer, one weight format); name what was left."""
    files = [
        RepoFile(
            path=e.path,
            size=e.lfs.size if e.lfs is not None else e.size,
            etag=e.lfs.sha256 if e.lfs is not None else e.blob_id,
        )
        for e in entries
    ]
    safetensors = [f.path for f in files if f.path.endswith(".safetensors")]
    hf_format_safetensors = [
        p for p in safetensors if not PurePosixPath(p).name.startswith("consolidated")
    ]

    def skip(path: str) -> bool:
        name = PurePosixPath(path).name
        if name == ".gitattributes":
            return True
        if path.endswith(_NEVER_LOADED_SUFFIXES) or path.startswith(_NEVER_LOADED_DIRS):
            return True
        if safetensors and (path.endswith(_SUPERSEDED_SUFFIXES) or path.startswith("original/")):
            return True
        # Mistral repos ship the same weights twice: HF shards and consolidated.safetensors.
        return bool(
            hf_format_safetensors
            and name.startswith("consolidated")
            and name.endswith(".safetensors")
        )

    kept = sorted((f for f in files if not skip(f.path)), key=lambda f: f.path)
    skipped = sorted(f.path for f in files if skip(f.path))
    return kept, skipped


def plan_download(repo_id: str, revision: str = "main", *, token: str | None = None) -> RepoPlan:
    """Resolve `revision` to a commit and list the files (with sizes) to download."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile as HfRepoFile

    tok = _token(token)
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, revision=revision, token=tok)
        if not info.sha:
            raise HubFailure(f"The Hub did not say which commit '{revision}' is.")
        entries = [
            e
            for e in api.list_repo_tree(repo_id, revision=info.sha, recursive=True, token=tok)
            if isinstance(e, HfRepoFile)
        ]
        files, skipped = _select_files(entries)
        if not files:
            raise RepoNotFound(f"The repo '{repo_id}' has no files to download.")
        if info.gated:
            # Listing a gated repo is public, downloading is not: ask for one file's
            # metadata now, so a missing access fails the plan instead of the download.
            probe = next((f for f in files if f.path == "config.json"), files[0])
            get_hf_file_metadata(
                hf_hub_url(repo_id, probe.path, revision=info.sha, endpoint=endpoint),
                token=tok,
                endpoint=endpoint,
            )
    except Exception as exc:
        raise _to_hub_error(exc, repo_id=repo_id, revision=revision, token=tok) from exc
    return RepoPlan(
        repo_id=repo_id,
        revision=revision,
        commit=info.sha,
        files=tuple(files),
        skipped=tuple(skipped),
    )


# --- disk ------------------------------------------------------------------------------


def _bytes_present(repo_dir: Path, plan: RepoPlan, f: RepoFile) -> int:
    """How much of `f` is already in the cache (whole, or a partial blob to resume)."""
    if (repo_dir / "snapshots" / plan.commit / f.path).exists():
        return f.size
    if not f.etag:
        return 0
    blobs = repo_dir / "blobs"
    if (blobs / f.etag).exists():
        return f.size
    partial = blobs / f"{f.etag}.incomplete"
    try:
        return min(partial.stat().st_size, f.size)
    except OSError:
        return 0


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(plan: RepoPlan, *, cache_dir: Path | None = None) -> None:
    """Raise DiskFull when the cache's disk cannot take what is still missing."""
    cache = _cache_dir(cache_dir)
    repo_dir = _repo_dir(cache, plan.repo_id)
    missing = sum(f.size - _bytes_present(repo_dir, plan, f) for f in plan.files)
    if missing <= 0:
        return
    free = shutil.disk_usage(_existing_ancestor(cache)).free
    if free < missing + DISK_MARGIN_BYTES:
        raise DiskFull(
            f"Not enough disk space for '{plan.repo_id}' in {cache}: "
            f"{human_bytes(missing)} still to download (plus {human_bytes(DISK_MARGIN_BYTES)} "
            f"headroom), {human_bytes(free)} free.",
        )


# --- download --------------------------------------------------------------------------


class _Tracker:
    """Byte progress of one download, reported to the caller at a bounded rate.

    Files are fetched one after the other, so the bytes the library reports always
    belong to `current`.
    """

    def __init__(
        self,
        plan: RepoPlan,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.plan = plan
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.done: dict[str, int] = {f.path: 0 for f in plan.files}
        self.sizes: dict[str, int] = {f.path: f.size for f in plan.files}
        self.finished: set[str] = set()
        self.current = ""
        self.last_emit = float("-inf")
        self.min_interval = 1.0 / PROGRESS_CALLS_PER_SECOND

    def start(self, bytes_present: dict[str, int]) -> None:
        """Count what the cache already holds, so progress starts from there."""
        self.done.update(bytes_present)
        self.finished.update(p for p, n in bytes_present.items() if n >= self.sizes[p])
        self.emit(force=True)

    def begin(self, path: str, bytes_present: int) -> None:
        self.current = path
        self.done[path] = bytes_present
        self.check_stop()
        self.emit()

    def restart_file(self, bytes_present: int) -> None:
        self.done[self.current] = bytes_present

    def advance(self, n: int) -> None:
        self.done[self.current] += n
        self.check_stop()
        self.emit()

    def finish(self, path: str) -> None:
        self.done[path] = self.sizes[path]
        self.finished.add(path)
        self.emit()

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise DownloadCancelled(
                f"The download of '{self.plan.repo_id}' was stopped; what was downloaded "
                "stays in the cache and the next run continues from there.",
            )

    def snapshot(self) -> Progress:
        per_file = {
            path: (max(0, min(done, self.sizes[path])), self.sizes[path])
            for path, done in self.done.items()
        }
        return Progress(
            bytes_done=sum(done for done, _ in per_file.values()),
            bytes_total=self.plan.total_bytes,
            files_done=len(self.finished),
            files_total=len(self.plan.files),
            current_file=self.current,
            per_file=per_file,
        )

    def emit(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self.last_emit < self.min_interval:
            return
        self.last_emit = now
        self.on_progress(self.snapshot())


def _progress_bar_class(tracker: _Tracker) -> type[Any]:
    """A silent tqdm for huggingface_hub's `http_get` that feeds `tracker` instead."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class TrackerBar(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            # A bar is made once per file and reused by the library's in-call retries.
            tracker.restart_file(int(kwargs.get("initial") or 0))

        def update(self, n: float | None = 1) -> bool | None:
            # Called from the library's read loop: raising here (cancel) aborts the
            # transfer and leaves the partial blob for the next run.
            tracker.advance(int(n or 0))
            return None

    return TrackerBar


def _fetch_blob(
    *,
    plan: RepoPlan,
    f: RepoFile,
    repo_dir: Path,
    endpoint: str,
    token: str | Literal[False],
    tracker: _Tracker,
) -> None:
    """Put `f`'s blob into the cache, continuing a partial one when there is one."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(plan.repo_id, f.path, revision=plan.commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    etag = meta.etag or f.etag
    size = meta.size if meta.size is not None else f.size
    blob = repo_dir / "blobs" / etag
    if blob.exists():
        return
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(f"{etag}.incomplete")
    if partial.exists() and partial.stat().st_size > size:
        partial.unlink()  # not a prefix of this blob: start over

    # Same choice as hf_hub_download: follow the Hub's redirect ourselves, and do not
    # send the token to another host (a CDN with a signed URL).
    headers = build_hf_headers(token=token)
    download_url = url
    if meta.xet_file_data is None and meta.location != url:
        download_url = meta.location
        if _origin(download_url) != _origin(url):
            headers.pop("authorization", None)

    with partial.open("ab") as out:
        resume_size = out.tell()
        tracker.restart_file(resume_size)
        http_get(
            download_url,
            out,
            resume_size=resume_size,
            headers=headers,
            expected_size=size,
            displayed_filename=f.path,
            tqdm_class=_progress_bar_class(tracker),
        )
    os.replace(partial, blob)


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _write_ref(repo_dir: Path, revision: str, commit: str) -> None:
    """Record `revision -> commit` (refs/main), as snapshot_download would, so that
    `from_pretrained('org/name')` and vLLM find this snapshot offline."""
    if revision == commit or not revision:
        return
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def download(
    plan: RepoPlan,
    *,
    token: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Fetch the plan's files into the Hugging Face cache and return the snapshot path.

    Files already in the cache are not fetched again; a file interrupted by a previous
    run (cancel, crash, network failure) continues where it stopped. `on_progress` gets
    at most PROGRESS_CALLS_PER_SECOND calls, plus a final one at 100%. `should_stop` is
    polled for every chunk received (keep it cheap): when it returns True the download
    stops with DownloadCancelled.
    """
    from huggingface_hub import constants, hf_hub_download

    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, DOWNLOAD_CHUNK_BYTES)
    tok = _token(token)
    endpoint = _endpoint()
    cache = _cache_dir(None)
    repo_dir = _repo_dir(cache, plan.repo_id)
    snapshot = repo_dir / "snapshots" / plan.commit
    tracker = _Tracker(plan, on_progress, should_stop)
    try:
        tracker.start({f.path: _bytes_present(repo_dir, plan, f) for f in plan.files})
        # Made up front so that the cache scan sees an interrupted repo (as incomplete)
        # rather than a corrupted one with blobs but no snapshot.
        snapshot.mkdir(parents=True, exist_ok=True)
        for f in plan.files:
            tracker.begin(f.path, _bytes_present(repo_dir, plan, f))
            if not (snapshot / f.path).exists():
                _fetch_blob(
                    plan=plan,
                    f=f,
                    repo_dir=repo_dir,
                    endpoint=endpoint,
                    token=tok,
                    tracker=tracker,
                )
                # The blob is in place: the library only links it into the snapshot.
                hf_hub_download(
                    plan.repo_id,
                    f.path,
                    revision=plan.commit,
                    cache_dir=cache,
                    endpoint=endpoint,
                    token=tok,
                )
            tracker.finish(f.path)
        _write_ref(repo_dir, plan.revision, plan.commit)
    except Exception as exc:
        raise _to_hub_error(exc, repo_id=plan.repo_id, revision=plan.revision, token=tok) from exc
    tracker.emit(force=True)
    return snapshot


# --- the cache -------------------------------------------------------------------------


def _snapshot_complete(snapshot: Path) -> bool:
    """config.json, weights, and every shard its index names."""
    if not (snapshot / "config.json").is_file():
        return False
    weights = [p for p in snapshot.rglob("*") if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file()]
    if not weights:
        return False
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = snapshot / index_name
        if not index.exists():
            continue
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        if not all((snapshot / shard).is_file() for shard in shards):
            return False
    return True


def cached_models(*, cache_dir: Path | None = None) -> list[CachedModel]:
    """The model repos in the cache, each with its newest revision."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(_cache_dir(cache_dir))
    except (CacheNotFound, OSError, ValueError):
        return []
    for warning in info.warnings:
        logger.debug("Hugging Face cache: %s", warning)
    with_partials = {partial.file_path.parent.parent.name for partial in info.incomplete_files}
    models = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        models.append(
            CachedModel(
                repo_id=repo.repo_id,
                commit=newest.commit_hash,
                snapshot_path=newest.snapshot_path,
                size_bytes=newest.size_on_disk,
                complete=repo.repo_path.name not in with_partials
                and _snapshot_complete(newest.snapshot_path),
                last_modified=newest.last_modified,
            )
        )
    return sorted(models, key=lambda m: m.repo_id)


def snapshot_path(repo_id: str, *, cache_dir: Path | None = None) -> Path | None:
    """The snapshot directory of a completely downloaded repo, or None."""
    for model in cached_models(cache_dir=cache_dir):
        if model.repo_id == repo_id:
            return model.snapshot_path if model.complete else None
    return None
