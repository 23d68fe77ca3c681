"""Reads: what the API, the admin, the health check and the worker show of downloads,
downloaded models, switches, workers and usage. Nothing here writes (the workflows that
do are in `services.py`)."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from backends import health
from backends.discovery import backend_resolve, backend_specs
from backends.models import DEFAULT_BACKEND
from backends.spec import BackendSpec, default_spec
from modelmgr import hub
from modelmgr.models import (
    ACTIVE_SWITCH_PHASES,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    ServedModel,
    SwitchKind,
    SwitchPhase,
    UsageDaily,
    WorkerHeartbeat,
)
from plumbing.errors import JobNotFound

log = logging.getLogger("talktuah.backends")

# How old a backend's health record may be when a page or an answer shows it.
SHOWN_HEALTH_SECONDS = 1.0

# --- downloads -------------------------------------------------------------------


def download_get(*, job_id: int | None = None, backend: str | None = None) -> DownloadJob | None:
    """One job, or the current (running, else queued) one, else the last one (of
    `backend`'s jobs when it is given)."""
    if job_id is not None:
        job = DownloadJob.objects.filter(pk=job_id).first()
        if job is None:
            raise JobNotFound(f"No download job {job_id}.")
        return job
    jobs = (
        DownloadJob.objects.all()
        if backend is None
        else DownloadJob.objects.filter(backend=backend)
    )
    return (
        jobs.filter(status=DownloadStatus.RUNNING).order_by("started_at").first()
        or jobs.filter(status=DownloadStatus.QUEUED).order_by("created_at").first()
        or jobs.order_by("-created_at").first()
    )


def download_progress(job: DownloadJob, *, now: datetime | None = None) -> dict[str, Any]:
    """What the progress endpoint and the admin show of a job."""
    now = now or timezone.now()
    speed = 0.0
    eta = None
    if job.status == DownloadStatus.RUNNING and job.started_at:
        elapsed = max((now - job.started_at).total_seconds(), 0.001)
        speed = job.bytes_done / elapsed
        if speed > 0 and job.bytes_total:
            eta = round((job.bytes_total - job.bytes_done) / speed, 1)
    return {
        "job_id": job.pk,
        "model_id": job.repo_id,
        "revision": job.revision,
        "commit": job.commit or None,
        "status": job.status,
        "bytes_total": job.bytes_total,
        "bytes_completed": job.bytes_done,
        "percent": job.percent,
        "files_total": job.files_total,
        "files_completed": job.files_done,
        "current_file": job.current_file or None,
        "files": [
            {"path": path, "bytes_completed": pair[0], "bytes_total": pair[1]}
            for path, pair in sorted(job.file_progress.items())
        ],
        "speed_bytes_per_second": round(speed),
        "eta_seconds": eta,
        "error": job.error or None,
        "auto_switch": job.auto_switch,
        "requested_by": job.requested_by or None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "backend": job.backend,
        "worker_alive": (alive := worker_alive(job.backend)),
        "note": None
        if job.status != DownloadStatus.QUEUED or alive
        else worker_missing(job.backend),
    }


def worker_missing(backend: str) -> str:
    """What to do when no worker of `backend` runs (the API's note, the admin's warning)."""
    if backend == DEFAULT_BACKEND:
        return "No worker is running: start one with `python manage.py run_worker`."
    return (
        f"No worker of backend '{backend}' is running: start one on its host with "
        f"`python manage.py run_worker --backend {backend}`."
    )


# --- downloaded models -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadedModel:
    repo_id: str
    commit: str
    size_bytes: int
    snapshot_path: str
    downloaded_by: str
    downloaded_at: datetime | None
    last_served_at: datetime | None


def downloaded_models(*, backend: BackendSpec) -> list[DownloadedModel]:
    """Complete models in a backend's Hugging Face cache, with what only the database
    knows. The default backend's cache is this host's (the truth about what is on
    disk); another backend's is what its worker last reported from its host."""
    known = {m.repo_id: m for m in ServedModel.objects.all()}
    if not backend.local_cache:
        return [
            _from_inventory(item, known.get(str(item.get("repo_id"))))
            for item in worker_inventory(backend.name)
        ]
    result = []
    configured = backend.engine.model
    if started_by_name(configured, backend=backend) and hub.snapshot_path(configured) is None:
        # Not in the cache, but servable: the engine starts it by name.
        extra = known.get(configured)
        result.append(
            DownloadedModel(
                repo_id=configured,
                commit="",
                size_bytes=0,
                snapshot_path=f"{configured} (started by name)",
                downloaded_by="",
                downloaded_at=None,
                last_served_at=extra.last_served_at if extra else None,
            )
        )
    for cached in hub.cached_models():
        if not cached.complete:
            continue
        extra = known.get(cached.repo_id)
        result.append(
            DownloadedModel(
                repo_id=cached.repo_id,
                commit=cached.commit,
                size_bytes=cached.size_bytes,
                snapshot_path=str(cached.snapshot_path),
                downloaded_by=extra.downloaded_by if extra else "",
                downloaded_at=extra.downloaded_at if extra else None,
                last_served_at=extra.last_served_at if extra else None,
            )
        )
    return sorted(result, key=lambda m: m.repo_id)


def _from_inventory(item: dict[str, Any], extra: ServedModel | None) -> DownloadedModel:
    return DownloadedModel(
        repo_id=str(item.get("repo_id")),
        commit=str(item.get("commit") or ""),
        size_bytes=int(item.get("size_bytes") or 0),
        snapshot_path=str(item.get("path") or ""),
        downloaded_by=extra.downloaded_by if extra else "",
        downloaded_at=extra.downloaded_at if extra else None,
        last_served_at=extra.last_served_at if extra else None,
    )


def local_inventory() -> list[dict[str, Any]]:
    """This host's complete cached models, as a worker reports them."""
    return [
        {
            "repo_id": cached.repo_id,
            "commit": cached.commit,
            "size_bytes": cached.size_bytes,
            "path": str(cached.snapshot_path),
        }
        for cached in hub.cached_models()
        if cached.complete
    ]


def worker_inventory(backend: str) -> list[dict[str, Any]]:
    """What the freshest live worker of `backend` reported its host's cache holds."""
    beat = _live_workers(backend).order_by("-last_seen").first()
    return [item for item in (beat.inventory if beat else []) if isinstance(item, dict)]


def is_downloaded(repo_id: str, *, backend: BackendSpec) -> bool:
    """Whether the backend can be switched to `repo_id`: in its cache, or its configured
    model (VLLM_MODEL: the engine starts it by name, so it is always servable again)."""
    if started_by_name(repo_id, backend=backend):
        return True
    if backend.local_cache:
        return hub.snapshot_path(repo_id) is not None
    return any(item.get("repo_id") == repo_id for item in worker_inventory(backend.name))


def started_by_name(repo_id: str, *, backend: BackendSpec) -> bool:
    """`repo_id` is the model the backend's engine is configured with (VLLM_MODEL, or
    the row's), which it starts by its name (vLLM fetches it, or the demo's simulator
    takes it as it is) rather than from the cache."""
    return bool(repo_id) and repo_id == backend.engine.model and not backend.engine.read_only


def model_source(repo_id: str, *, backend: BackendSpec) -> str | None:
    """What the engine is started with to serve `repo_id` on this host: its cached
    snapshot, else its name when the backend starts it by name, else None."""
    snapshot = hub.snapshot_path(repo_id)
    if snapshot is not None:
        return str(snapshot)
    return repo_id if started_by_name(repo_id, backend=backend) else None


# --- switches ----------------------------------------------------------------------


def switch_get(pk: int) -> ModelSwitch | None:
    return ModelSwitch.objects.filter(pk=pk).first()


def active_switch(backend: str | None = None) -> ModelSwitch | None:
    """The switch in progress (on `backend`, or on any when None)."""
    running = ModelSwitch.objects.filter(phase__in=ACTIVE_SWITCH_PHASES)
    if backend is not None:
        running = running.filter(backend=backend)
    return running.first()


def latest_switch(backend: str | None = None) -> ModelSwitch | None:
    """The switch in progress, else the last one (on `backend`, or on any when None)."""
    switches = (
        ModelSwitch.objects.all()
        if backend is None
        else ModelSwitch.objects.filter(backend=backend)
    )
    return active_switch(backend) or switches.order_by("-created_at").first()


# A download's auto-switch is requested right after the download is marked finished.
CAUSE_WINDOW = timedelta(seconds=30)


def switch_cause(switch: ModelSwitch) -> DownloadJob | None:
    """The download whose "serve it when done" requested this switch: a job of the same
    backend and model, with auto_switch, that succeeded just before the switch was made
    (download_run requests it as soon as the job has finished)."""
    if switch.kind != SwitchKind.SWITCH:
        return None
    return (
        DownloadJob.objects.filter(
            backend=switch.backend,
            repo_id=switch.to_model,
            auto_switch=True,
            status=DownloadStatus.SUCCEEDED,
            finished_at__lte=switch.created_at + timedelta(seconds=1),
            finished_at__gte=switch.created_at - CAUSE_WINDOW,
        )
        .order_by("-finished_at")
        .first()
    )


def active_switches() -> list[ModelSwitch]:
    """Every switch in progress (one per backend at most), oldest first."""
    return list(ModelSwitch.objects.filter(phase__in=ACTIVE_SWITCH_PHASES).order_by("created_at"))


def loading_status(backend: BackendSpec) -> dict[str, Any]:
    """Is the backend's vLLM ready, on which model, and where a switch is."""
    found = health.look_sync(backend, max_age=SHOWN_HEALTH_SECONDS)
    switches = ModelSwitch.objects.filter(backend=backend.name).order_by("-created_at")
    switch = switches.first()
    failed = switches.filter(phase=SwitchPhase.FAILED).first()
    return {
        "backend": backend.name,
        "ready": found.served is not None and not (switch and switch.is_active),
        "model": found.served,
        "upstream": found.detail,
        "phase": switch.phase if switch else None,
        "switch": switch_summary(switch) if switch else None,
        "since": switch.phase_changed_at if switch else None,
        "last_error": failed.error if failed else None,
    }


def switch_summary(switch: ModelSwitch) -> dict[str, Any]:
    return {
        "id": switch.pk,
        "backend": switch.backend,
        "from_model": switch.from_model or None,
        "to_model": switch.to_model,
        "phase": switch.phase,
        "requested_by": switch.requested_by or None,
        "created_at": switch.created_at,
        "started_at": switch.started_at,
        "finished_at": switch.finished_at,
        "duration_seconds": switch.duration_seconds,
        "error": switch.error or None,
    }


# --- workers and the whole picture ------------------------------------------------


def _live_workers(backend: str | None) -> QuerySet[WorkerHeartbeat]:
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    beats = WorkerHeartbeat.objects.filter(last_seen__gte=cutoff)
    return beats if backend is None else beats.filter(backend=backend)


def worker_alive(backend: str | None = None) -> bool:
    """A worker (of `backend`, or any when None) beat recently."""
    return _live_workers(backend).exists()


def model_status(backend: BackendSpec) -> dict[str, Any]:
    """A backend's downloaded models, whether any is available, which one it serves."""
    models = downloaded_models(backend=backend)
    found = health.look_sync(backend, max_age=SHOWN_HEALTH_SECONDS)
    switch = active_switch(backend.name)
    return {
        "backend": backend.name,
        "models": [
            {
                "model_id": m.repo_id,
                "size_bytes": m.size_bytes,
                "commit": m.commit,
                "path": m.snapshot_path,
                "downloaded_by": m.downloaded_by or None,
                "downloaded_at": m.downloaded_at,
                "last_served_at": m.last_served_at,
            }
            for m in models
        ],
        "models_available": bool(models),
        "current_model": found.served,
        "upstream_healthy": found.healthy,
        "switch_in_progress": switch_summary(switch) if switch else None,
        "engine": backend.engine.kind,
        "worker_alive": worker_alive(backend.name),
    }


def per_backend(
    read: Callable[[BackendSpec], dict[str, Any]], backend: str | None
) -> dict[str, Any]:
    """A per-backend answer (model status, loading status) for the backend named; with
    none named, the first backend's, plus every backend's under `backends` when there
    are several."""
    if backend:
        return read(backend_resolve(backend))
    specs = backend_specs()
    if len(specs) <= 1:
        return read(specs[0] if specs else default_spec())
    health.look_all_sync(specs, max_age=SHOWN_HEALTH_SECONDS)  # in parallel, not in turn
    each = [read(spec) for spec in specs]
    return {**each[0], "backends": each}


# --- usage -----------------------------------------------------------------------------


def usage_rows(*, key_prefix: str, days: int) -> list[dict[str, Any]]:
    """A key's usage rows of the last `days` days, newest first."""
    since = timezone.now().date() - timedelta(days=days - 1)
    return [
        {
            "day": row.day.isoformat(),
            "model": row.model,
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
        }
        for row in UsageDaily.objects.filter(key_prefix=key_prefix, day__gte=since)
    ]


def usage_summary(*, days: int) -> dict[str, Any]:
    """Totals per key and tokens per day over the last `days` days (for the admin)."""
    today = timezone.now().date()
    since = today - timedelta(days=days - 1)
    rows = UsageDaily.objects.filter(day__gte=since)
    per_key = list(
        rows.values("key_prefix", "key_name")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
        .order_by("-completion_tokens", "key_name")
    )
    by_day: dict[date, dict[str, Any]] = {
        row["day"]: dict(row)
        for row in rows.values("day").annotate(
            requests=Sum("requests"), tokens=Sum(F("prompt_tokens") + F("completion_tokens"))
        )
    }
    per_day = []
    for offset in range(days):
        day = since + timedelta(days=offset)
        found = by_day.get(day, {})
        per_day.append(
            {"day": day, "requests": found.get("requests", 0), "tokens": found.get("tokens", 0)}
        )
    return {"days": days, "since": since, "per_key": per_key, "per_day": per_day}
