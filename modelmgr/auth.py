"""API-key authentication for every non-public route, as Ninja auth classes: a key in
`Authorization: Bearer <key>` (`KeyBearer`) or in `x-api-key: <key>` (`KeyHeader`), both
listed on each router so the OpenAPI schema shows both schemes.

A presented key is looked up by its visible prefix and compared in constant time with
the stored digest. Lookups are cached in-process for API_KEY_CACHE_SECONDS, so the
request path does not touch the database, and a revocation takes effect within that
time. A key in use is read again in the background during the last fifth of that time,
so steady traffic never waits on the database; when an entry has expired, concurrent
requests for the key share one lookup (64 streams arriving at once after an idle spell
made 64 queries, one after another on the sync thread, before any stream started).
`last_used_at` is written at most once per API_KEY_LAST_USED_INTERVAL per key.
While the database is away, a key this process has looked up keeps working from the
cache (a warning a minute says so); an unknown key gets 503 with Retry-After.
"""

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import APIKeyHeader, HttpBearer
from prometheus_client import Counter

from modelmgr.models import ApiKey, Scope, hash_key, split_prefix
from plumbing.db import DATABASE_AWAY, run_sync
from plumbing.errors import DatabaseUnavailable, Forbidden, Unauthenticated
from teams.limits import NO_QUOTA, TokenQuota

logger = logging.getLogger(__name__)

ENV_KEY_PREFIX = "env"
# Past this many cached prefixes, misses are dropped first: random prefixes (a brute
# force) would otherwise grow the cache without bound.
CACHE_MAX_ENTRIES = 10_000

AUTH_FAILURES = Counter(
    "talktuah_auth_failures",
    "Requests refused for their API key, by reason (never the key or its prefix).",
    ["reason"],
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what the rest of the request path knows about a key."""

    key_id: int | None
    prefix: str
    name: str
    scopes: frozenset[str]
    allowed_models: frozenset[str]
    rpm_limit: int | None
    tpm_limit: int | None
    tier: str = "interactive"  # when a backend is full, who leaves its queue first
    share: int = 1
    max_parallel_requests: int | None = None
    quota: TokenQuota = NO_QUOTA  # tokens per day and month, the key's and its team's

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class _CachedKey:
    key_hash: str
    is_active: bool
    expires_at: datetime | None
    principal: Principal


# A key's entry is read again once this share of API_KEY_CACHE_SECONDS has passed.
REFRESH_AFTER = 0.8

_cache: dict[str, tuple[float, _CachedKey | None]] = {}  # prefix: (expires, entry)
_lookups: dict[str, asyncio.Task[_CachedKey | None]] = {}  # prefix: the lookup under way
_last_used_written: dict[str, float] = {}
_background: set[asyncio.Task[None]] = set()
_STALE_WARNING_INTERVAL = 60.0  # seconds between two "serving cached keys" warnings
_stale_warned_at = -1e9


def forget_cached_keys() -> None:
    _cache.clear()
    _lookups.clear()
    _last_used_written.clear()


def _snapshot(key: ApiKey) -> _CachedKey:
    return _CachedKey(
        key_hash=key.key_hash,
        is_active=key.is_active,
        expires_at=key.expires_at,
        principal=Principal(
            key_id=key.pk,
            prefix=key.prefix,
            name=key.name,
            scopes=frozenset(key.scopes),
            allowed_models=frozenset(key.allowed_models),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            tier=key.tier,
            share=key.share,
            max_parallel_requests=key.max_parallel_requests,
            quota=TokenQuota.of(key),
        ),
    )


async def _lookup(prefix: str) -> _CachedKey | None:
    now = time.monotonic()
    hit = _cache.get(prefix)
    if hit is not None and hit[0] > now:
        if hit[0] - now < (1 - REFRESH_AFTER) * settings.API_KEY_CACHE_SECONDS:
            _read(prefix)  # in the background; this request goes on with the entry
        return hit[1]
    # Shielded: a request whose client left must not cancel the others' lookup.
    return await asyncio.shield(_read(prefix))


def _read(prefix: str) -> asyncio.Task[_CachedKey | None]:
    """The lookup of `prefix` under way, or a new one: one query per key at a time."""
    task = _lookups.get(prefix)
    if task is None:
        task = _lookups[prefix] = asyncio.get_running_loop().create_task(_read_key(prefix))
        task.add_done_callback(_lookup_done)
    return task


def _lookup_done(task: asyncio.Task[_CachedKey | None]) -> None:
    for prefix, running in list(_lookups.items()):
        if running is task:
            del _lookups[prefix]
    # Requests awaiting the lookup get its error; a background refresh's is logged here
    # (an unreachable database is logged by _warn_stale, at most once a minute).
    error = None if task.cancelled() else task.exception()
    if error is not None and not isinstance(error, DatabaseUnavailable):
        logger.warning("could not read an API key from the database: %s", error)


async def _read_key(prefix: str) -> _CachedKey | None:
    started = time.monotonic()
    try:
        # With its team: the quotas are read here, never on the request path.
        key = await run_sync(ApiKey.objects.select_related("team").filter(prefix=prefix).first)
    except DATABASE_AWAY as exc:
        known = _cache.get(prefix)
        if known is None:
            raise DatabaseUnavailable(
                "The key store is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
        # The database is away: a key this process knew keeps working as it was (no
        # change to it can be made meanwhile anyway). Ask again one interval later, so
        # requests do not each wait on the dead database.
        _warn_stale(exc)
        _cache[prefix] = (time.monotonic() + settings.API_KEY_CACHE_SECONDS, known[1])
        return known[1]
    cached = _snapshot(key) if key is not None else None
    # Valid from when the read began: a revocation never outlives API_KEY_CACHE_SECONDS.
    if len(_cache) >= CACHE_MAX_ENTRIES:
        _evict(time.monotonic())
    _cache[prefix] = (started + settings.API_KEY_CACHE_SECONDS, cached)
    return cached


def _evict(now: float) -> None:
    """Expired entries go, then every miss if that was not enough (real keys stay)."""
    for prefix, (expiry, _cached) in list(_cache.items()):
        if expiry <= now:
            del _cache[prefix]
    if len(_cache) >= CACHE_MAX_ENTRIES:
        for prefix, (_expiry, cached) in list(_cache.items()):
            if cached is None:
                del _cache[prefix]


def _warn_stale(exc: Exception) -> None:
    global _stale_warned_at
    now = time.monotonic()
    if now - _stale_warned_at >= _STALE_WARNING_INTERVAL:
        _stale_warned_at = now
        logger.warning("the database is unreachable (%r): serving keys from the cache", exc)


def _env_principal() -> Principal:
    return Principal(
        key_id=None,
        prefix=ENV_KEY_PREFIX,
        name="PROXY_API_KEY",
        scopes=frozenset(Scope.values),
        allowed_models=frozenset(),
        rpm_limit=None,
        tpm_limit=None,
    )


async def _write_last_used(key_id: int) -> None:
    try:
        await run_sync(ApiKey.objects.filter(pk=key_id).update, last_used_at=timezone.now())
    except DATABASE_AWAY as exc:
        # Bookkeeping must never fail a request; the next interval tries again.
        logger.warning("could not record last use of key %s: %r", key_id, exc)
    except Exception:
        logger.warning("could not record last use of key %s", key_id, exc_info=True)


def _touch(principal: Principal) -> None:
    if principal.key_id is None:
        return
    now = time.monotonic()
    if now - _last_used_written.get(principal.prefix, -1e9) < settings.API_KEY_LAST_USED_INTERVAL:
        return
    _last_used_written[principal.prefix] = now
    task = asyncio.get_running_loop().create_task(_write_last_used(principal.key_id))
    # Keep a reference until done, or the task may be garbage-collected mid-write.
    _background.add(task)
    task.add_done_callback(_background.discard)


async def authenticate_key(plaintext: str) -> Principal:
    """The principal of a presented key; raises Unauthenticated for anything else."""
    if settings.PROXY_API_KEY and hmac.compare_digest(
        plaintext.encode(), settings.PROXY_API_KEY.encode()
    ):
        return _env_principal()
    prefix = split_prefix(plaintext)
    cached = await _lookup(prefix) if prefix else None
    # Compare against a dummy digest when the prefix is unknown, so an unknown key
    # costs the same as a wrong one.
    expected = cached.key_hash if cached else "0" * 64
    if not hmac.compare_digest(expected, hash_key(plaintext)) or cached is None:
        AUTH_FAILURES.labels("invalid_api_key").inc()
        raise Unauthenticated("Invalid API key.", code="invalid_api_key")
    if not cached.is_active:
        AUTH_FAILURES.labels("key_revoked").inc()
        raise Unauthenticated("This API key has been revoked.", code="key_revoked")
    if cached.expires_at is not None and cached.expires_at <= timezone.now():
        AUTH_FAILURES.labels("key_expired").inc()
        raise Unauthenticated("This API key has expired.", code="key_expired")
    _touch(cached.principal)
    return cached.principal


async def _authorise(plaintext: str | None, scope: str) -> Principal | None:
    """The principal of a presented key holding `scope`; None when no key was presented
    this way (Ninja then tries the next scheme, and answers 401 when none matched)."""
    plaintext = (plaintext or "").strip()
    if not plaintext:
        return None
    principal = await authenticate_key(plaintext)
    if scope not in principal.scopes:
        AUTH_FAILURES.labels("insufficient_scope").inc()
        raise Forbidden(f"This API key lacks the '{scope}' scope.", code="insufficient_scope")
    return principal


class KeyBearer(HttpBearer):
    """`Authorization: Bearer <key>`, with a scope."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def __call__(self, request: HttpRequest) -> Any:
        # HttpBearer's own __call__ logs a header of another scheme in DEBUG: that header
        # may hold a secret, which must never reach a log.
        scheme, _, token = request.headers.get(self.header, "").partition(" ")
        if scheme.lower() != self.openapi_scheme:
            return None
        return self.authenticate(request, token)

    async def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        return await _authorise(token, self.scope)


class KeyHeader(APIKeyHeader):
    """`x-api-key: <key>` (what Anthropic-style clients send), with a scope."""

    param_name = "x-api-key"

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    async def authenticate(self, request: HttpRequest, key: str | None) -> Principal | None:
        return await _authorise(key, self.scope)


# A bearer key wins over x-api-key when both are sent, as Ninja tries them in order.
inference_auth = [KeyBearer(Scope.INFERENCE), KeyHeader(Scope.INFERENCE)]
admin_auth = [KeyBearer(Scope.ADMIN), KeyHeader(Scope.ADMIN)]


def principal_of(request: HttpRequest) -> Principal:
    """The principal Ninja's auth put on the request."""
    principal = getattr(request, "auth", None)
    if not isinstance(principal, Principal):
        raise Unauthenticated("Invalid or missing API key.", code="invalid_api_key")
    return principal
