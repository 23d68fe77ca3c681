"""Management routes (admin scope), on the seed's paths and query parameters:
downloads, switches, loading status, restart. Each view calls one lifecycle service."""

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest
from ninja import Router, Status

from modelmgr import lifecycle
from plumbing import vllm
from proxy.auth import admin_auth, principal_of

router = Router(tags=["Model management"], auth=admin_auth)


def _who(request: HttpRequest) -> str:
    principal = principal_of(request)
    return f"key:{principal.name} ({principal.prefix})"


@router.post("/download-model", response={202: dict[str, Any]})
async def download_model(
    request: HttpRequest, model_id: str, auto: bool = False, revision: str = "main"
) -> Status[dict[str, Any]]:
    """Queue a download from the Hub (202 with the job). A repo already downloading
    returns that job; `auto=true` switches to the model when it is done."""
    job, created = await sync_to_async(lifecycle.download_start)(
        repo_id=model_id, revision=revision, auto_switch=auto, requested_by=_who(request)
    )
    progress = await sync_to_async(lifecycle.download_progress)(job)
    return Status(202, {**progress, "created": created})


@router.get("/download-progress")
async def download_progress(request: HttpRequest, job_id: int | None = None) -> dict[str, Any]:
    """Progress of one job (`job_id`), else of the current or last download."""
    job = await sync_to_async(lifecycle.download_get)(job_id=job_id)
    if job is None:
        return {"status": "idle", "job_id": None, "message": "No download has been requested."}
    return await sync_to_async(lifecycle.download_progress)(job)


@router.get("/model-status")
async def model_status(request: HttpRequest) -> dict[str, Any]:
    """Downloaded models with sizes, whether any is available, what vLLM serves."""
    return await sync_to_async(lifecycle.model_status)()


@router.post("/switch-model", response={202: dict[str, Any]})
async def switch_model(request: HttpRequest, model_id: str) -> Status[dict[str, Any]]:
    """Serve another downloaded model: 404 when not downloaded, 409 while a switch runs."""
    switch = await sync_to_async(lifecycle.model_switch_request)(
        repo_id=model_id, requested_by=_who(request)
    )
    return Status(202, lifecycle.switch_summary(switch))


@router.get("/model-loading-status")
async def model_loading_status(request: HttpRequest) -> dict[str, Any]:
    """Is vLLM ready, on which model, the switch phase and since when, the last error."""
    return await sync_to_async(lifecycle.loading_status)()


@router.post("/restart-api")
async def restart_api(request: HttpRequest) -> dict[str, Any]:
    """Drop this worker's pooled upstream connections: the next request resolves DNS
    and connects afresh (what the seed restarted its container for)."""
    await vllm.reset_client()
    vllm.forget_served_models()
    return {
        "status": "ok",
        "detail": "Upstream connections dropped.",
        "upstream": settings.VLLM_BASE_URL,
    }
