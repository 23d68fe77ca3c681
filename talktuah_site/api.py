"""The project's one NinjaAPI: the routers of the apps and of monitoring, the public
index, and the one handler that answers every error in OpenAI's shape."""

import logging
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Router, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError

from modelmgr.api import router as management_router
from modelmgr.auth import Principal
from modelmgr.models import Scope
from plumbing.errors import (
    BadRequest,
    DatabaseUnavailable,
    Dialect,
    TalkTuahError,
    Unauthenticated,
    UpstreamError,
    anthropic_error_body,
    error_body,
    error_response,
)
from proxy.middleware import request_id_of
from proxy.routers import api_router, openai_router, tokens_router
from talktuah_site import __version__, monitoring

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="TalkTuah",
    version=__version__,
    description="A gateway in front of vLLM: API keys, limits, streaming, model lifecycle.",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
)

ENDPOINTS = {
    "chat_completions": "POST /v1/chat/completions",
    "completions": "POST /v1/completions",
    "embeddings": "POST /v1/embeddings",
    "messages": "POST /v1/messages",
    "messages_count_tokens": "POST /v1/messages/count_tokens",
    "responses": "POST /v1/responses",
    "responses_get": "GET /v1/responses/{response_id}",
    "responses_cancel": "POST /v1/responses/{response_id}/cancel",
    "rerank": "POST /v1/rerank",
    "score": "POST /v1/score",
    "audio_transcriptions": "POST /v1/audio/transcriptions",
    "tokenize": "POST /tokenize",
    "detokenize": "POST /detokenize",
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
    "restart_engine": "POST /api/restart-engine?backend=",
}

index_router = Router(tags=["Index"])


class IndexOut(Schema):
    name: str
    version: str
    endpoints: dict[str, str]  # what it does -> "METHOD /path"
    docs: str


@index_router.get("/", auth=None, response=IndexOut)
async def index(request: HttpRequest) -> dict[str, Any]:
    """Name, version, endpoint map and a link to the API docs."""
    return {
        "name": "TalkTuah",
        "version": __version__,
        "endpoints": ENDPOINTS,
        "docs": request.build_absolute_uri("/api/docs"),
    }


api.add_router("/v1", openai_router)
api.add_router("", tokens_router)
api.add_router("/api", api_router)
api.add_router("/api", management_router)
api.add_router("", index_router)
api.add_router("", monitoring.router)


def dialect_of(request: HttpRequest) -> Dialect:
    """Anthropic's error shape on its Messages API route (its SDKs read no other)."""
    return "anthropic" if request.path.startswith(ANTHROPIC_PREFIX) else "openai"


ANTHROPIC_PREFIX = "/v1/messages"


@api.exception_handler(TalkTuahError)
def on_talktuah_error(request: HttpRequest, exc: TalkTuahError) -> HttpResponse:
    """The error in the route's shape. What went wrong inside (exc.detail: an exception,
    an address) goes to the log with the request id, and to admin-scope keys only; a
    vLLM failure's message names the request id, to be matched with that log line."""
    request_id = request_id_of(request)
    if exc.detail:
        logger.warning(
            "%s %s answered %s %s (request %s): %s",
            request.method,
            request.path,
            exc.status,
            exc.code,
            request_id,
            exc.detail,
        )
    principal = getattr(request, "auth", None)
    admin = isinstance(principal, Principal) and Scope.ADMIN in principal.scopes
    return error_response(
        exc,
        dialect_of(request),
        request_id=request_id if isinstance(exc, UpstreamError) else None,
        detail=exc.detail if admin else None,
    )


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    # Ninja raises this only when no scheme found a key: a presented key that is wrong
    # raised Unauthenticated already.
    return error_response(
        Unauthenticated(
            "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
            code="missing_api_key",
        ),
        dialect_of(request),
    )


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    message = first.get("msg", "Invalid request.")
    return error_response(
        BadRequest(f"{message} ({param})" if param else message, param=param), dialect_of(request)
    )


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    body = (
        anthropic_error_body(str(exc), exc.status_code)
        if dialect_of(request) == "anthropic"
        else error_body(str(exc), "invalid_request_error", code=exc.status_code)
    )
    return api.create_response(request, body, status=exc.status_code)


@api.exception_handler(InterfaceError)
@api.exception_handler(OperationalError)
def on_database_away(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    # The database is down or restarting (plumbing.db.DATABASE_AWAY): a clear 503 to
    # retry, not a 500 (and no traceback per request in the log).
    logger.warning("database unavailable on %s %s: %r", request.method, request.path, exc)
    return error_response(
        DatabaseUnavailable(
            "The gateway's database is unavailable; retry shortly.",
            headers={"Retry-After": "5"},
        ),
        dialect_of(request),
    )


@api.exception_handler(Exception)
def on_unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unexpected error on %s %s", request.method, request.path)
    message = "Internal error in the gateway."
    body = (
        anthropic_error_body(message, 500)
        if dialect_of(request) == "anthropic"
        else error_body(message, "internal_error", code=500)
    )
    return api.create_response(request, body, status=500)
