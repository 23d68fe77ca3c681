"""The one error shape of the OpenAI-compatible surface, and the domain errors that map
to it. Every error the gateway answers, its own or vLLM's, leaves as
`{"error": {"message", "type", "param", "code"}}` so OpenAI SDKs can parse it."""

from typing import Any

import orjson
from django.http import HttpResponse


class ProxyError(Exception):
    """An error the gateway answers itself, with an HTTP status and an OpenAI-shape body."""

    status = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.status
        self.headers = headers or {}


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class Unauthenticated(ProxyError):
    status = 401
    type = "authentication_error"


class Forbidden(ProxyError):
    status = 403
    type = "permission_error"


class NotFound(ProxyError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ProxyError):
    status = 415
    type = "invalid_request_error"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"


class UpstreamUnreachable(ProxyError):
    status = 502
    type = "upstream_unreachable"


class UpstreamUnavailable(ProxyError):
    status = 503
    type = "upstream_unavailable"


class UpstreamTimeout(ProxyError):
    status = 504
    type = "upstream_timeout"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ProxyError) -> HttpResponse:
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    response = HttpResponse(orjson.dumps(body), status=exc.status, content_type="application/json")
    for name, value in exc.headers.items():
        response[name] = value
    return response


def normalise_upstream_error(status: int, content: bytes) -> bytes:
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


def sse_error_event(message: str, type_: str, code: int) -> bytes:
    """The event that ends a stream that broke after it started, followed by [DONE]."""
    return b"data: " + orjson.dumps(error_body(message, type_, code=code)) + b"\n\ndata: [DONE]\n\n"
