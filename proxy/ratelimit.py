"""Per-key limits: requests per minute through django-ratelimit, tokens per minute in
the same cache. The cache is settings-driven: local memory for one process, Redis
(REDIS_URL) when several workers or instances must share the counts.

When that cache is away (Redis down or unreachable), RATELIMIT_FAIL_OPEN decides: let
requests through unlimited (the default; counted by talktuah_rate_limit_bypassed_total)
or refuse them with 503 and Retry-After. Either way the log says so once when it starts,
at most once a minute while it lasts, and once when the cache is back; never a line per
request. The counts start again from what the cache holds when it returns."""

import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

from modelmgr.auth import Principal
from plumbing.errors import RateLimited, RateLimiterUnavailable
from proxy.metrics import RATE_LIMIT_BYPASSED

logger = logging.getLogger(__name__)

# What a cache call raises when its server is away: Django's Redis backend lets
# redis-py's errors through (ConnectionError, TimeoutError, ...), and socket errors
# can surface as OSError. Anything else is a bug and is not swallowed.
CACHE_ERRORS = (RedisError, OSError)
OUTAGE_LOG_INTERVAL = 60.0  # seconds between two warnings of one outage

# django-ratelimit's decorator does not await async views; its core function is sync.
# With a network cache (Redis) it runs in the thread pool, off the event loop; with the
# in-process local-memory cache it never blocks, so it runs inline (no thread hop).
_get_usage_in_thread = sync_to_async(get_usage, thread_sensitive=False)


class _Outage:
    """The shared cache being away, as the log tells it (one process's view)."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.warned_at = 0.0
        self.failed_calls = 0  # since the last warning

    def failed(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        self.failed_calls += 1
        if self.since is None or now - self.warned_at >= OUTAGE_LOG_INTERVAL:
            first = self.since is None
            self.since = self.since if self.since is not None else now
            fate = (
                "let through without limits" if settings.RATELIMIT_FAIL_OPEN else "refused with 503"
            )
            logger.warning(
                "the rate-limit cache is unreachable%s (%s: %r): requests are %s "
                "(RATELIMIT_FAIL_OPEN=%s); %d failed cache calls%s",
                "" if first else f" for {now - self.since:.0f} s",
                what,
                exc,
                fate,
                settings.RATELIMIT_FAIL_OPEN,
                self.failed_calls,
                "" if first else " since the last warning",
            )
            self.warned_at, self.failed_calls = now, 0

    def succeeded(self) -> None:
        if self.since is not None:
            logger.warning(
                "the rate-limit cache is reachable again after %.0f s: limits apply again",
                time.monotonic() - self.since,
            )
            self.since, self.failed_calls = None, 0


outage = _Outage()


def _cache_away(limit: str, what: str, exc: Exception) -> None:
    """The cache failed a limit check: let the request through, or refuse it."""
    outage.failed(what, exc)
    if not settings.RATELIMIT_FAIL_OPEN:
        raise RateLimiterUnavailable(
            "The rate limiter is unavailable; retry shortly.", headers={"Retry-After": "5"}
        ) from exc
    RATE_LIMIT_BYPASSED.labels(limit).inc()


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
    try:
        usage = await _get_usage(
            request,
            group="talktuah.rpm",
            key=lambda _group, _request: principal.prefix,
            rate=f"{rpm}/m",
            increment=True,
        )
    except CACHE_ERRORS as exc:
        _cache_away("requests", "requests per minute", exc)
        return
    outage.succeeded()
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
    try:
        used = await cache.aget(key, 0)
    except CACHE_ERRORS as exc:
        _cache_away("tokens", "tokens per minute", exc)
        return
    outage.succeeded()
    if used >= limit:
        raise RateLimited(
            f"Token limit reached: {limit} tokens per minute for this key. "
            f"Retry in {seconds_left} s.",
            code="token_limit_exceeded",
            headers={"Retry-After": str(max(1, seconds_left))},
        )


async def add_tokens(principal: Principal, tokens: int) -> None:
    """Count a finished request's tokens; lost (with the outage warning) while the cache
    is away, since the answer has been given already."""
    if not tokens or not _tpm_limit(principal):
        return
    key, _ = _tpm_key(principal)
    try:
        if not await cache.aadd(key, tokens, 65):
            try:
                await cache.aincr(key, tokens)
            except ValueError:  # expired between add and incr
                await cache.aadd(key, tokens, 65)
    except CACHE_ERRORS as exc:
        outage.failed("counting tokens", exc)
