"""The project's one NinjaAPI: routers of the apps, and one error handler per kind of
error, all answering in OpenAI's error shape."""

import logging

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from modelmgr.api import router as management_router
from modelmgr.lifecycle import LifecycleError
from plumbing.errors import (
    BadRequest,
    ProxyError,
    Unauthenticated,
    error_body,
    error_response,
)
from proxy.routers import index_router, monitoring_router, openai_router, seed_router
from talktuah_site import __version__

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="TalkTuah",
    version=__version__,
    description="A gateway in front of vLLM: API keys, limits, streaming, model lifecycle.",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
)
api.add_router("/v1", openai_router)
api.add_router("/api", seed_router)
api.add_router("/api", management_router)
api.add_router("", index_router)
api.add_router("", monitoring_router)


@api.exception_handler(ProxyError)
def on_proxy_error(request: HttpRequest, exc: ProxyError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(LifecycleError)
def on_lifecycle_error(request: HttpRequest, exc: LifecycleError) -> HttpResponse:
    return api.create_response(
        request,
        error_body(exc.message, "invalid_request_error", code=exc.code),
        status=exc.status,
    )


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(Unauthenticated("Invalid or missing API key.", code="invalid_api_key"))


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    first = exc.errors[0] if exc.errors else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    message = first.get("msg", "Invalid request.")
    return error_response(BadRequest(f"{message} ({param})" if param else message, param=param))


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return api.create_response(
        request,
        error_body(str(exc), "invalid_request_error", code=exc.status_code),
        status=exc.status_code,
    )


@api.exception_handler(Exception)
def on_unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unexpected error on %s %s", request.method, request.path)
    return api.create_response(
        request,
        error_body("Internal error in the gateway.", "internal_error", code=500),
        status=500,
    )
