"""Counts in fixed time windows (requests and tokens per key per minute), and versions
(a number bumped when the backend rows change): the adapter to Redis when REDIS_URL is
set, so every worker and instance shares them, else a dict in this process.

Both are async-native and cheap on the request path: the local counts are a dict
lookup, and Redis is reached with redis-py's asyncio client (one pipelined round trip to
add, one GET to read), never through a thread. Windows are whole multiples of their
length since the epoch, so every key's minute ends on the minute, and a count lives in
Redis a little past its window's end (then Redis forgets it).

A Redis that is away raises CountsUnavailable at once (REDIS_TIMEOUT_SECONDS bounds
connecting and each reply; only a broken connection is tried again, once, on a fresh
one): the caller decides what that means.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

# A count outlives its window in Redis by this much, so a reader at the window's edge
# still finds it.
EXPIRY_MARGIN_SECONDS = 5


class CountsUnavailable(Exception):
    """The shared counts (Redis) did not answer."""


@dataclass(frozen=True, slots=True)
class Count:
    value: int  # in the current window, after this call's addition
    seconds_left: float  # until the window ends and counting starts again from 0


def _window(seconds: int) -> tuple[int, float]:
    """The current window's number and the seconds left in it."""
    now = time.time()
    number = int(now // seconds)
    return number, (number + 1) * seconds - now


async def add(name: str, amount: int = 1, *, window: int = 60) -> Count:
    """Adds `amount` to `name`'s count in the current window and returns the new count."""
    number, left = _window(window)
    if not settings.REDIS_URL:
        counts = _local_counts(window, number)
        value = counts[name] = counts.get(name, 0) + amount
        return Count(value, left)
    key = _redis_key(name, window, number)
    with redis_answers():
        async with redis_client().pipeline(transaction=False) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, window + EXPIRY_MARGIN_SECONDS)
            value, _ = await pipe.execute()
    return Count(int(value), left)


async def read(name: str, *, window: int = 60) -> Count:
    """`name`'s count in the current window."""
    number, left = _window(window)
    if not settings.REDIS_URL:
        return Count(_local_counts(window, number).get(name, 0), left)
    with redis_answers():
        value = await redis_client().get(_redis_key(name, window, number))
    return Count(int(value or 0), left)


# --- versions ------------------------------------------------------------------------
# A version is a number that only goes up, bumped when something every process keeps in
# memory has changed (the backend rows), so that a reader polls one number instead of
# reading the thing itself again. In Redis when REDIS_URL is set (every process sees
# every bump), else in this process (bumps made in another process go unseen: the reader
# also re-reads now and then).

_versions: dict[str, int] = {}


def bump_version(name: str) -> None:
    """Moves `name`'s version on. Synchronous (model signals call it); a Redis that is
    away raises CountsUnavailable."""
    _versions[name] = _versions.get(name, 0) + 1
    if settings.REDIS_URL:
        with redis_answers():
            _sync_redis().incr(_version_key(name))


async def version(name: str) -> int:
    """`name`'s version: 0 until it is first bumped."""
    if not settings.REDIS_URL:
        return _versions.get(name, 0)
    with redis_answers():
        value = await redis_client().get(_version_key(name))
    return int(value or 0)


def _version_key(name: str) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:version:{name}"


# --- this process's counts ---------------------------------------------------------

# (window length, window number) -> name -> count; only current windows are kept.
_local: dict[tuple[int, int], dict[str, int]] = {}


def _local_counts(window: int, number: int) -> dict[str, int]:
    counts = _local.get((window, number))
    if counts is None:
        # A new window: the earlier ones of this length are over.
        for old in [k for k in _local if k[0] == window and k[1] < number]:
            del _local[old]
        counts = _local[(window, number)] = {}
    return counts


def forget() -> None:
    """Drops this process's counts and versions (tests start from zero)."""
    _local.clear()
    _versions.clear()


# --- Redis ------------------------------------------------------------------------


@contextlib.contextmanager
def redis_answers() -> Iterator[None]:
    """Redis's and the socket's errors as CountsUnavailable."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise CountsUnavailable(f"Redis did not answer: {exc!r}") from exc


def _redis_key(name: str, window: int, number: int) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:counts:{name}:{window}:{number}"


@dataclass(frozen=True)
class _Client:
    redis: Redis
    url: str
    timeout: float
    loop: asyncio.AbstractEventLoop


_client: _Client | None = None


def redis_client() -> Redis:
    """The process's Redis client, shared by the counts here and the token quotas
    (proxy/quota.py): bound to the running event loop (redis-py's asyncio connections
    belong to one loop) and to the current settings."""
    global _client
    loop = asyncio.get_running_loop()
    url, timeout = settings.REDIS_URL, settings.REDIS_TIMEOUT_SECONDS
    client = _client
    if client is None or client.loop is not loop or (client.url, client.timeout) != (url, timeout):
        redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Once, at once, and only when the connection broke: a connection pooled
            # before Redis restarted fails its next call ("closed by server") and the
            # retry opens a fresh one (a reply lost with its connection would count
            # twice: rare, and one request more or less in a limit). A timeout is never
            # retried: a request must not wait out several for a count.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        if client is not None and client.loop is loop:
            # Settings changed: close the old client's connections.
            _closing.add(task := loop.create_task(client.redis.aclose()))
            task.add_done_callback(_closing.discard)
        client = _client = _Client(redis, url, timeout, loop)
    return client.redis


_closing: set[asyncio.Task[None]] = set()

_sync_client: tuple[str, float, SyncRedis] | None = None


def _sync_redis() -> SyncRedis:
    """A synchronous client for the few calls made outside the event loop (a version
    bumped by a model signal in the admin or a management command)."""
    global _sync_client
    url, timeout = settings.REDIS_URL, settings.REDIS_TIMEOUT_SECONDS
    if _sync_client is None or _sync_client[:2] != (url, timeout):
        redis = SyncRedis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        _sync_client = (url, timeout, redis)
    return _sync_client[2]
