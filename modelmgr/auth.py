"""API-key authentication for every non-public route, as Ninja auth classes: a key in
`Authorization: Bearer <key>` (`KeyBearer`) or in `x-api-key: <key>` (`KeyHeader`), both
listed on each router so the OpenAPI schema shows both schemes.

A presented key is looked up by its visible prefix and compared in constant time with
the stored digest. Lookups are cached in-process for API_KEY_CACHE_SECONDS, so the
request path does not touch the database, and a revocation takes effect within that
time. `last_used_at` is written at most once per API_KEY_LAST_USED_INTERVAL per key.
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
from plumbing.db import run_sync
from plumbing.errors import Forbidden, Unauthenticated

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

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models


@dataclass(frozen=True, slots=True)
class _CachedKey:
    key_hash: str
    is_active: bool
    expires_at: datetime | None
    principal: Principal


_cache: dict[str, tuple[float, _CachedKey | None]] = {}
_last_used_written: dict[str, float] = {}
_background: set[asyncio.Task[None]] = set()


def forget_cached_keys() -> None:
    _cache.clear()
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
        ),
    )


async def _lookup(prefix: str) -> _CachedKey | None:
    now = time.monotonic()
    hit = _cache.get(prefix)
    if hit is not None and hit[0] > now:
        return hit[1]
    key = await run_sync(ApiKey.objects.filter(prefix=prefix).first)
    cached = _snapshot(key) if key is not None else None
    if len(_cache) >= CACHE_MAX_ENTRIES:
        _evict(now)
    _cache[prefix] = (now + settings.API_KEY_CACHE_SECONDS, cached)
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
    except Exception:
        # Bookkeeping must never fail a request; the next interval tries again.
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
