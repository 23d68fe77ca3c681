"""Model lifecycle workflows: downloads from the Hub and switches of the served model.

The API, the admin and the worker all call these. Requests (`download_start`,
`model_switch_request`, cancel, retry) only write rows; the worker claims the rows
atomically (a conditional UPDATE: of two workers only one sees its UPDATE match) and
runs the long work (`download_run`, `model_switch_run`).
"""

import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from modelmgr import engine as engine_adapter
from modelmgr import hub
from modelmgr.models import (
    ACTIVE_DOWNLOAD_STATUSES,
    ACTIVE_SWITCH_PHASES,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    ServedModel,
    SwitchPhase,
    WorkerHeartbeat,
)
from plumbing import vllm

logger = logging.getLogger(__name__)

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class LifecycleError(Exception):
    """A request the lifecycle refuses, with the HTTP status the API answers."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(LifecycleError):
    status = 400
    code = "invalid_request"


class NotDownloaded(LifecycleError):
    status = 404
    code = "model_not_downloaded"


class JobNotFound(LifecycleError):
    status = 404
    code = "not_found"


class Conflict(LifecycleError):
    status = 409
    code = "conflict"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- downloads -------------------------------------------------------------------


def validate_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise InvalidRequest(
            f"'{repo_id}' is not a Hugging Face repo id (expected 'org/name' or 'name')."
        )
    return repo_id


def download_start(
    *, repo_id: str, revision: str = "main", auto_switch: bool = False, requested_by: str = ""
) -> tuple[DownloadJob, bool]:
    """Queue a download; returns (job, created). A repo already queued or downloading
    returns that job instead of a second one."""
    repo_id = validate_repo_id(repo_id)
    revision = (revision or "main").strip()
    existing = DownloadJob.objects.filter(repo_id=repo_id, status__in=ACTIVE_DOWNLOAD_STATUSES)
    job = existing.first()
    if job is not None:
        return job, False
    try:
        with transaction.atomic():
            job = DownloadJob.objects.create(
                repo_id=repo_id,
                revision=revision,
                auto_switch=auto_switch,
                requested_by=requested_by,
            )
    except IntegrityError:
        # Another request queued the same repo between our check and insert.
        job = existing.first()
        if job is None:
            raise
        return job, False
    return job, True


def download_cancel(*, job: DownloadJob) -> DownloadJob:
    """Cancel a queued job at once; ask the worker to stop a running one."""
    now = timezone.now()
    if DownloadJob.objects.filter(pk=job.pk, status=DownloadStatus.QUEUED).update(
        status=DownloadStatus.CANCELLED, finished_at=now, error="Cancelled before it started."
    ):
        job.refresh_from_db()
        return job
    if not DownloadJob.objects.filter(pk=job.pk, status=DownloadStatus.RUNNING).update(
        cancel_requested=True
    ):
        job.refresh_from_db()
        raise Conflict(
            f"Download {job.pk} is {job.status}; only active downloads can be cancelled."
        )
    job.refresh_from_db()
    return job


def download_retry(*, job: DownloadJob, requested_by: str = "") -> DownloadJob:
    """Queue a failed or cancelled download again (a new job; the old keeps its error).
    Files already complete in the cache are not fetched again."""
    if job.is_active:
        raise Conflict(f"Download {job.pk} is still {job.status}.")
    if job.status == DownloadStatus.SUCCEEDED:
        raise Conflict(f"Download {job.pk} already succeeded.")
    new_job, _created = download_start(
        repo_id=job.repo_id,
        revision=job.revision,
        auto_switch=job.auto_switch,
        requested_by=requested_by or job.requested_by,
    )
    return new_job


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


def download_claim(*, worker: str) -> DownloadJob | None:
    """Take the oldest queued job for this worker, or None."""
    for job_id in (
        DownloadJob.objects.filter(status=DownloadStatus.QUEUED)
        .order_by("created_at")
        .values_list("pk", flat=True)[:5]
    ):
        # Only one worker's UPDATE can match the row while it is still queued.
        if DownloadJob.objects.filter(pk=job_id, status=DownloadStatus.QUEUED).update(
            status=DownloadStatus.RUNNING, worker=worker, started_at=timezone.now(), error=""
        ):
            return DownloadJob.objects.get(pk=job_id)
    return None


class _ProgressWriter:
    """Writes a job's byte progress at most DOWNLOAD_PROGRESS_WRITES_PER_SECOND."""

    def __init__(self, job: DownloadJob) -> None:
        self.job = job
        self.interval = 1.0 / max(settings.DOWNLOAD_PROGRESS_WRITES_PER_SECOND, 0.1)
        self.last_write = 0.0
        self.cancel_requested = False

    def __call__(self, progress: hub.Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.interval:
            return
        self.last_write = now
        DownloadJob.objects.filter(pk=self.job.pk).update(
            bytes_done=progress.bytes_done,
            bytes_total=progress.bytes_total,
            files_done=progress.files_done,
            files_total=progress.files_total,
            current_file=progress.current_file[:500],
            file_progress={path: list(pair) for path, pair in progress.per_file.items()},
            updated_at=timezone.now(),
        )
        # Read the cancel flag on the same cadence, not on every chunk.
        self.cancel_requested = DownloadJob.objects.filter(
            pk=self.job.pk, cancel_requested=True
        ).exists()


def _finish(job: DownloadJob, status: str, error: str = "") -> None:
    DownloadJob.objects.filter(pk=job.pk).update(
        status=status, error=error, finished_at=timezone.now(), current_file=""
    )
    job.refresh_from_db()


def download_run(*, job: DownloadJob, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Run a claimed job to its end. A worker shutting down (should_stop) puts the job
    back in the queue: the partial files stay in the cache and the next run resumes."""
    token = settings.HF_TOKEN
    try:
        plan = hub.plan_download(job.repo_id, job.revision, token=token)
        DownloadJob.objects.filter(pk=job.pk).update(
            commit=plan.commit,
            bytes_total=plan.total_bytes,
            files_total=len(plan.files),
            file_progress={f.path: [0, f.size] for f in plan.files},
        )
        hub.check_disk(plan)
        writer = _ProgressWriter(job)
        hub.download(
            plan,
            token=token,
            on_progress=writer,
            should_stop=lambda: should_stop() or writer.cancel_requested,
        )
    except hub.HubError as exc:
        if exc.kind == "cancelled":
            if (
                should_stop()
                and not DownloadJob.objects.filter(pk=job.pk, cancel_requested=True).exists()
            ):
                DownloadJob.objects.filter(pk=job.pk).update(
                    status=DownloadStatus.QUEUED, worker="", started_at=None
                )
                logger.info("download %s of %s paused for shutdown", job.pk, job.repo_id)
                return
            _finish(job, DownloadStatus.CANCELLED, "Cancelled.")
            return
        _finish(job, DownloadStatus.FAILED, str(exc))
        logger.warning("download %s of %s failed: %s", job.pk, job.repo_id, exc)
        return
    except Exception as exc:
        _finish(job, DownloadStatus.FAILED, f"Unexpected error: {exc!r}")
        logger.exception("download %s of %s failed", job.pk, job.repo_id)
        return
    DownloadJob.objects.filter(pk=job.pk).update(
        bytes_done=plan.total_bytes, files_done=len(plan.files)
    )
    _finish(job, DownloadStatus.SUCCEEDED)
    ServedModel.objects.update_or_create(
        repo_id=job.repo_id,
        defaults={
            "downloaded_by": job.requested_by,
            "downloaded_at": timezone.now(),
            "commit": plan.commit,
        },
    )
    logger.info("downloaded %s (%d bytes)", job.repo_id, plan.total_bytes)
    if job.auto_switch:
        try:
            model_switch_request(repo_id=job.repo_id, requested_by=job.requested_by or "auto")
        except LifecycleError as exc:
            DownloadJob.objects.filter(pk=job.pk).update(error=f"Auto-switch refused: {exc}")


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


def model_switch_request(*, repo_id: str, requested_by: str = "") -> ModelSwitch:
    """Ask the worker to serve another downloaded model."""
    repo_id = validate_repo_id(repo_id)
    engine = engine_adapter.get_engine()
    if engine.read_only:
        raise Conflict(
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external): switch it there."
        )
    if hub.snapshot_path(repo_id) is None:
        raise NotDownloaded(
            f"'{repo_id}' is not downloaded: POST /api/download-model?model_id={repo_id} first."
        )
    running = active_switch()
    if running is not None:
        raise Conflict(f"A switch to '{running.to_model}' is already {running.phase}.")
    served = vllm.probe().models
    current = served[0] if served else (engine.state().served_name or "")
    try:
        with transaction.atomic():
            return ModelSwitch.objects.create(
                from_model=current, to_model=repo_id, requested_by=requested_by
            )
    except IntegrityError:
        raise Conflict("Another switch was requested at the same moment.") from None


def model_switch_claim(*, worker: str) -> ModelSwitch | None:
    switch = ModelSwitch.objects.filter(phase=SwitchPhase.REQUESTED).order_by("created_at").first()
    if switch is None:
        return None
    now = timezone.now()
    if ModelSwitch.objects.filter(pk=switch.pk, phase=SwitchPhase.REQUESTED).update(
        phase=SwitchPhase.STOPPING, worker=worker, started_at=now, phase_changed_at=now
    ):
        switch.refresh_from_db()
        return switch
    return None


def _set_phase(switch: ModelSwitch, phase: str, error: str = "") -> None:
    now = timezone.now()
    fields: dict[str, Any] = {"phase": phase, "phase_changed_at": now}
    if phase in (SwitchPhase.READY, SwitchPhase.FAILED):
        fields["finished_at"] = now
        fields["error"] = error
    ModelSwitch.objects.filter(pk=switch.pk).update(**fields)
    switch.refresh_from_db()


def wait_until_serving(served_name: str, *, timeout: float) -> str | None:
    """Poll vLLM until /health is 200 and /v1/models lists the model; None when ready,
    else what was last seen."""
    deadline = time.monotonic() + timeout
    last = "vLLM did not answer"
    while time.monotonic() < deadline:
        probe = vllm.probe()
        if probe.healthy and served_name in probe.models:
            return None
        last = probe.detail
        time.sleep(0.25)
    return f"not ready after {timeout:.0f} s: {last}"


def model_switch_run(*, switch: ModelSwitch) -> None:
    """Stop the old model, start the new one, wait until vLLM serves it; on failure
    restart the old model where possible."""
    engine = engine_adapter.get_engine()
    snapshot = hub.snapshot_path(switch.to_model)
    try:
        if snapshot is None:
            raise engine_adapter.EngineError(f"'{switch.to_model}' is no longer in the cache.")
        _set_phase(switch, SwitchPhase.STARTING)
        engine.serve(model=str(snapshot), served_name=switch.to_model)
        _set_phase(switch, SwitchPhase.LOADING)
        problem = wait_until_serving(switch.to_model, timeout=settings.SWITCH_TIMEOUT_SECONDS)
        if problem:
            raise engine_adapter.EngineError(problem)
    except engine_adapter.EngineError as exc:
        _set_phase(switch, SwitchPhase.FAILED, str(exc))
        logger.warning("switch %s to %s failed: %s", switch.pk, switch.to_model, exc)
        _restore_previous(switch, engine)
        return
    _set_phase(switch, SwitchPhase.READY)
    ServedModel.objects.update_or_create(
        repo_id=switch.to_model, defaults={"last_served_at": timezone.now()}
    )
    logger.info("now serving %s (%.1f s)", switch.to_model, switch.duration_seconds or 0)


def _restore_previous(switch: ModelSwitch, engine: engine_adapter.Engine) -> None:
    if not switch.from_model:
        return
    previous = hub.snapshot_path(switch.from_model)
    try:
        engine.serve(model=str(previous or switch.from_model), served_name=switch.from_model)
    except engine_adapter.EngineError as exc:
        ModelSwitch.objects.filter(pk=switch.pk).update(
            error=f"{switch.error}\nRestarting {switch.from_model} failed too: {exc}"
        )


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


# --- workers -----------------------------------------------------------------------


def worker_alive() -> bool:
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    return WorkerHeartbeat.objects.filter(last_seen__gte=cutoff).exists()


def worker_beat(*, name: str, started_at: datetime, current: str = "") -> None:
    WorkerHeartbeat.objects.update_or_create(
        name=name,
        defaults={
            "pid": os.getpid(),
            "started_at": started_at,
            "last_seen": timezone.now(),
            "current": current[:300],
        },
    )


def _process_gone(name: str) -> bool:
    """A worker on this host whose process no longer exists is dead, however recent
    its last heartbeat (it was killed)."""
    host, _, pid = name.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def worker_recover() -> int:
    """Put back in the queue what workers that are gone left running; fail switches
    they left half-done. Returns how many rows were recovered."""
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    beats = WorkerHeartbeat.objects.filter(last_seen__gte=cutoff).values_list("name", flat=True)
    alive = {name for name in beats if not _process_gone(name)}
    alive.discard(worker_name())
    recovered = (
        DownloadJob.objects.filter(status=DownloadStatus.RUNNING)
        .exclude(worker__in=alive)
        .update(status=DownloadStatus.QUEUED, worker="", started_at=None)
    )
    now = timezone.now()
    recovered += (
        ModelSwitch.objects.filter(phase__in=ACTIVE_SWITCH_PHASES)
        .exclude(phase=SwitchPhase.REQUESTED)
        .exclude(worker__in=alive)
        .update(
            phase=SwitchPhase.FAILED,
            finished_at=now,
            phase_changed_at=now,
            error="The worker running this switch stopped; request it again.",
        )
    )
    WorkerHeartbeat.objects.exclude(name__in=[*alive, worker_name()]).delete()
    return recovered


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
