"""The client's Gateway against a scripted HTTP server on a real socket: when a chat
request is made again (a 503 before any of the reply, waiting Retry-After within the
policy's bound) and when the error stands (a 503 once the reply has begun, a 429, an
unreachable gateway), that closing the stream while it waits sends nothing more, and how
long a reply waited in the gateway's queue (its header, or a held stream's comments)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from talktuah_chat.gateway import (
    Attempt,
    Delta,
    Figures,
    Gateway,
    GatewayError,
    Queued,
    Retrying,
    RetryPolicy,
)
from tests.net import free_port

SWITCHING = json.dumps({"error": {"message": "switching to org/b", "code": "model_switching"}})


def refusal(status: str, body: str, retry_after: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Retry-After: {retry_after}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n{body}"
    ).encode()


def stream(*events: dict[str, Any], headers: str = "") -> bytes:
    lines = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
    return (
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
        f"{headers}\r\n{lines}data: [DONE]\n\n"
    ).encode()


def delta(text: str) -> dict[str, Any]:
    return {"model": "org/b", "choices": [{"delta": {"content": text}}]}


class ScriptedGateway:
    """Answers each connection's request with the next scripted response, then closes;
    keeps the JSON bodies it was sent. A response given as a list is sent piece by
    piece, a number in it being a pause (seconds)."""

    def __init__(self, *responses: bytes | list[bytes | float]) -> None:
        self.responses = list(responses)
        self.bodies: list[dict[str, Any]] = []

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        self.bodies.append(json.loads(await reader.readexactly(length)))
        response = self.responses.pop(0)
        for piece in response if isinstance(response, list) else [response]:
            if isinstance(piece, bytes):
                writer.write(piece)
                await writer.drain()
            else:
                await asyncio.sleep(piece)
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def serving(script: ScriptedGateway) -> AsyncIterator[str]:
    server = await asyncio.start_server(script.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def chat(url: str, request: Any, policy: RetryPolicy) -> tuple[list[Any], Exception | None]:
    """Every event `Gateway.chat` yields, and the error it raised at the end if any."""
    gateway = Gateway(url, "tt-test", retry=policy)
    events: list[Any] = []
    try:
        async for event in gateway.chat(request, Figures()):
            events.append(event)
    except GatewayError as error:
        return events, error
    finally:
        await gateway.aclose()
    return events, None


def test_the_policy_waits_retry_after_else_its_default_never_more_than_its_bound():
    policy = RetryPolicy(default_seconds=3, max_seconds=10)
    assert policy.delay(GatewayError("x", status=503, retry_after=2), replied=False) == 2
    assert policy.delay(GatewayError("x", status=503), replied=False) == 3
    assert policy.delay(GatewayError("x", status=503, retry_after=60), replied=False) == 10
    assert policy.delay(GatewayError("x", status=503, retry_after=2), replied=True) is None
    for status in (0, 429, 502, 504):
        assert policy.delay(GatewayError("x", status=status, retry_after=2), replied=False) is None


def test_it_retries_a_503_that_came_before_the_reply():
    script = ScriptedGateway(
        refusal("503 Service Unavailable", SWITCHING, retry_after=30),
        stream(delta("Hello"), delta(" there")),
    )
    models = iter(["org/a", "org/b"])

    async def main() -> tuple[list[Any], Exception | None, float]:
        async with serving(script) as url:
            started = time.monotonic()
            # Retry-After says 30 s; the policy's bound, 1 s, wins.
            events, error = await chat(
                url, lambda: {"model": next(models)}, RetryPolicy(max_seconds=1)
            )
            return events, error, time.monotonic() - started

    events, error, elapsed = asyncio.run(main())
    assert error is None
    assert [type(event) for event in events] == [Attempt, Retrying, Attempt, Delta, Delta]
    assert [events[0].number, events[2].number] == [1, 2]
    waiting = events[1]
    assert waiting.seconds == 1
    assert (waiting.error.status, waiting.error.message) == (503, "switching to org/b")
    assert "".join(event.text for event in events[3:]) == "Hello there"
    assert elapsed >= 1
    # The body is asked for again: the retry sends what the conversation holds by then.
    assert [body["model"] for body in script.bodies] == ["org/a", "org/b"]
    assert all(body["stream"] is True for body in script.bodies)


def test_it_does_not_retry_a_503_once_the_reply_has_begun():
    broken = {"error": {"message": "the model went away", "type": "switching", "code": 503}}
    script = ScriptedGateway(stream(delta("Hel"), broken))

    async def main() -> tuple[list[Any], Exception | None]:
        async with serving(script) as url:
            return await chat(url, lambda: {}, RetryPolicy(max_seconds=1))

    events, error = asyncio.run(main())
    assert [type(event) for event in events] == [Attempt, Delta]
    assert isinstance(error, GatewayError) and error.status == 503
    assert len(script.bodies) == 1


def test_it_gives_up_at_once_on_a_rate_limit():
    limited = json.dumps({"error": {"message": "Rate limit reached.", "code": "rate_limited"}})
    script = ScriptedGateway(refusal("429 Too Many Requests", limited, retry_after=7))

    async def main() -> tuple[list[Any], Exception | None]:
        async with serving(script) as url:
            return await chat(url, lambda: {}, RetryPolicy(max_seconds=1))

    events, error = asyncio.run(main())
    assert [type(event) for event in events] == [Attempt]
    assert isinstance(error, GatewayError)
    assert (error.status, error.retry_after, error.code) == (429, 7, "rate_limited")
    assert len(script.bodies) == 1


def test_it_gives_up_at_once_when_the_gateway_cannot_be_reached():
    url = f"http://127.0.0.1:{free_port()}"
    events, error = asyncio.run(chat(url, lambda: {}, RetryPolicy(max_seconds=1)))
    assert [type(event) for event in events] == [Attempt]
    assert isinstance(error, GatewayError) and error.status == 0
    assert "cannot reach" in error.message


def test_closing_the_stream_while_it_waits_sends_nothing_more():
    script = ScriptedGateway(
        refusal("503 Service Unavailable", SWITCHING, retry_after=1), stream(delta("late"))
    )

    async def main() -> None:
        async with serving(script) as url:
            gateway = Gateway(url, "tt-test", retry=RetryPolicy())
            try:
                async with aclosing(gateway.chat(lambda: {}, Figures())) as events:
                    async for event in events:
                        if isinstance(event, Retrying):
                            break  # as Esc does, by cancelling the worker that reads
                await asyncio.sleep(1.5)  # past the 1 s the gateway asked to wait
            finally:
                await gateway.aclose()

    asyncio.run(main())
    assert len(script.bodies) == 1


def test_a_retry_counts_down_once_a_second():
    script = ScriptedGateway(
        refusal("503 Service Unavailable", SWITCHING, retry_after=2), stream(delta("ok"))
    )

    async def main() -> list[tuple[int, float]]:
        ticks: list[tuple[int, float]] = []
        async with serving(script) as url:
            gateway = Gateway(url, "tt-test")
            try:
                async for event in gateway.chat(lambda: {}, Figures()):
                    if isinstance(event, Retrying):
                        ticks.append((event.seconds, time.monotonic()))
            finally:
                await gateway.aclose()
        return ticks

    ticks = asyncio.run(main())
    assert [left for left, _ in ticks] == [2, 1]
    gap = ticks[1][1] - ticks[0][1]
    assert 0.9 <= gap < 2, gap


def test_a_reply_that_waited_for_a_slot_says_how_long():
    queued = stream(delta("ok"), headers="X-TalkTuah-Queue-Ms: 1530.2\r\n")
    at_once = stream(delta("ok"), headers="X-TalkTuah-Queue-Ms: 0.0\r\n")
    script = ScriptedGateway(queued, at_once)

    async def main() -> list[Figures]:
        async with serving(script) as url:
            gateway = Gateway(url, "tt-test")
            try:
                found = []
                for _ in range(2):
                    figures = Figures()
                    async for _event in gateway.chat(lambda: {}, figures):
                        pass
                    found.append(figures)
                return found
            finally:
                await gateway.aclose()

    waited, prompt = asyncio.run(main())
    assert waited.queued_seconds == 1.5302
    assert "queued 1.5 s" in waited.line()
    assert prompt.queued_seconds is None
    assert "queued" not in prompt.line()


def test_a_stream_held_in_the_queue_is_reported_and_timed():
    # The gateway answers at once and holds the stream: `: queued` comments until a
    # slot is free (the header, sent first, cannot say how long: it says 0), then data.
    head, body = stream(delta("Hi"), headers="X-TalkTuah-Queue-Ms: 0\r\n").split(b"\r\n\r\n")
    comment = b": queued: the backend is full, waiting for a slot\n\n"
    script = ScriptedGateway(
        [head + b"\r\n\r\n", 0.3, comment, 0.3, comment, 0.3, b": loading\n\n", body]
    )

    async def main() -> tuple[list[Any], Figures]:
        figures = Figures()
        async with serving(script) as url:
            gateway = Gateway(url, "tt-test")
            try:
                return [event async for event in gateway.chat(lambda: {}, figures)], figures
            finally:
                await gateway.aclose()

    events, figures = asyncio.run(main())
    assert [type(event).__name__ for event in events] == [
        "Attempt",
        "Queued",
        "Queued",
        "Comment",  # another comment is not the queue's
        "Delta",
    ]
    held = [event.seconds for event in events if isinstance(event, Queued)]
    assert 0.25 <= held[0] < held[1] < 1.5, held
    assert figures.queued_seconds is not None and 0.85 <= figures.queued_seconds < 2.0
    assert f"queued {figures.queued_seconds:.1f} s" in figures.line()
