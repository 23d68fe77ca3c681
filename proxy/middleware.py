"""Async-native middleware for the lean proxy path (no sync_to_async thread hop)."""

from collections.abc import Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def security_headers(get_response: GetResponse) -> GetResponse:
    """The headers Django's SecurityMiddleware and XFrameOptionsMiddleware would add."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        response = await get_response(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    markcoroutinefunction(middleware)
    return middleware


security_headers.async_capable = True  # type: ignore[attr-defined]
security_headers.sync_capable = False  # type: ignore[attr-defined]
