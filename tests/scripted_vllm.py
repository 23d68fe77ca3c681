"""A vLLM stand-in for property tests over real sockets: an ASGI app (serve it with
tests.conftest.ThreadedServer) that records every body it is sent and answers a stream
with the bytes a test scripted, one write per chunk with a pause between, so the
gateway reads them cut about where the test says. Not a simulator: it answers anything
with 200, so what a test sees is the gateway's doing."""

import asyncio
import json
from typing import Any

import orjson

Scope = dict[str, Any]


class ScriptedVllm:
    def __init__(self, model: str = "demo-model") -> None:
        self.model = model
        self.received: list[Any] = []  # the JSON of each POST, in order, integers exact
        self.stream_chunks: list[bytes] = [b"data: [DONE]\n\n"]  # the next streams' bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = await read_body(receive)
        if scope["method"] == "GET":
            if scope["path"] == "/v1/models":
                cards = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
                await _answer(send, 200, orjson.dumps(cards))
            else:
                await _answer(send, 200 if scope["path"] == "/health" else 404, b"{}")
            return
        data = json.loads(body)  # the stdlib's: integers beyond 64 bits stay exact
        self.received.append(data)
        if not (isinstance(data, dict) and data.get("stream") is True):
            usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            await _answer(send, 200, orjson.dumps({"id": "x", "choices": [], "usage": usage}))
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in self.stream_chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.002)  # its own TCP segment, most of the time
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _answer(send: Any, status: int, content: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
