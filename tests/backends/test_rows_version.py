"""A poll re-reads the Backend rows only when they may have changed: a row saved or
deleted (a version bumped after the commit, in Redis with REDIS_URL so that every
process sees it), a version it cannot read, or BACKEND_ROWS_SECONDS since the last read
(a change made where no signal reaches, as another process without Redis)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from backends.apps import ROWS_VERSION
from backends.models import Backend
from backends.pool import Pool
from backends.services import backend_create, backend_save
from plumbing import counters, vllm
from plumbing.db import run_sync
from tests.net import free_port, redis_reachable

REDIS = "redis://127.0.0.1:6379/14"

pytestmark = pytest.mark.django_db(transaction=True)


def weights(pool: Pool) -> dict[str, int]:
    return {name: replica.spec.weight for name, replica in pool.replicas.items()}


def polled(steps: Callable[[Pool], Awaitable[None]]) -> None:
    """Runs `steps` on a loaded pool whose own poller never wakes (the test polls)."""

    async def run() -> None:
        pool = Pool()
        await pool.ready()
        try:
            await steps(pool)
        finally:
            pool.forget()
            await vllm.reset_client()
            if counters._client is not None:
                await counters.redis_client().aclose()

    asyncio.run(run())


@pytest.fixture
def quiet(settings: Any) -> Any:
    settings.BACKEND_POLL_SECONDS = 3600
    settings.BACKEND_ROWS_SECONDS = 3600
    settings.BACKEND_POLL_TIMEOUT = 0.5
    settings.VLLM_BASE_URL = ""  # only the rows (their vLLMs refuse: nothing listens)
    return settings


def test_a_saved_or_deleted_row_is_read_at_the_next_poll(quiet: Any) -> None:
    quiet.REDIS_URL = ""
    row = backend_create(name="one", base_url=f"http://127.0.0.1:{free_port()}")

    async def steps(pool: Pool) -> None:
        assert weights(pool) == {"one": 1}
        row.weight = 2
        await run_sync(backend_save, row)
        await pool.poll_once()
        assert weights(pool) == {"one": 2}
        await run_sync(backend_create, name="two", base_url=f"http://127.0.0.1:{free_port()}")
        await pool.poll_once()
        assert weights(pool) == {"one": 2, "two": 1}
        await Backend.objects.filter(name="one").adelete()
        await pool.poll_once()
        assert weights(pool) == {"two": 1}

    polled(steps)


@pytest.mark.parametrize(
    "with_redis",
    [False, True],
    ids=["without Redis, after BACKEND_ROWS_SECONDS", "with Redis, at the next poll"],
)
def test_a_change_made_in_another_process_is_read_once_its_news_arrives(
    quiet: Any, with_redis: bool
) -> None:
    if with_redis and not redis_reachable(REDIS):
        pytest.skip("needs Redis on 127.0.0.1:6379")
    quiet.REDIS_URL = REDIS if with_redis else ""
    backend_create(name="one", base_url=f"http://127.0.0.1:{free_port()}")

    async def steps(pool: Pool) -> None:
        # A row changed in another process: no signal ran in this one.
        await Backend.objects.filter(name="one").aupdate(weight=3)
        await pool.poll_once()
        assert weights(pool) == {"one": 1}, "re-read although nothing said it changed"
        if with_redis:
            # What bump_version does in the process that saved the row: only Redis moves.
            redis.Redis.from_url(REDIS).incr(counters._version_key(ROWS_VERSION))
        else:
            quiet.BACKEND_ROWS_SECONDS = 0
        await pool.poll_once()
        assert weights(pool) == {"one": 3}

    polled(steps)


def test_a_version_that_cannot_be_read_reads_the_rows_at_every_poll(quiet: Any) -> None:
    quiet.REDIS_URL = ""
    backend_create(name="one", base_url=f"http://127.0.0.1:{free_port()}")

    async def steps(pool: Pool) -> None:
        quiet.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # Redis away
        quiet.REDIS_TIMEOUT_SECONDS = 0.5
        await Backend.objects.filter(name="one").aupdate(weight=5)
        await pool.poll_once()
        assert weights(pool) == {"one": 5}

    polled(steps)


def test_a_saved_row_is_saved_even_when_redis_cannot_take_the_news(
    quiet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    quiet.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    quiet.REDIS_TIMEOUT_SECONDS = 0.5
    row = backend_create(name="one", base_url="http://127.0.0.1:9")
    assert Backend.objects.get(pk=row.pk).base_url == "http://127.0.0.1:9"
    assert "Redis did not take the news" in caplog.text
