"""The admission queue's rules, on one event loop (the socket-level behaviour is in
tests/proxy/test_admission.py): straight through while there is room, fair order between
keys by tokens served per share, tiers with bounded starvation, headroom for quiet keys,
the per-key cap, a bounded queue and wait, and a client that leaves."""

import asyncio
from typing import Any

import pytest

from backends.admission import BackendQueue, Claim, QueueRefused, Ticket

A, B, C = Claim("tt-aaaa"), Claim("tt-bbbb"), Claim("tt-cccc")


@pytest.fixture(autouse=True)
def _admission(settings: Any) -> None:
    settings.ADMISSION_HEADROOM = 0
    settings.ADMISSION_MAX_QUEUE = 100
    settings.ADMISSION_MAX_WAIT_SECONDS = 10.0
    settings.ADMISSION_BATCH_MAX_WAIT_SECONDS = 10.0
    settings.ADMISSION_PROMOTE_SECONDS = 60.0
    settings.KEY_MAX_PARALLEL_REQUESTS = 1000


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Line:
    """Requests queued in order; `order` is the order they were admitted in."""

    def __init__(self, queue: BackendQueue) -> None:
        self.queue = queue
        self.order: list[str] = []
        self.tickets: list[Ticket] = []
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, claim: Claim, label: str, estimate: int = 100) -> asyncio.Task[None]:
        async def one() -> None:
            ticket = await self.queue.admit(claim, estimate=estimate)
            self.order.append(label)
            self.tickets.append(ticket)

        task = asyncio.ensure_future(one())
        self.tasks.append(task)
        return task

    async def release_one(self, tokens: int = 100) -> None:
        ticket = self.tickets.pop(0)
        ticket.settle(tokens)
        ticket.release()
        await _settle()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_it_admits_at_once_while_there_is_room() -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=2)
        first = await queue.admit(A)
        second = await queue.admit(B)
        assert queue.running == 2 and first.waited == 0.0 and second.waited == 0.0
        assert queue.would_wait(C)
        first.release()
        first.release()  # once only
        assert queue.running == 1

    run(scenario())


def test_a_key_with_one_request_goes_before_another_keys_hundred() -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=1)
        line = Line(queue)
        line.add(A, "a0")
        await _settle()
        for n in range(1, 6):
            line.add(A, f"a{n}")
        await _settle()
        line.add(B, "b1")  # arrives last, but A has been served more
        await _settle()
        assert line.order == ["a0"]
        await line.release_one(500)
        assert line.order == ["a0", "b1"]
        # Then A and B alternate by tokens served: B was charged its estimate only.
        await line.release_one()
        assert line.order[-1] == "a1"

    run(scenario())


def test_shares_weigh_the_tokens_served() -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=1)
        heavy, light = Claim("tt-heavy", share=3), Claim("tt-light", share=1)
        line = Line(queue)
        line.add(Claim("tt-block"), "block")
        await _settle()
        for n in range(8):
            line.add(heavy, f"h{n}")
            line.add(light, f"l{n}")
        await _settle()
        for _ in range(8):
            await line.release_one()
        served = line.order[1:]
        # Every request costs the same: the key with 3 shares gets about 3 of every 4.
        heavy_served = sum(label.startswith("h") for label in served)
        assert 5 <= heavy_served <= 7, served

    run(scenario())


def test_a_higher_tier_goes_first_and_a_lower_one_is_promoted_after_its_wait(
    settings: Any,
) -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=1)
        line = Line(queue)
        line.add(A, "hold")
        await _settle()
        line.add(Claim("tt-batch", tier="batch"), "batch")
        await _settle()
        line.add(B, "interactive-1")
        line.add(C, "interactive-2")
        await _settle()
        await line.release_one()
        assert line.order[-1] == "interactive-1"  # though the batch one came first
        settings.ADMISSION_PROMOTE_SECONDS = 0.05
        await asyncio.sleep(0.1)
        await line.release_one()
        assert line.order[-1] == "batch"  # promoted: it waited long enough

    run(scenario())


def test_headroom_keeps_the_last_slot_for_a_key_that_holds_none(settings: Any) -> None:
    settings.ADMISSION_HEADROOM = 1

    async def scenario() -> None:
        queue = BackendQueue("b", capacity=4)
        line = Line(queue)
        for n in range(6):
            line.add(A, f"a{n}")
        await _settle()
        assert len(line.order) == 3 and queue.running == 3  # the fourth is kept free
        await queue.admit(B)  # a quiet key starts at once
        assert queue.running == 4

    run(scenario())


def test_a_key_over_its_parallel_cap_is_refused() -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=10)
        capped = Claim("tt-capped", max_parallel=2)
        await queue.admit(capped)
        await queue.admit(capped)
        with pytest.raises(QueueRefused) as refused:
            await queue.admit(capped)
        assert refused.value.status == 429 and refused.value.code == "too_many_parallel_requests"
        assert refused.value.headers["Retry-After"] == "1"
        await queue.admit(A)  # others are not affected

    run(scenario())


def test_a_full_queue_and_a_long_wait_are_429s(settings: Any) -> None:
    settings.ADMISSION_MAX_QUEUE = 2
    settings.ADMISSION_MAX_WAIT_SECONDS = 0.1

    async def scenario() -> None:
        queue = BackendQueue("b", capacity=1)
        await queue.admit(A)
        waiting = [asyncio.ensure_future(queue.admit(B)) for _ in range(2)]
        await _settle()
        with pytest.raises(QueueRefused) as full:
            await queue.admit(C)
        assert full.value.code == "queue_full" and full.value.headers["Retry-After"]
        for task in waiting:
            with pytest.raises(QueueRefused) as late:
                await task
            assert late.value.code == "queue_timeout"
        assert queue.waiting() == 0 and queue.running == 1

    run(scenario())


def test_a_client_that_leaves_while_queued_is_removed() -> None:
    async def scenario() -> None:
        queue = BackendQueue("b", capacity=1)
        held = await queue.admit(A)
        leaving = asyncio.ensure_future(queue.admit(B))
        staying = asyncio.ensure_future(queue.admit(C))
        await _settle()
        assert queue.waiting() == 2
        leaving.cancel()
        await _settle()
        assert queue.waiting() == 1
        held.release()
        ticket = await staying
        assert queue.running == 1 and ticket.claim is C and queue.waiting() == 0

    run(scenario())


def test_a_smaller_capacity_from_vllms_gauges_and_growing_back() -> None:
    queue = BackendQueue("b", capacity=8)
    queue.observe(8, saturated_at=3)  # requests wait in vLLM at 3 running
    assert queue.capacity == 3
    queue.observe(8, saturated_at=None)
    assert 3 < queue.capacity <= 8
    for _ in range(10):
        queue.observe(8, saturated_at=None)
    assert queue.capacity == 8
