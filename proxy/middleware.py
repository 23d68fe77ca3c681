"""Async-native middleware for the lean proxy path (no sync_to_async thread hop)."""

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def security_headers(get_response: GetResponse) -> GetResponse:
    """The headers Django's SecurityMiddleware and XFrameOptionsMiddleware add on the full
    stack, from the same settings (read once, here)."""
    referrer_policy = settings.SECURE_REFERRER_POLICY
    frame_options = settings.X_FRAME_OPTIONS
    hsts = ""
    if settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        response = await get_response(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", referrer_policy)
        response.headers.setdefault("X-Frame-Options", frame_options)
        if hsts and request.is_secure():
            response.headers.setdefault("Strict-Transport-Security", hsts)
        return response

    markcoroutinefunction(middleware)
    return middleware


security_headers.async_capable = True  # type: ignore[attr-defined]
security_headers.sync_capable = False  # type: ignore[attr-defined]
