"""Per-key limits: requests per minute through django-ratelimit, tokens per minute in
the same cache. The cache is settings-driven: local memory for one process, Redis
(REDIS_URL) when several workers or instances must share the counts."""

import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest
from django_ratelimit.core import get_usage

from modelmgr.auth import Principal
from plumbing.errors import RateLimited

# django-ratelimit's decorator does not await async views; its core function is sync.
# With a network cache (Redis) it runs in the thread pool, off the event loop; with the
# in-process local-memory cache it never blocks, so it runs inline (no thread hop).
_get_usage_in_thread = sync_to_async(get_usage, thread_sensitive=False)


async def _get_usage(request: HttpRequest, **kwargs: Any) -> dict[str, Any] | None:
    # `cache` is a proxy object: look at the backend behind it.
    if isinstance(caches["default"], LocMemCache):
        return get_usage(request, **kwargs)
    return await _get_usage_in_thread(request, **kwargs)


async def check_request_rate(request: HttpRequest, principal: Principal) -> None:
    """Count this request against the key's RPM limit; raise RateLimited past it."""
    rpm = principal.rpm_limit if principal.rpm_limit is not None else settings.DEFAULT_RPM_LIMIT
    if not rpm:
        return
    usage = await _get_usage(
        request,
        group="talktuah.rpm",
        key=lambda _group, _request: principal.prefix,
        rate=f"{rpm}/m",
        increment=True,
    )
    if usage and usage["should_limit"]:
        retry_after = max(1, int(usage["time_left"]))
        raise RateLimited(
            f"Rate limit reached: {rpm} requests per minute for this key. "
            f"Retry in {retry_after} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )


def _tpm_key(principal: Principal) -> tuple[str, int]:
    window = int(time.time()) // 60
    return f"talktuah.tpm:{principal.prefix}:{window}", 60 - int(time.time()) % 60


def _tpm_limit(principal: Principal) -> int:
    return principal.tpm_limit if principal.tpm_limit is not None else settings.DEFAULT_TPM_LIMIT


async def check_token_rate(principal: Principal) -> None:
    """Refuse a request once the key used up its tokens for this minute."""
    limit = _tpm_limit(principal)
    if not limit or not settings.RATELIMIT_ENABLE:
        return
    key, seconds_left = _tpm_key(principal)
    used = await cache.aget(key, 0)
    if used >= limit:
        raise RateLimited(
            f"Token limit reached: {limit} tokens per minute for this key. "
            f"Retry in {seconds_left} s.",
            code="token_limit_exceeded",
            headers={"Retry-After": str(max(1, seconds_left))},
        )


async def add_tokens(principal: Principal, tokens: int) -> None:
    if not tokens or not _tpm_limit(principal):
        return
    key, _ = _tpm_key(principal)
    if not await cache.aadd(key, tokens, 65):
        try:
            await cache.aincr(key, tokens)
        except ValueError:  # expired between add and incr
            await cache.aadd(key, tokens, 65)
