"""Every error TalkTuah raises, in one tree (as httpx keeps its own in one module), and
the one error shape of its HTTP surface.

The root, `TalkTuahError`, carries what an answer needs: the HTTP status, OpenAI's
error `type`, a `code`, the offending `param` and extra headers (`Retry-After`). Each
kind of failure is a subclass, so callers catch the kind they handle and never branch
on a flag. Whatever reaches the API leaves, through one handler in
`talktuah_site/api.py`, as `{"error": {"message", "type", "param", "code"}}` so OpenAI
SDKs can parse it.

    TalkTuahError
    ├── BadRequest (400) ─ InvalidRepoId
    ├── Unauthenticated (401)
    ├── Forbidden (403)
    ├── NotFound (404) ─ ModelNotDownloaded, JobNotFound
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── RateLimited (429)
    ├── ServiceUnavailable (503): a store of the gateway's own is away
    │   └── RateLimiterUnavailable (the shared cache), DatabaseUnavailable
    ├── UpstreamError: vLLM failed us
    │   ├── UpstreamUnreachable (502) ─ UpstreamDisconnected, UpstreamInvalidResponse
    │   ├── UpstreamUnavailable (503)
    │   ├── UpstreamTimeout (504)
    │   └── UpstreamRefused (vLLM's own 4xx/5xx, passed through)
    ├── HubError: the Hugging Face Hub or the cache's disk failed a download
    │   ├── RepoNotFound, RepoGated, HubUnauthorized, HubUnreachable, DiskFull
    │   ├── DownloadCancelled
    │   └── HubFailure (anything else)
    └── EngineError: vLLM could not be started, stopped or inspected
        └── EngineReadOnly (409)
"""

from typing import Any, Literal

import orjson
from django.http import HttpResponse

# The shape of an API the gateway relays: OpenAI's (chat, completions and the rest),
# Anthropic's Messages API, or OpenAI's Responses API. Errors on Anthropic's route take
# its own shape; a stream's error event takes each API's.
Dialect = Literal["openai", "anthropic", "responses"]

# Anthropic's error `type` for an HTTP status (its SDKs pick the exception by status).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class TalkTuahError(Exception):
    """The root: an error with an HTTP status and an OpenAI-shape body."""

    status: int = 500
    type: str = "internal_error"
    code: str | int | None = None  # None: the status

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else (type(self).code or self.status)
        self.headers = headers or {}
        # What went wrong inside (an exception's repr, an address): for the log and for
        # admin-scope keys, never in the message another client reads.
        self.detail = detail


# --- the request was refused ---------------------------------------------------------


class BadRequest(TalkTuahError):
    status = 400
    type = "invalid_request_error"


class InvalidRepoId(BadRequest):
    code = "invalid_request"


class Unauthenticated(TalkTuahError):
    status = 401
    type = "authentication_error"


class Forbidden(TalkTuahError):
    status = 403
    type = "permission_error"


class NotFound(TalkTuahError):
    status = 404
    type = "not_found_error"


class ModelNotDownloaded(NotFound):
    type = "invalid_request_error"
    code = "model_not_downloaded"


class JobNotFound(NotFound):
    type = "invalid_request_error"
    code = "not_found"


class ModelNotServed(NotFound):
    """No backend serves the model the request names."""

    type = "invalid_request_error"
    code = "model_not_found"


class BackendNotFound(NotFound):
    type = "invalid_request_error"
    code = "backend_not_found"


class Conflict(TalkTuahError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(TalkTuahError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(TalkTuahError):
    status = 415
    type = "invalid_request_error"


class RateLimited(TalkTuahError):
    status = 429
    type = "rate_limit_error"


class ServiceUnavailable(TalkTuahError):
    """A store the gateway itself needs (its database, its shared cache) is away: not the
    client's fault, and worth retrying shortly (Retry-After)."""

    status = 503
    type = "service_unavailable"


class RateLimiterUnavailable(ServiceUnavailable):
    code = "rate_limiter_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"


# --- vLLM failed us -------------------------------------------------------------------


class UpstreamError(TalkTuahError):
    """vLLM could not be reached, timed out, or broke a response off. `attempts` says
    how many times the request was sent (retries happen only before the first byte)."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, attempts: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.attempts = attempts


class UpstreamUnreachable(UpstreamError):
    type = "upstream_unreachable"
    code = "upstream_unreachable"


class UpstreamDisconnected(UpstreamUnreachable):
    """vLLM closed the connection in the middle of its answer."""


class UpstreamInvalidResponse(UpstreamUnreachable):
    """vLLM answered something the gateway cannot read (not JSON, not a model list):
    to a client that is the same as no answer."""


class UpstreamUnavailable(UpstreamError):
    status = 503
    type = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"
    code = "upstream_timeout"


class UpstreamRefused(UpstreamError):
    """vLLM answered with an error: its status and its error pass through to the client."""

    @classmethod
    def from_answer(cls, status: int, content: bytes) -> "UpstreamRefused":
        error = orjson.loads(normalise_upstream_error(status, content))["error"]
        refused = cls(str(error["message"]), param=error.get("param"), code=error.get("code"))
        refused.status = status
        refused.type = str(error.get("type") or "upstream_error")
        return refused


# --- the Hub (downloads) --------------------------------------------------------------


class HubError(TalkTuahError):
    """A Hub operation failed; `str(exc)` says it to a person, the class says how."""

    status = 502
    type = "hub_error"


class RepoNotFound(HubError):
    status = 404


class RepoGated(HubError):
    status = 403


class HubUnauthorized(HubError):
    status = 401


class HubUnreachable(HubError):
    """Network trouble, or the Hub is overloaded: worth retrying later."""


class DiskFull(HubError):
    status = 507


class DownloadCancelled(HubError):
    status = 409


class HubFailure(HubError):
    """Anything else the Hub client raised."""


# --- the engine (what runs vLLM) ------------------------------------------------------


class EngineError(TalkTuahError):
    """vLLM could not be started, stopped or inspected; the message says why."""

    status = 502
    type = "engine_error"


class EngineReadOnly(EngineError):
    """The engine is managed outside TalkTuah and refuses changes."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


# --- our own configuration ------------------------------------------------------------


class SecretUnreadable(TalkTuahError):
    """A sealed secret (a backend's vLLM API key) no longer opens: SECRET_KEY changed."""

    status = 500
    type = "internal_error"
    code = "secret_unreadable"


# --- the wire shape -------------------------------------------------------------------


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def anthropic_error_body(
    message: str, status: int, *, code: str | int | None = None
) -> dict[str, Any]:
    """Anthropic's error shape; `code` (the gateway's own, stable) rides along."""
    error: dict[str, Any] = {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
    if code is not None and code != status:
        error["code"] = code
    return {"type": "error", "error": error}


def error_response(
    exc: TalkTuahError,
    dialect: Dialect = "openai",
    *,
    request_id: str | None = None,
    detail: str | None = None,
) -> HttpResponse:
    """The error's answer in the route's shape; its message names `request_id` when
    given, and `detail` (for admin-scope keys only) rides along."""
    message = f"{exc.message} (request {request_id})" if request_id else exc.message
    body = (
        anthropic_error_body(message, exc.status, code=exc.code)
        if dialect == "anthropic"
        else error_body(message, exc.type, param=exc.param, code=exc.code)
    )
    if detail:
        body["error"]["detail"] = detail
    response = HttpResponse(orjson.dumps(body), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


def normalise_upstream_error(status: int, content: bytes, dialect: Dialect = "openai") -> bytes:
    """vLLM's error body in the route's shape (Anthropic's on its route, else OpenAI's),
    whatever vLLM sent."""
    if dialect == "anthropic":
        return _anthropic_upstream_error(status, content)
    return _openai_upstream_error(status, content)


def _anthropic_upstream_error(status: int, content: bytes) -> bytes:
    # vLLM answers its Anthropic route in that shape already; anything else (a plain
    # FastAPI 404, an OpenAI-shape error from its middleware) is rewritten into it.
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error":
        inner = data.get("error")
        if isinstance(inner, dict) and "message" in inner:
            inner.setdefault("type", ANTHROPIC_TYPES.get(status, "api_error"))
            return orjson.dumps({"type": "error", "error": inner})
    message = orjson.loads(_openai_upstream_error(status, content))["error"]["message"]
    return orjson.dumps(anthropic_error_body(str(message), status))


def _openai_upstream_error(status: int, content: bytes) -> bytes:
    """vLLM's error body in OpenAI's shape, whatever vLLM sent.

    vLLM 0.32 sends the nested shape already; older servers send a flat
    `{"message", "type", "code"}`, its auth middleware `{"error": "Unauthorized"}`,
    and FastAPI's own routes `{"detail": ...}`.
    """
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and "message" in inner:
            inner.setdefault("type", "upstream_error")
            inner.setdefault("param", None)
            inner.setdefault("code", status)
            return orjson.dumps({"error": inner})
        if isinstance(inner, str):
            return orjson.dumps(error_body(inner, "upstream_error", code=status))
        if "message" in data:
            return orjson.dumps(
                error_body(
                    str(data["message"]),
                    str(data.get("type") or "upstream_error"),
                    param=data.get("param"),
                    code=data.get("code", status),
                )
            )
        if "detail" in data:
            detail = data["detail"]
            message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
            return orjson.dumps(error_body(f"upstream: {message}", "upstream_error", code=status))
    text = content.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    return orjson.dumps(error_body(f"upstream: {text}", "upstream_error", code=status))


def sse_error_event(message: str, type_: str, code: int, dialect: Dialect = "openai") -> bytes:
    """The event that ends a stream that broke after it started, in the API's own way:
    OpenAI's error chunk followed by [DONE]; Anthropic's `event: error`; the Responses
    API's `error` event."""
    if dialect == "anthropic":
        body = anthropic_error_body(message, code, code=type_)
        return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
    if dialect == "responses":
        event = {"type": "error", "code": type_, "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    return b"data: " + orjson.dumps(error_body(message, type_, code=code)) + b"\n\ndata: [DONE]\n\n"
