"""Workflows that write: keys, usage counts, downloads, model switches and the workers'
bookkeeping (the backends' own rows are written by `backends.services`). The API, the
admin, the commands and the worker all call these (reads are in `selectors.py`).

Requests (`download_start`, `model_switch_request`, `engine_restart_request`, cancel,
retry) only write rows; the worker claims the rows atomically (a conditional UPDATE: of
two workers only one sees its UPDATE match) and runs the long work (`download_run`,
`model_switch_run`, which also runs restarts). The worker's supervision records what
it sees of its engine (`engine_crash_record`, `engine_came_back_record`).
"""

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from backends import health
from backends.discovery import backend_get, backend_specs
from backends.spec import BackendSpec
from modelmgr import engines, hub
from modelmgr.engines.supervisor import CameBack, Crashed
from modelmgr.models import (
    ACTIVE_DOWNLOAD_STATUSES,
    ACTIVE_SWITCH_PHASES,
    ApiKey,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    Scope,
    ServedModel,
    SwitchKind,
    SwitchPhase,
    Tier,
    UsageDaily,
    WorkerHeartbeat,
)
from modelmgr.selectors import active_switch, is_downloaded, model_source, worker_alive
from plumbing.errors import (
    Conflict,
    DownloadCancelled,
    EngineError,
    HubError,
    InvalidRepoId,
    ModelNotDownloaded,
    TalkTuahError,
)

logger = logging.getLogger(__name__)

# --- keys and usage ------------------------------------------------------------------


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str] = (Scope.INFERENCE,),
    owner: User | None = None,
    allowed_models: Iterable[str] = (),
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    expires_at: datetime | None = None,
    is_active: bool = True,
    tier: str = Tier.INTERACTIVE,
    share: int = 1,
    max_parallel_requests: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with its plaintext, which is shown once and not stored."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    if tier not in Tier.values:
        raise ValueError(f"unknown tier {tier!r}: use {' or '.join(Tier.values)}")
    plaintext, _prefix = ApiKey.generate()
    key = ApiKey(
        name=name,
        owner=owner,
        scopes=scopes,
        allowed_models=sorted(set(allowed_models)),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        expires_at=expires_at,
        is_active=is_active,
        tier=tier,
        share=max(share, 1),
        max_parallel_requests=max_parallel_requests,
    )
    key.set_key(plaintext)
    key.save()
    return key, plaintext


def api_key_revoke(*, key: ApiKey) -> None:
    # Takes effect on every gateway process within API_KEY_CACHE_SECONDS.
    ApiKey.objects.filter(pk=key.pk).update(is_active=False)
    key.is_active = False


@dataclass(frozen=True, slots=True)
class UsageDelta:
    key_prefix: str
    key_name: str
    model: str
    day: date
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@transaction.atomic
def usage_add(*, deltas: Iterable[UsageDelta]) -> None:
    """Add counts to the daily usage rows, creating them as needed (race-safe). All or
    nothing: the caller keeps a failed batch to send again, so a batch half written
    before the database went away would count its first rows twice."""
    for delta in deltas:
        where = {"key_prefix": delta.key_prefix, "model": delta.model, "day": delta.day}
        increments = {
            "requests": F("requests") + delta.requests,
            "errors": F("errors") + delta.errors,
            "prompt_tokens": F("prompt_tokens") + delta.prompt_tokens,
            "completion_tokens": F("completion_tokens") + delta.completion_tokens,
        }
        if UsageDaily.objects.filter(**where).update(**increments):
            continue
        try:
            with transaction.atomic():
                UsageDaily.objects.create(
                    **where,
                    key_name=delta.key_name,
                    requests=delta.requests,
                    errors=delta.errors,
                    prompt_tokens=delta.prompt_tokens,
                    completion_tokens=delta.completion_tokens,
                )
        except IntegrityError:
            # Another process created the row between our update and insert.
            UsageDaily.objects.filter(**where).update(**increments)


REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- downloads -------------------------------------------------------------------


def validate_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise InvalidRepoId(
            f"'{repo_id}' is not a Hugging Face repo id (expected 'org/name' or 'name')."
        )
    return repo_id


def download_start(
    *,
    repo_id: str,
    backend: BackendSpec,
    revision: str = "main",
    auto_switch: bool = False,
    requested_by: str = "",
) -> tuple[DownloadJob, bool]:
    """Queue a download into a backend's host cache; returns (job, created). A repo
    already queued or downloading there returns that job instead of a second one."""
    repo_id = validate_repo_id(repo_id)
    revision = (revision or "main").strip()
    existing = DownloadJob.objects.filter(
        repo_id=repo_id, backend=backend.name, status__in=ACTIVE_DOWNLOAD_STATUSES
    )
    job = existing.first()
    if job is not None:
        return job, False
    try:
        with transaction.atomic():
            job = DownloadJob.objects.create(
                repo_id=repo_id,
                backend=backend.name,
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
        backend=backend_get(job.backend),
    )
    return new_job


def download_claim(*, worker: str, backend: BackendSpec) -> DownloadJob | None:
    """Take the oldest job queued for this worker's backend, or None."""
    for job_id in (
        DownloadJob.objects.filter(status=DownloadStatus.QUEUED, backend=backend.name)
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


def download_run(
    *, job: DownloadJob, backend: BackendSpec, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """Run a claimed job of `backend` to its end (and, with auto_switch, ask that backend
    to serve the model). A worker shutting down (should_stop) puts the job back in the
    queue: the partial files stay in the cache and the next run resumes."""
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
    except DownloadCancelled:
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
    except HubError as exc:
        _finish(job, DownloadStatus.FAILED, str(exc))
        logger.warning("download %s of %s failed: %s", job.pk, job.repo_id, exc)
        return
    except Exception as exc:
        _finish(job, DownloadStatus.FAILED, f"Unexpected error: {exc!r}")
        logger.exception("download %s of %s failed", job.pk, job.repo_id)
        return
    # The last progress write may predate the last chunks: the finished job says so whole.
    DownloadJob.objects.filter(pk=job.pk).update(
        bytes_done=plan.total_bytes,
        files_done=len(plan.files),
        file_progress={f.path: [f.size, f.size] for f in plan.files},
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
            model_switch_request(
                repo_id=job.repo_id, backend=backend, requested_by=job.requested_by or "auto"
            )
        except TalkTuahError as exc:
            DownloadJob.objects.filter(pk=job.pk).update(error=f"Auto-switch refused: {exc}")


# --- switches ----------------------------------------------------------------------


def _check_engine_managed(backend: BackendSpec, *, action: str) -> None:
    """Refuse to switch or restart (action) the vLLM of a backend that TalkTuah does not
    run, or whose worker is away (on another host than the gateway only it can)."""
    if backend.engine.read_only:
        raise Conflict(
            f"vLLM is managed outside TalkTuah (backend '{backend.name}' has engine external): "
            f"{action} it there."
        )
    if not backend.local_cache and not worker_alive(backend.name):
        raise Conflict(
            f"No worker of backend '{backend.name}' is running: start one on its host with "
            f"`python manage.py run_worker --backend {backend.name}`."
        )


def model_switch_request(
    *, repo_id: str, backend: BackendSpec, requested_by: str = ""
) -> ModelSwitch:
    """Ask a backend's worker to serve another model downloaded on its host."""
    repo_id = validate_repo_id(repo_id)
    _check_engine_managed(backend, action="switch")
    if not is_downloaded(repo_id, backend=backend):
        where = "" if backend.local_cache else f" on backend '{backend.name}'"
        query = "" if backend.local_cache else f"&backend={backend.name}"
        raise ModelNotDownloaded(
            f"'{repo_id}' is not downloaded{where}: "
            f"POST /api/download-model?model_id={repo_id}{query} first."
        )
    running = active_switch(backend.name)
    if running is not None:
        raise Conflict(f"A switch to '{running.to_model}' is already {running.phase}.")
    current = health.look_sync(backend).served
    if current is None and backend.local_cache:
        current = engines.engine_for(backend).state().served_name
    try:
        with transaction.atomic():
            return ModelSwitch.objects.create(
                backend=backend.name,
                from_model=current or "",
                to_model=repo_id,
                requested_by=requested_by,
            )
    except IntegrityError:
        raise Conflict("Another switch was requested at the same moment.") from None


def model_auto_load(*, model: str, preferred: Iterable[str] = ()) -> ModelSwitch | None:
    """Load `model` on demand: the switch already bringing it, else a new switch on the
    first switchable backend (in `preferred` order, then the others) that has it
    downloaded and is not switching; None when no backend can."""
    try:
        validate_repo_id(model)
    except InvalidRepoId:
        return None
    specs = {spec.name: spec for spec in backend_specs()}
    preferred = [name for name in preferred if name in specs]
    ordered = [specs[n] for n in preferred] + [s for n, s in specs.items() if n not in preferred]
    running = ModelSwitch.objects.filter(phase__in=ACTIVE_SWITCH_PHASES, to_model=model).first()
    if running is not None:
        return running
    for backend in ordered:
        if active_switch(backend.name) is not None or not is_downloaded(model, backend=backend):
            continue
        try:
            return model_switch_request(repo_id=model, requested_by="auto-load", backend=backend)
        except (Conflict, ModelNotDownloaded) as exc:
            logger.info("auto-load of %s on %s: %s", model, backend.name, exc.message)
    return None


def model_switch_claim(*, worker: str, backend: BackendSpec) -> ModelSwitch | None:
    switch = (
        ModelSwitch.objects.filter(phase=SwitchPhase.REQUESTED, backend=backend.name)
        .order_by("created_at")
        .first()
    )
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


# While a started vLLM loads, how often its engine is asked whether it still runs.
ENGINE_LOOK_SECONDS = 1.0


def wait_until_serving(
    served_name: str,
    *,
    backend: BackendSpec,
    timeout: float,
    engine: engines.Engine | None = None,
) -> str | None:
    """Look at the backend until /health is 200 and /v1/models lists the model; None
    when ready, else what was last seen. With `engine`, a vLLM that exits while it loads
    fails at once (not after the whole timeout), unless what runs it restarts it."""
    deadline = time.monotonic() + timeout
    last = "vLLM did not answer"
    next_look = time.monotonic() + ENGINE_LOOK_SECONDS
    while time.monotonic() < deadline:
        found = health.look_sync(backend)
        if found.healthy and served_name in found.models:
            return None
        last = found.detail
        if engine is not None and time.monotonic() >= next_look:
            next_look = time.monotonic() + ENGINE_LOOK_SECONDS
            state = engine.state()
            if not state.running and not state.restarts_itself:
                return f"vLLM stopped while loading: {state.detail}"
        time.sleep(0.25)
    return f"not ready after {timeout:.0f} s: {last}"


def drain(*, backend: BackendSpec, timeout: float) -> bool:
    """Wait until the backend's vLLM runs and queues no request (by its own metrics,
    whichever gateway process sent them), at most `timeout` seconds; False if not."""
    deadline = time.monotonic() + timeout
    while True:
        figures = health.look_sync(backend).queue
        if figures is None or not (figures.get("running", 0) + figures.get("waiting", 0)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def model_switch_run(*, switch: ModelSwitch, backend: BackendSpec, engine: engines.Engine) -> None:
    """Let the requests vLLM is running finish (bounded by SWITCH_DRAIN_SECONDS), stop
    the old model, start the new one, wait until vLLM serves it; on failure restart the
    old model where possible. A restart (kind restart) does the same with the model the
    engine was serving, and leaves a failure to the supervisor's next attempt. `engine`
    is the backend's (the worker keeps one)."""
    restart = switch.kind == SwitchKind.RESTART
    snapshot = (
        _restart_model(switch, engine)
        if restart
        else model_source(switch.to_model, backend=backend)
    )
    try:
        if snapshot is None:
            raise EngineError(f"'{switch.to_model}' is no longer in the cache.")
        if not drain(backend=backend, timeout=settings.SWITCH_DRAIN_SECONDS):
            logger.warning(
                "switch %s: requests still running after %.0f s; stopping anyway",
                switch.pk,
                settings.SWITCH_DRAIN_SECONDS,
            )
        _set_phase(switch, SwitchPhase.STARTING)
        engine.serve(model=str(snapshot), served_name=switch.to_model)
        _set_phase(switch, SwitchPhase.LOADING)
        problem = wait_until_serving(
            switch.to_model,
            backend=backend,
            timeout=backend.engine.switch_timeout_seconds,
            engine=engine,
        )
        if problem:
            raise EngineError(problem)
    except EngineError as exc:
        _set_phase(switch, SwitchPhase.FAILED, str(exc))
        logger.warning("%s %s of %s failed: %s", switch.kind, switch.pk, switch.to_model, exc)
        if not restart:
            _restore_previous(switch, engine)
        return
    _set_phase(switch, SwitchPhase.READY)
    if restart:
        # The demo's model is no downloaded repo: only a known one gets the date.
        ServedModel.objects.filter(repo_id=switch.to_model).update(last_served_at=timezone.now())
    else:
        ServedModel.objects.update_or_create(
            repo_id=switch.to_model, defaults={"last_served_at": timezone.now()}
        )
    logger.info("now serving %s (%.1f s)", switch.to_model, switch.duration_seconds or 0)


def _restart_model(switch: ModelSwitch, engine: engines.Engine) -> str:
    """What to start a restart with: the model the engine was told to serve (a snapshot
    path, say) when it still serves this name, else the cached snapshot, else the name
    itself (the demo's model, which the simulator takes as it is)."""
    try:
        state = engine.state()
    except EngineError:
        state = None
    if state is not None and state.model and state.served_name == switch.to_model:
        return state.model
    return str(hub.snapshot_path(switch.to_model) or switch.to_model)


def _restore_previous(switch: ModelSwitch, engine: engines.Engine) -> None:
    if not switch.from_model:
        return
    previous = hub.snapshot_path(switch.from_model)
    try:
        engine.serve(model=str(previous or switch.from_model), served_name=switch.from_model)
    except EngineError as exc:
        ModelSwitch.objects.filter(pk=switch.pk).update(
            error=f"{switch.error}\nRestarting {switch.from_model} failed too: {exc}"
        )


# --- engine supervision and restarts -------------------------------------------------

SUPERVISOR = "supervisor"  # requested_by of what the worker's supervision records


def engine_restart_request(
    *, backend: BackendSpec, requested_by: str = "", served_name: str | None = None
) -> ModelSwitch:
    """Ask a backend's worker to restart its vLLM on the model it serves (or, after a
    crash, served): a row of kind restart, run like a switch, so requests wait for it.
    The admin's "restart engine" action and POST /api/restart-engine call this."""
    _check_engine_managed(backend, action="restart")
    running = active_switch(backend.name)
    if running is not None:
        raise Conflict(f"A {running.kind} to '{running.to_model}' is already {running.phase}.")
    served = served_name or _last_served(backend)
    if not served:
        raise Conflict(
            f"Backend '{backend.name}' has served no model yet, so there is nothing to restart: "
            "switch it to a model instead."
        )
    try:
        with transaction.atomic():
            return ModelSwitch.objects.create(
                backend=backend.name,
                kind=SwitchKind.RESTART,
                from_model=served,
                to_model=served,
                requested_by=requested_by,
            )
    except IntegrityError:
        raise Conflict("A switch was requested at the same moment.") from None


def _last_served(backend: BackendSpec) -> str | None:
    """What the backend serves now, else what its engine was told to, else what its
    history last brought up or saw crash."""
    served = health.look_sync(backend).served
    if served is None and backend.local_cache:
        with contextlib.suppress(EngineError):
            served = engines.engine_for(backend).state().served_name
    if served is None:
        last = (
            ModelSwitch.objects.filter(backend=backend.name)
            .filter(Q(phase=SwitchPhase.READY) | Q(kind=SwitchKind.CRASH))
            .order_by("-created_at")
            .first()
        )
        served = last.to_model if last is not None else None
    return served


def engine_crash_record(*, backend: BackendSpec, worker: str, crashed: Crashed) -> ModelSwitch:
    """The history's row of a crash the supervision saw: failed at once, its error what
    was seen and what happens next."""
    return _supervision_record(
        backend=backend,
        worker=worker,
        kind=SwitchKind.CRASH,
        served_name=crashed.served_name,
        phase=SwitchPhase.FAILED,
        error=f"{crashed.detail} ({crashed.reason})",
        requested_by=SUPERVISOR,
    )


def engine_came_back_record(
    *, backend: BackendSpec, worker: str, came_back: CameBack
) -> ModelSwitch:
    """The history's row of a restart that what runs vLLM did by itself (Docker's
    restart policy, the kubelet): ready when the supervision saw it run again."""
    return _supervision_record(
        backend=backend,
        worker=worker,
        kind=SwitchKind.RESTART,
        served_name=came_back.served_name,
        phase=SwitchPhase.READY,
        error=came_back.detail,
        requested_by=f"{backend.engine.kind} (by itself)",
    )


def _supervision_record(
    *,
    backend: BackendSpec,
    worker: str,
    kind: SwitchKind,
    served_name: str,
    phase: SwitchPhase,
    error: str,
    requested_by: str,
) -> ModelSwitch:
    """A history row of what happened to the engine of one model (from and to it), as
    the supervision saw it: it started and finished at that moment."""
    now = timezone.now()
    return ModelSwitch.objects.create(
        backend=backend.name,
        kind=kind,
        from_model=served_name,
        to_model=served_name,
        phase=phase,
        error=error,
        requested_by=requested_by,
        worker=worker,
        started_at=now,
        phase_changed_at=now,
        finished_at=now,
    )


# --- workers -----------------------------------------------------------------------


def worker_beat(
    *,
    name: str,
    started_at: datetime,
    backend: BackendSpec,
    current: str = "",
    inventory: list[dict[str, Any]] | None = None,
) -> None:
    """A worker is alive; `inventory` (its host's cached models), when given, replaces
    what it reported before."""
    extra: dict[str, Any] = {} if inventory is None else {"inventory": inventory}
    WorkerHeartbeat.objects.update_or_create(
        name=name,
        defaults={
            **extra,
            "backend": backend.name,
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
