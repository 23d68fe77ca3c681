"""Reads: what the API, the admin, the health check and the worker show of downloads,
downloaded models, switches, workers and usage. Nothing here writes (the workflows that
do are in `services.py`)."""

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from modelmgr import hub
from modelmgr.models import (
    ACTIVE_SWITCH_PHASES,
    Backend,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    ServedModel,
    SwitchPhase,
    UsageDaily,
    WorkerHeartbeat,
)
from plumbing import vllm
from plumbing.errors import JobNotFound, SecretUnreadable
from plumbing.secrets import unseal

log = logging.getLogger("talktuah.backends")

# --- downloads -------------------------------------------------------------------


def download_get(*, job_id: int | None = None) -> DownloadJob | None:
    """One job, or the current (running, else queued) one, else the last one."""
    if job_id is not None:
        job = DownloadJob.objects.filter(pk=job_id).first()
        if job is None:
            raise JobNotFound(f"No download job {job_id}.")
        return job
    return (
        DownloadJob.objects.filter(status=DownloadStatus.RUNNING).order_by("started_at").first()
        or DownloadJob.objects.filter(status=DownloadStatus.QUEUED).order_by("created_at").first()
        or DownloadJob.objects.order_by("-created_at").first()
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
        "worker_alive": worker_alive(),
        "note": None
        if job.status != DownloadStatus.QUEUED or worker_alive()
        else "No worker is running: start one with `python manage.py run_worker`.",
    }


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


def downloaded_models() -> list[DownloadedModel]:
    """Complete models in the Hugging Face cache (the truth about what is on disk),
    with what only the database knows."""
    known = {m.repo_id: m for m in ServedModel.objects.all()}
    result = []
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


# --- switches ----------------------------------------------------------------------


def active_switch() -> ModelSwitch | None:
    return ModelSwitch.objects.filter(phase__in=ACTIVE_SWITCH_PHASES).first()


def loading_status() -> dict[str, Any]:
    """Is vLLM ready, on which model, and where a switch is."""
    probe = vllm.probe()
    switch = ModelSwitch.objects.order_by("-created_at").first()
    last_failed = ModelSwitch.objects.filter(phase=SwitchPhase.FAILED).order_by("-created_at")
    failed = last_failed.first()
    return {
        "ready": probe.healthy and bool(probe.models) and not (switch and switch.is_active),
        "model": probe.models[0] if probe.models else None,
        "upstream": probe.detail,
        "phase": switch.phase if switch else None,
        "switch": switch_summary(switch) if switch else None,
        "since": switch.phase_changed_at if switch else None,
        "last_error": failed.error if failed else None,
    }


def switch_summary(switch: ModelSwitch) -> dict[str, Any]:
    return {
        "id": switch.pk,
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


def worker_alive() -> bool:
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    return WorkerHeartbeat.objects.filter(last_seen__gte=cutoff).exists()


def model_status() -> dict[str, Any]:
    """Downloaded models, whether any is available, which one vLLM serves."""
    models = downloaded_models()
    probe = vllm.probe()
    switch = active_switch()
    return {
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
        "current_model": probe.models[0] if probe.models else None,
        "upstream_healthy": probe.healthy,
        "switch_in_progress": switch_summary(switch) if switch else None,
        "engine": settings.TALKTUAH_ENGINE,
        "worker_alive": worker_alive(),
    }


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


def backend_upstreams() -> list[tuple[vllm.Upstream, int, bool]]:
    """The enabled backends as (upstream, weight, draining); the vLLM API key unsealed,
    for the process's memory only. A key that no longer opens (SECRET_KEY changed) is
    logged and sent as none, so the backend answers 401 rather than the gateway 500."""
    found = []
    for row in Backend.objects.filter(enabled=True).order_by("name"):
        try:
            api_key = unseal(row.api_key_sealed)
        except SecretUnreadable as exc:
            log.error("backend %s: %s", row.name, exc.message)
            api_key = ""
        found.append(
            (vllm.Upstream(row.name, row.base_url.rstrip("/"), api_key), row.weight, row.draining)
        )
    return found
