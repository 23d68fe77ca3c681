"""Admission over real sockets: the gateway in front of a simulator that runs at most
`max_num_seqs` requests (a busy vLLM): the gateway never sends more than the capacity,
a quiet key starts at once while a busy key's requests wait, a full queue is a 429, a
client that leaves while queued never reaches vLLM, a waiting stream gets SSE comments,
vLLM's `priority` is the gateway's, and two workers share one capacity."""

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_process import GatewayProcess
from tests.scripted_vllm import ScriptedVllm
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "x-talktuah-queue-ms"


def chat(stream: bool = True, tokens: int = 40) -> dict[str, Any]:
    return {
        "model": "demo-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        "max_tokens": tokens,
        "ignore_eos": True,
    }


@pytest.fixture
def busy(settings: Any) -> Iterator[SimulatorProcess]:
    """A vLLM that runs 2 requests at once, and a gateway whose capacity says so."""
    settings.BACKEND_CAPACITY = 2
    settings.ADMISSION_HEADROOM = 1
    settings.ADMISSION_KEEPALIVE_SECONDS = 0.2
    with SimulatorProcess(max_num_seqs=2, tokens=40, token_delay=0.02) as sim:
        settings.VLLM_BASE_URL = sim.url
        yield sim


async def _streams(url: str, key: str, count: int, tokens: int = 40) -> list[tuple[int, bytes]]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:

        async def one() -> tuple[int, bytes]:
            url_ = f"{url}/v1/chat/completions"
            async with client.stream("POST", url_, json=chat(tokens=tokens)) as response:
                return response.status_code, await response.aread()

        return await asyncio.gather(*(one() for _ in range(count)))


async def _running(sim: SimulatorProcess, count: int) -> None:
    """Until the simulator runs `count` requests (10 s at most)."""
    deadline = time.monotonic() + 10
    while sim.stats()["running"] < count:
        assert time.monotonic() < deadline, sim.stats()
        await asyncio.sleep(0.05)


def test_it_never_sends_more_than_the_capacity_and_answers_everyone(
    gateway: Any, busy: SimulatorProcess, make_key: Callable[..., str]
) -> None:
    key_a, key_b = make_key(name="a"), make_key(name="b")
    busy.stats(reset=True)

    async def both() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        return await asyncio.gather(
            _streams(gateway.url, key_a, 6), _streams(gateway.url, key_b, 2)
        )

    a, b = asyncio.run(both())
    assert [status for status, _ in a + b] == [200] * 8
    assert all(body.endswith(b"data: [DONE]\n\n") for _, body in a + b)
    stats = busy.stats()
    assert stats["peak_running"] <= 2, stats  # vLLM's own queue stayed empty
    assert stats["admitted"] == 8


def test_a_quiet_key_starts_at_once_while_a_busy_keys_requests_wait(
    gateway: Any, busy: SimulatorProcess, make_key: Callable[..., str]
) -> None:
    flood, quiet = make_key(name="flood"), make_key(name="quiet")

    async def scenario() -> tuple[float, float, list[tuple[int, bytes]]]:
        load = asyncio.ensure_future(_streams(gateway.url, flood, 6, tokens=150))
        # The flood holds what it may (capacity 2, headroom 1: one slot) and queues.
        await _running(busy, 1)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=30) as client:
            started = time.monotonic()
            response = await client.post(
                f"{gateway.url}/v1/chat/completions",
                json=chat(stream=False, tokens=4),
                headers={"Authorization": f"Bearer {quiet}"},
            )
            took = time.monotonic() - started
        assert response.status_code == 200, response.text
        return took, float(response.headers[QUEUE]), await load

    took, queued_ms, flooded = asyncio.run(scenario())
    assert queued_ms < 50.0  # it did not wait for a slot
    assert took < 3.0  # 4 tokens, not the flood's 150-token streams ahead of it
    assert [status for status, _ in flooded] == [200] * 6


def test_a_waiting_stream_gets_comments_and_its_wait_in_the_log(
    gateway: Any, busy: SimulatorProcess, make_key: Callable[..., str], settings: Any
) -> None:
    settings.ADMISSION_HEADROOM = 0
    settings.ADMISSION_KEEPALIVE_SECONDS = 60  # the first comment comes at once all the same
    key = make_key(name="streams")

    async def scenario() -> bytes:
        holders = asyncio.ensure_future(_streams(gateway.url, key, 2, tokens=60))
        await _running(busy, 2)
        ((status, body),) = await _streams(gateway.url, key, 1, tokens=4)
        assert status == 200
        await holders
        return body

    body = asyncio.run(scenario())
    assert body.startswith(b": queued"), body[:200]
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_full_queue_is_a_429_with_retry_after(
    gateway: Any, busy: SimulatorProcess, make_key: Callable[..., str], settings: Any
) -> None:
    settings.ADMISSION_HEADROOM = 0
    settings.ADMISSION_MAX_QUEUE = 1
    key = make_key(name="full")

    async def scenario() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            url = f"{gateway.url}/v1/chat/completions"
            running = [
                asyncio.ensure_future(client.post(url, json=chat(stream=False, tokens=80)))
                for _ in range(3)  # two run, one waits
            ]
            await _running(busy, 2)
            await asyncio.sleep(0.2)
            refused = await client.post(url, json=chat(stream=False, tokens=4))
            return [refused, *await asyncio.gather(*running)]

    refused, *answered = asyncio.run(scenario())
    assert refused.status_code == 429
    assert refused.headers["Retry-After"].isdigit()
    assert refused.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in answered] == [200] * 3


def test_a_client_that_leaves_while_queued_never_reaches_vllm(
    gateway: Any, busy: SimulatorProcess, make_key: Callable[..., str], settings: Any
) -> None:
    settings.ADMISSION_HEADROOM = 0
    key = make_key(name="leaver")
    busy.stats(reset=True)

    async def scenario() -> None:
        holders = asyncio.ensure_future(_streams(gateway.url, key, 2, tokens=60))
        await _running(busy, 2)
        async with httpx.AsyncClient(timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=chat(stream=False, tokens=4),
                    headers={"Authorization": f"Bearer {key}"},
                )
        await holders

    asyncio.run(scenario())
    time.sleep(0.3)
    assert busy.stats()["admitted"] == 2  # only the two holders ever reached vLLM


@pytest.mark.parametrize("scheduling", [False, True])
def test_the_gateway_owns_vllms_priority(
    gateway: Any,
    scripted: ScriptedVllm,
    make_key: Callable[..., str],
    settings: Any,
    scheduling: bool,
) -> None:
    settings.VLLM_PRIORITY_SCHEDULING = scheduling
    batch = make_key(name="batch", tier="batch")
    body = {**chat(stream=False), "priority": -100}  # a client trying to jump the queue
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {batch}"},
    )
    assert response.status_code == 200, response.text
    sent = scripted.received[-1]
    if scheduling:
        assert sent["priority"] == 1  # batch's rank: after interactive's 0
    else:
        assert "priority" not in sent


def test_two_workers_together_never_admit_more_than_the_capacity(
    make_key: Callable[..., str],
) -> None:
    key = make_key(name="two-workers", rpm_limit=100_000)
    with SimulatorProcess(max_num_seqs=8, tokens=30, token_delay=0.02) as sim:
        env = {
            "VLLM_BASE_URL": sim.url,
            "BACKEND_CAPACITY": "4",
            "ADMISSION_HEADROOM": "0",
            "ACCESS_LOG": "false",
        }
        with GatewayProcess(workers=2, env=env) as gateway:
            sim.stats(reset=True)
            answers = asyncio.run(_streams(gateway.url, key, 16, tokens=30))
        stats = sim.stats()
    assert [status for status, _ in answers] == [200] * 16
    assert stats["admitted"] == 16
    assert 2 <= stats["peak_running"] <= 4, stats  # each worker admits 2
