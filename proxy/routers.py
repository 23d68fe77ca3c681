"""The proxy's routes: the OpenAI-compatible surface (/v1), the seed's chat and model
routes (/api), and the public index (/). Views stay thin: authenticate (auth=), call
one service, return."""

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from ninja import Router

from proxy import monitoring, services
from proxy.auth import inference_auth, principal_of

# The body is relayed as-is (unknown fields kept), so it is documented, not parsed.
_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}

openai_router = Router(tags=["OpenAI-compatible"], auth=inference_auth)
seed_router = Router(tags=["Chat (seed-compatible)"], auth=inference_auth)
index_router = Router(tags=["Index"])


@openai_router.post("/chat/completions", openapi_extra=_JSON_BODY)
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """OpenAI chat completions, streamed (SSE) when `stream` is true."""
    return await services.forward(
        request=request, principal=principal_of(request), endpoint=services.CHAT
    )


@openai_router.post("/completions", openapi_extra=_JSON_BODY)
async def completions(request: HttpRequest) -> HttpResponseBase:
    """OpenAI text completions, streamed (SSE) when `stream` is true."""
    return await services.forward(
        request=request, principal=principal_of(request), endpoint=services.COMPLETIONS
    )


@openai_router.post("/embeddings", openapi_extra=_JSON_BODY)
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    """OpenAI embeddings, when the served model supports them."""
    return await services.forward(
        request=request, principal=principal_of(request), endpoint=services.EMBEDDINGS
    )


@openai_router.get("/models")
async def models(request: HttpRequest) -> HttpResponse:
    """The models vLLM serves now that this key may use."""
    return await services.list_models(principal_of(request))


@seed_router.post("/chat", openapi_extra=_JSON_BODY)
async def seed_chat(request: HttpRequest) -> HttpResponseBase:
    """Chat completion as the seed API had it: streamed (SSE) unless `stream` is false."""
    return await services.forward(
        request=request, principal=principal_of(request), endpoint=services.SEED_CHAT
    )


@seed_router.get("/models")
async def seed_models(request: HttpRequest) -> HttpResponse:
    """The proxied model list (same as GET /v1/models)."""
    return await services.list_models(principal_of(request))


ENDPOINTS = {
    "chat_completions": "POST /v1/chat/completions",
    "completions": "POST /v1/completions",
    "embeddings": "POST /v1/embeddings",
    "models": "GET /v1/models",
    "chat": "POST /api/chat",
    "api_models": "GET /api/models",
    "usage": "GET /api/usage",
    "health": "GET /api/healthz",
    "live": "GET /livez",
    "ready": "GET /readyz",
    "metrics": "GET /metrics",
    "download_model": "POST /api/download-model?model_id=&auto=",
    "download_progress": "GET /api/download-progress",
    "model_status": "GET /api/model-status",
    "switch_model": "POST /api/switch-model?model_id=",
    "model_loading_status": "GET /api/model-loading-status",
    "restart_api": "POST /api/restart-api",
}


@index_router.get("/", auth=None)
async def index(request: HttpRequest) -> dict[str, Any]:
    """Name, version, endpoint map and a link to the API docs."""
    from talktuah_site import __version__

    return {
        "name": "TalkTuah",
        "version": __version__,
        "endpoints": ENDPOINTS,
        "docs": request.build_absolute_uri("/api/docs"),
    }


monitoring_router = Router(tags=["Monitoring"])


@monitoring_router.get("/api/healthz", auth=None)
async def healthz(request: HttpRequest) -> HttpResponse:
    """Overall status (ok, loading, degraded, down), vLLM's reachability and latency, the
    served model, a switch in progress, the queue and the GPU. 200 when ok, else 503."""
    status, body = await monitoring.health()
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


@monitoring_router.get("/livez", auth=None)
async def livez(request: HttpRequest) -> dict[str, str]:
    """The process is alive (no dependency checked)."""
    return {"status": "alive"}


@monitoring_router.get("/readyz", auth=None)
async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to proxy; 503 while draining at shutdown."""
    if monitoring.is_draining():
        return HttpResponse(b'{"status": "draining"}', status=503, content_type="application/json")
    return HttpResponse(b'{"status": "ready"}', content_type="application/json")


@monitoring_router.get("/metrics", auth=None, include_in_schema=False)
async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: the gateway's families, then vLLM's `vllm:*` ones."""
    return await services.metrics_response(request)


@seed_router.get("/usage")
async def usage_of_key(request: HttpRequest, days: int = 30) -> dict[str, Any]:
    """This key's own usage per model and day (requests, tokens, errors) and totals."""
    return await services.key_usage(principal_of(request), days=days)
