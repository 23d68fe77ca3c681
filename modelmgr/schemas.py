"""What the management API answers, one output schema per answer, so /api/docs shows
real shapes. The services and selectors return plain data; these describe it."""

from datetime import datetime

from ninja import Schema


class FileProgressOut(Schema):
    path: str
    bytes_completed: int
    bytes_total: int


class DownloadProgressOut(Schema):
    job_id: int
    model_id: str
    revision: str
    commit: str | None
    status: str  # queued, running, succeeded, failed, cancelled
    bytes_total: int
    bytes_completed: int
    percent: float
    files_total: int
    files_completed: int
    current_file: str | None
    files: list[FileProgressOut]
    speed_bytes_per_second: int
    eta_seconds: float | None
    error: str | None
    auto_switch: bool
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    backend: str  # whose host's cache it downloads into
    worker_alive: bool  # a worker of that backend runs
    note: str | None  # why a queued job does not start, when no worker runs


class DownloadStartedOut(DownloadProgressOut):
    created: bool  # false: that repo was already queued or downloading: this is that job


class DownloadIdleOut(Schema):
    status: str  # "idle"
    job_id: None
    message: str


class SwitchOut(Schema):
    id: int
    backend: str
    from_model: str | None
    to_model: str
    phase: str  # requested, stopping, starting, loading, ready, failed
    requested_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    error: str | None


class BackendLoadingStatusOut(Schema):
    backend: str
    ready: bool
    model: str | None
    upstream: str  # what the last look at vLLM found
    phase: str | None
    switch: SwitchOut | None
    since: datetime | None
    last_error: str | None


class LoadingStatusOut(BackendLoadingStatusOut):
    """The backend asked for (or the first); `backends` has every one when none was
    named and there are several."""

    backends: list[BackendLoadingStatusOut] = []


class DownloadedModelOut(Schema):
    model_id: str
    size_bytes: int
    commit: str
    path: str
    downloaded_by: str | None
    downloaded_at: datetime | None
    last_served_at: datetime | None


class BackendModelStatusOut(Schema):
    backend: str
    models: list[DownloadedModelOut]
    models_available: bool
    current_model: str | None
    upstream_healthy: bool
    switch_in_progress: SwitchOut | None
    engine: str
    worker_alive: bool


class ModelStatusOut(BackendModelStatusOut):
    """The backend asked for (or the first); `backends` has every one when none was
    named and there are several."""

    backends: list[BackendModelStatusOut] = []


class RestartOut(Schema):
    status: str
    detail: str
    upstream: str
