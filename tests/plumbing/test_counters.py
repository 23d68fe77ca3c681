"""The window counts behind the rate limits: in this process, and in a real Redis shared
by every client of it; Redis away fails at once with CountsUnavailable."""

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from plumbing import counters
from plumbing.counters import CountsUnavailable
from tests.net import free_port, redis_reachable
from tests.private_services import PrivateRedis

REDIS = "redis://127.0.0.1:6379/14"


def next_window(seconds: int) -> None:
    """Sleep into the next window of `seconds` (and clear of its start)."""
    time.sleep(seconds - time.time() % seconds + 0.05)


def test_local_counts_add_up_per_name_and_start_again_each_window(settings):
    settings.REDIS_URL = ""

    async def run() -> list[int]:
        next_window(2)
        found = [(await counters.add("a")).value, (await counters.add("a", 5)).value]
        found.append((await counters.read("a", window=2)).value)
        found.append((await counters.read("b", window=2)).value)
        found.append((await counters.add("a", window=2)).value)
        return found

    # Windows of different lengths count apart ("a" in minutes, "a" in 2 s windows).
    assert asyncio.run(run()) == [1, 6, 0, 0, 1]


def test_local_counts_forget_windows_that_ended(settings):
    settings.REDIS_URL = ""

    async def run() -> tuple[int, int, float]:
        next_window(1)
        await counters.add("x", 3, window=1)
        next_window(1)
        count = await counters.add("x", window=1)
        return (
            count.value,
            sum(1 for length, _ in counters._local if length == 1),
            count.seconds_left,
        )

    value, windows, left = asyncio.run(run())
    assert value == 1
    assert windows == 1  # the ended window is gone, not kept forever
    assert 0 < left <= 1


@pytest.fixture
def shared_redis(settings) -> Iterator[redis.Redis]:
    if not redis_reachable(REDIS):
        pytest.skip("needs Redis on 127.0.0.1:6379")
    settings.REDIS_URL = REDIS
    settings.CACHE_KEY_PREFIX = f"counters-test-{os.getpid()}-{time.monotonic_ns()}"
    client = redis.Redis.from_url(REDIS)
    yield client
    for key in client.scan_iter(f"{settings.CACHE_KEY_PREFIX}:*"):
        client.delete(key)


def test_redis_counts_are_exact_under_concurrent_adds_and_expire(shared_redis, settings):
    async def run() -> tuple[list[int], int]:
        added = await asyncio.gather(*(counters.add("k", 2) for _ in range(50)))
        return sorted(c.value for c in added), (await counters.read("k")).value

    next_window(60) if 60 - time.time() % 60 < 2 else None
    values, total = asyncio.run(run())
    assert values == list(range(2, 101, 2))  # each add saw its own increment
    assert total == 100
    [key] = shared_redis.scan_iter(f"{settings.CACHE_KEY_PREFIX}:*")
    assert 0 < shared_redis.ttl(key) <= 60 + counters.EXPIRY_MARGIN_SECONDS


def test_redis_counts_are_shared_by_clients_on_other_event_loops(shared_redis):
    # Each asyncio.run is a new loop: the adapter makes a client for it.
    next_window(60) if 60 - time.time() % 60 < 2 else None
    assert asyncio.run(counters.add("shared")).value == 1
    assert asyncio.run(counters.add("shared")).value == 2
    assert asyncio.run(counters.read("shared")).value == 2


def test_redis_refusing_connections_raises_counts_unavailable_at_once(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(CountsUnavailable, match="Redis did not answer"):
        asyncio.run(counters.add("k"))
    with pytest.raises(CountsUnavailable):
        asyncio.run(counters.read("k"))
    # Every request while Redis is down pays this: it must not wait on retries.
    assert time.monotonic() - started < 1.0


def test_a_redis_that_never_answers_fails_after_the_timeout_without_retrying(settings):
    # A server that accepts connections and never replies.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    settings.REDIS_URL = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    settings.REDIS_TIMEOUT_SECONDS = 0.3
    try:
        started = time.monotonic()
        with pytest.raises(CountsUnavailable):
            asyncio.run(counters.add("k"))
        waited = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) == 1
    assert waited < 2.0


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
def test_counts_carry_on_after_redis_restarts_without_a_failure_per_pooled_connection(settings):
    # Before: each connection pooled before the restart failed its next call (closed by
    # the server), so the outage warnings flapped after Redis was back.
    async def run(server: PrivateRedis) -> list[int]:
        first = await asyncio.gather(*(counters.add("r") for _ in range(8)))  # 8 connections
        server.stop()
        server.start()  # same port, empty (no persistence)
        after = await asyncio.gather(*(counters.add("r") for _ in range(8)))
        return sorted(c.value for c in first + after)

    with PrivateRedis() as server:
        settings.REDIS_URL = server.url
        assert asyncio.run(run(server)) == sorted(list(range(1, 9)) * 2)
