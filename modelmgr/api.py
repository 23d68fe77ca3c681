"""Management routes (admin scope) on the paths and query parameters of TalkTuah's
original API: downloads, switches, loading status, restart; and a backend's engine
restart (`/restart-engine`). Each view calls one service
or selector and returns its data; the schemas in `schemas.py` give the shapes."""

from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Status

from backends.discovery import backend_resolve
from modelmgr import selectors, services
from modelmgr.auth import admin_auth, principal_of
from modelmgr.schemas import (
    DownloadIdleOut,
    DownloadProgressOut,
    DownloadStartedOut,
    LoadingStatusOut,
    ModelStatusOut,
    RestartOut,
    SwitchOut,
)
from plumbing import vllm
from plumbing.db import run_sync

router = Router(tags=["Model management"], auth=admin_auth)


def _who(request: HttpRequest) -> str:
    principal = principal_of(request)
    return f"key:{principal.name} ({principal.prefix})"


@router.post("/download-model", response={202: DownloadStartedOut})
async def download_model(
    request: HttpRequest,
    model_id: str,
    auto: bool = False,
    revision: str = "main",
    backend: str | None = None,
) -> Status[dict[str, object]]:
    """Queue a download from the Hub into a backend's host cache (202 with the job;
    `backend` may be left out while there is one). A repo already downloading there
    returns that job; `auto=true` switches that backend to the model when it is done."""
    job, created = await run_sync(
        services.download_start,
        backend=await run_sync(backend_resolve, backend),
        repo_id=model_id,
        revision=revision,
        auto_switch=auto,
        requested_by=_who(request),
    )
    progress = await run_sync(selectors.download_progress, job)
    return Status(202, {**progress, "created": created})


@router.get("/download-progress", response=DownloadProgressOut | DownloadIdleOut)
async def download_progress(
    request: HttpRequest, job_id: int | None = None, backend: str | None = None
) -> dict[str, object]:
    """Progress of one job (`job_id`), else of the current or last download (on
    `backend`, when given)."""
    if backend is not None:
        backend = (await run_sync(backend_resolve, backend)).name
    job = await run_sync(selectors.download_get, job_id=job_id, backend=backend)
    if job is None:
        return {"status": "idle", "job_id": None, "message": "No download has been requested."}
    return await run_sync(selectors.download_progress, job)


@router.get("/model-status", response=ModelStatusOut)
async def model_status(request: HttpRequest, backend: str | None = None) -> dict[str, object]:
    """Downloaded models with sizes, whether any is available, what vLLM serves: of the
    backend named, else of the first, with every backend's under `backends`."""
    return await run_sync(selectors.per_backend, selectors.model_status, backend)


@router.post("/switch-model", response={202: SwitchOut})
async def switch_model(
    request: HttpRequest, model_id: str, backend: str | None = None
) -> Status[dict[str, object]]:
    """Make a backend serve another model downloaded on its host (`backend` may be left
    out while there is one): 404 when not downloaded, 409 while a switch runs there."""
    switch = await run_sync(
        services.model_switch_request,
        repo_id=model_id,
        requested_by=_who(request),
        backend=await run_sync(backend_resolve, backend),
    )
    return Status(202, selectors.switch_summary(switch))


@router.post("/restart-engine", response={202: SwitchOut})
async def restart_engine(
    request: HttpRequest, backend: str | None = None
) -> Status[dict[str, object]]:
    """Restart a backend's vLLM on the model it serves (after a crash: served), as a
    switch runs (`backend` may be left out while there is one): 202 with the restart,
    which the switch history keeps; 409 while a switch runs there or for an external
    engine. Requests wait for it as for a switch."""
    restart = await run_sync(
        services.engine_restart_request,
        backend=await run_sync(backend_resolve, backend),
        requested_by=_who(request),
    )
    return Status(202, selectors.switch_summary(restart))


@router.get("/model-loading-status", response=LoadingStatusOut)
async def model_loading_status(
    request: HttpRequest, backend: str | None = None
) -> dict[str, object]:
    """Is vLLM ready, on which model, the switch phase and since when, the last error:
    of the backend named, else of the first, with every backend's under `backends`."""
    return await run_sync(selectors.per_backend, selectors.loading_status, backend)


@router.post("/restart-api", response=RestartOut)
async def restart_api(request: HttpRequest) -> dict[str, str]:
    """Drop this worker's pooled upstream connections: the next request resolves DNS
    and connects afresh (what the original API restarted its container for)."""
    await vllm.reset_client()
    return {
        "status": "ok",
        "detail": "Upstream connections dropped.",
        "upstream": settings.VLLM_BASE_URL,
    }
