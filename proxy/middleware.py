"""Async-native middleware for the lean proxy path (no sync_to_async thread hop)."""

import itertools
import os
import re
import secrets
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


REQUEST_ID_HEADER = "X-Request-Id"
# A client's own id is kept when it is one token of at most 128 printable characters.
_SANE_ID = re.compile(r"[!-~]{1,128}")
# The gateway's own ids: this process's random part, then a count (unique without a
# system call for randomness on every request; an id is a name, not a secret).
_PROCESS_PART: str  # set below, and again in a forked child
_numbers = itertools.count()


def _new_process_part() -> None:
    global _PROCESS_PART
    _PROCESS_PART = secrets.token_hex(6)


_new_process_part()
os.register_at_fork(after_in_child=_new_process_part)  # a forked worker names its own


def request_id_of(request: HttpRequest) -> str:
    """The request's id: the client's X-Request-Id when sane, else one made here."""
    found = getattr(request, "talktuah_request_id", None)
    if found is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        found = (
            sent
            if sent and _SANE_ID.fullmatch(sent)
            else f"req_{_PROCESS_PART}{next(_numbers):012x}"
        )
        request.talktuah_request_id = found  # type: ignore[attr-defined]
    return str(found)


def request_ids(get_response: GetResponse) -> GetResponse:
    """Every answer says its request id (X-Request-Id), the one vLLM and the access log
    see too, so a client reporting an error can be matched with the gateway's log."""

    async def middleware(request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_of(request)
        response = await get_response(request)
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        return response

    markcoroutinefunction(middleware)
    return middleware


request_ids.async_capable = True  # type: ignore[attr-defined]
request_ids.sync_capable = False  # type: ignore[attr-defined]
