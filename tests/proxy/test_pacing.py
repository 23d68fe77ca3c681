"""Request starts paced per turn of the event loop: a crowd starts a few per turn, in
arrival order, with the loop's other work (relaying chunks) running between; over real
sockets, a crowd through the gateway is answered whole."""

import asyncio
import threading
from typing import Any

import httpx
import pytest

from proxy import pacing

pytestmark = pytest.mark.django_db(transaction=True)


async def crowd(size: int) -> tuple[list[tuple[int, int]], int]:
    """`size` requests arriving in one turn; returns (turn started, arrival) per start in
    start order, and the turns the loop made meanwhile."""
    turns = 0
    running = True
    started: list[tuple[int, int]] = []

    def tick() -> None:  # the loop's other work: one callback per turn
        nonlocal turns
        turns += 1
        if running:
            asyncio.get_running_loop().call_soon(tick)

    async def request(arrival: int) -> None:
        await pacing.wait_turn()
        started.append((turns, arrival))

    asyncio.get_running_loop().call_soon(tick)
    await asyncio.sleep(0)
    await asyncio.gather(*(request(n) for n in range(size)))
    running = False
    return started, turns


def test_a_crowd_starts_a_few_per_turn_in_arrival_order(settings):
    settings.REQUEST_STARTS_PER_TURN = 3
    started, turns = asyncio.run(crowd(20))
    assert [arrival for _, arrival in started] == list(range(20))
    per_turn: dict[int, int] = {}
    for turn, _ in started:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) <= 3
    assert len(per_turn) >= 7  # 20 starts over at least ceil(20 / 3) turns
    assert turns >= 7


def test_without_pacing_a_crowd_starts_in_one_turn(settings):
    settings.REQUEST_STARTS_PER_TURN = 0
    started, _ = asyncio.run(crowd(20))
    assert len({turn for turn, _ in started}) == 1


def test_a_request_cancelled_while_waiting_leaves_the_line(settings):
    settings.REQUEST_STARTS_PER_TURN = 1

    async def run() -> list[str]:
        done: list[str] = []

        async def request(name: str) -> None:
            await pacing.wait_turn()
            done.append(name)

        tasks = {name: asyncio.create_task(request(name)) for name in "abcd"}
        await asyncio.sleep(0)  # all four wait or started
        tasks["b"].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert pacing.pacer().waiting == 0
        return done

    assert asyncio.run(run()) == ["a", "c", "d"]


def test_a_crowd_through_the_gateway_is_answered_whole(gateway, simulator, make_key, settings):
    simulator()
    settings.REQUEST_STARTS_PER_TURN = 1
    headers = {"Authorization": f"Bearer {make_key()}"}
    body: dict[str, Any] = {
        "model": "demo-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    barrier = threading.Barrier(40)
    results: list[tuple[int, bool]] = []

    def one() -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            barrier.wait()
            with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                text = "".join(r.iter_text())
            results.append((r.status_code, text.rstrip().endswith("data: [DONE]")))

    threads = [threading.Thread(target=one) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [(200, True)] * 40
