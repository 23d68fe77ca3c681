"""Per-key limits: requests and tokens per minute, counted in whole-minute windows by
plumbing/counters.py: in this process, or in Redis (REDIS_URL) when several workers or
instances must share the counts. Both are async; no thread hop on the request path.

When Redis is away (down or unreachable), RATELIMIT_FAIL_OPEN decides: let requests
through unlimited (the default; counted by talktuah_rate_limit_bypassed_total) or refuse
them with 503 and Retry-After. Either way the log says so once when it starts, at most
once a minute while it lasts, and once when Redis is back; never a line per request. The
counts start again from what Redis holds when it returns."""

import logging
import math
import time

from django.conf import settings

from modelmgr.auth import Principal
from plumbing import counters
from plumbing.counters import CountsUnavailable
from plumbing.errors import RateLimited, RateLimiterUnavailable
from proxy.metrics import RATE_LIMIT_BYPASSED

logger = logging.getLogger(__name__)

OUTAGE_LOG_INTERVAL = 60.0  # seconds between two warnings of one outage


class _Outage:
    """Redis being away, as the log tells it (one process's view)."""

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
                "the rate-limit counts (Redis) are unreachable%s (%s: %r): requests are %s "
                "(RATELIMIT_FAIL_OPEN=%s); %d failed calls%s",
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
                "the rate-limit counts (Redis) are reachable again after %.0f s: "
                "limits apply again",
                time.monotonic() - self.since,
            )
            self.since, self.failed_calls = None, 0


outage = _Outage()


def _counts_away(limit: str, what: str, exc: Exception) -> None:
    """Redis failed a limit check: let the request through, or refuse it."""
    outage.failed(what, exc)
    if not settings.RATELIMIT_FAIL_OPEN:
        raise RateLimiterUnavailable(
            "The rate limiter is unavailable; retry shortly.", headers={"Retry-After": "5"}
        ) from exc
    RATE_LIMIT_BYPASSED.labels(limit).inc()


async def check_request_rate(principal: Principal) -> None:
    """Count this request against the key's RPM limit; raise RateLimited past it."""
    rpm = principal.rpm_limit if principal.rpm_limit is not None else settings.DEFAULT_RPM_LIMIT
    if not rpm or not settings.RATELIMIT_ENABLE:
        return
    try:
        count = await counters.add(f"rpm:{principal.prefix}")
    except CountsUnavailable as exc:
        _counts_away("requests", "requests per minute", exc)
        return
    outage.succeeded()
    if count.value > rpm:
        retry_after = _seconds(count.seconds_left)
        raise RateLimited(
            f"Rate limit reached: {rpm} requests per minute for this key. "
            f"Retry in {retry_after} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )


def _seconds(left: float) -> int:
    """Whole seconds until a window ends, for Retry-After: at least 1."""
    return max(1, math.ceil(left))


def _tpm_limit(principal: Principal) -> int:
    return principal.tpm_limit if principal.tpm_limit is not None else settings.DEFAULT_TPM_LIMIT


async def check_token_rate(principal: Principal) -> None:
    """Refuse a request once the key used up its tokens for this minute."""
    limit = _tpm_limit(principal)
    if not limit or not settings.RATELIMIT_ENABLE:
        return
    try:
        used = await counters.read(f"tpm:{principal.prefix}")
    except CountsUnavailable as exc:
        _counts_away("tokens", "tokens per minute", exc)
        return
    outage.succeeded()
    if used.value >= limit:
        retry_after = _seconds(used.seconds_left)
        raise RateLimited(
            f"Token limit reached: {limit} tokens per minute for this key. "
            f"Retry in {retry_after} s.",
            code="token_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )


async def add_tokens(principal: Principal, tokens: int) -> None:
    """Count a finished request's tokens; lost (with the outage warning) while Redis is
    away, since the answer has been given already."""
    if not tokens or not _tpm_limit(principal) or not settings.RATELIMIT_ENABLE:
        return
    try:
        await counters.add(f"tpm:{principal.prefix}", tokens)
    except CountsUnavailable as exc:
        outage.failed("counting tokens", exc)
