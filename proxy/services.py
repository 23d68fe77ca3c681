"""The proxy workflow: validate a request body, apply the key's limits, forward it to
vLLM and relay the answer (streamed or not), recording usage on the way.

`forward` takes the request and returns the response itself, unlike the other services:
it is the hot path. It reads the body once, builds the streaming response around the
upstream stream without copying it, and counts every answer, refusals included, in one
`Call` (metrics, usage, access log)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from modelmgr.auth import Principal
from modelmgr.models import ModelSwitch, SwitchPhase
from modelmgr.selectors import active_switch, switch_get, usage_rows
from modelmgr.services import model_auto_load
from plumbing import vllm
from plumbing.db import DATABASE_AWAY, run_sync
from plumbing.errors import (
    Forbidden,
    ModelNotServed,
    TalkTuahError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
    normalise_upstream_error,
    sse_error_event,
)
from proxy import usage
from proxy.bodies import Endpoint, encode_body, parse_body, wants_stream
from proxy.metrics import (
    ACTIVE_STREAMS,
    BACKEND_REQUESTS,
    COMPLETION_TOKENS,
    OVERHEAD,
    PROMPT_TOKENS,
    RATE_LIMITED,
    REQUESTS,
    RETRIES,
    TIME_TO_FIRST_TOKEN,
    UPSTREAM_LATENCY,
    UPSTREAM_UP,
)
from proxy.pool import pool
from proxy.ratelimit import add_tokens, check_request_rate, check_token_rate
from proxy.shutdown import register_stream, unregister_stream
from proxy.sse import EventRelay, usage_of

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


OVERHEAD_HEADER = "X-TalkTuah-Overhead-Ms"
BACKEND_HEADER = "X-TalkTuah-Backend"  # which backend answered (names are admin-chosen)
access_log = logging.getLogger("talktuah.access")


async def default_model() -> str:
    several = len(pool.replicas) > 1
    names = pool.served_models() if several else await vllm.served_model_names()
    if not names:
        raise UpstreamUnavailable("vLLM serves no model right now.", headers={"Retry-After": "5"})
    return names[0]


@dataclass(slots=True)
class Call:
    """One proxied request, as metrics, usage and the access log see it."""

    principal: Principal
    endpoint: Endpoint
    started: float
    model: str = ""
    stream: bool = False
    status: int = 0
    accepted: bool = False  # vLLM took the model (so it is a bounded label value)
    backend: str = "none"  # the backend that answered (a configured name: bounded)
    attempts: int = 0
    upstream_started: float = 0.0
    upstream_seconds: float = 0.0
    overhead_seconds: float = 0.0
    ttft_seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: bool = False


def _started_at(request: HttpRequest) -> float:
    # Stamped by asgi.py when the request reached the process.
    scope = getattr(request, "scope", None) or {}
    return float(scope.get("talktuah.started") or time.perf_counter())


async def forward(
    *, request: HttpRequest, principal: Principal, endpoint: Endpoint
) -> HttpResponseBase:
    """Forward one OpenAI-style request to vLLM; the body passes through unchanged but
    for a missing model and, on streams, `stream_options.include_usage`."""
    call = Call(principal=principal, endpoint=endpoint, started=_started_at(request))
    try:
        return await _forward(request, call)
    except TalkTuahError as exc:
        call.status, call.error = exc.status, True
        await finish(call)
        raise


async def _forward(request: HttpRequest, call: Call) -> HttpResponseBase:
    endpoint, principal = call.endpoint, call.principal
    body = parse_body(
        content_type=request.content_type or "", raw=lambda: request.body, endpoint=endpoint
    )
    await pool.ready()
    changed = False
    model = body.get("model")
    if not model:
        model = body["model"] = await default_model()
        changed = True
    call.model = model
    if not principal.may_use(model):
        raise Forbidden(
            f"This API key may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )
    await check_request_rate(principal)
    await check_token_rate(principal)

    stream = call.stream = wants_stream(body, endpoint)
    client_wants_usage = True
    if stream:
        # Ask vLLM for the usage chunk so usage can be recorded; strip it again below
        # when the client did not ask for it.
        options = body.get("stream_options")
        if options is None:  # absent or null (parse_body let only an object through else)
            options = body["stream_options"] = {}
        client_wants_usage = bool(options.get("include_usage"))
        if not client_wants_usage or body.get("stream") is not True:
            options["include_usage"] = True
            body["stream"] = True
            changed = True
    content = encode_body(body) if changed else request.body

    call.upstream_started = time.perf_counter()
    send = Sender(
        endpoint.path,
        content,
        model,
        _session_of(request, body),
        request.headers.get("x-request-id"),
    )
    try:
        upstream = await _open_through_switch(send, stream=stream)
    except UpstreamError as exc:
        call.attempts = exc.attempts
        raise
    except SwitchPending as pending:
        return _stream_after_switch(pending, send, call, strip_usage=not client_wants_usage)
    call.backend = upstream.backend
    call.attempts = upstream.attempts
    call.status = upstream.status
    call.accepted = upstream.status < 400

    if upstream.status >= 400 or not (
        stream and upstream.content_type.startswith("text/event-stream")
    ):
        return await _whole_response(upstream, call)
    # The header goes before the body: the gateway's own time until now, that is before
    # vLLM was asked and since its headers came back.
    headers_at = time.perf_counter()
    response = StreamingHttpResponse(
        relay_stream(upstream, call, strip_usage=not client_wants_usage),
        content_type=upstream.content_type,
        headers=SSE_HEADERS,
    )
    call.overhead_seconds = (call.upstream_started - call.started) + (
        time.perf_counter() - headers_at
    )
    response[OVERHEAD_HEADER] = _ms(call.overhead_seconds)
    response[BACKEND_HEADER] = call.backend
    return response


def _session_of(request: HttpRequest, body: dict[str, Any]) -> str | None:
    """What keeps a conversation on one replica: X-Session-Id, else the `user` field."""
    session = request.headers.get("x-session-id") or body.get("user")
    return session if isinstance(session, str) and session else None


class SwitchPending(Exception):
    """A stream must wait for a model switch: answer at once and wait inside the stream
    (SSE comments keep clients and proxies from timing out)."""

    def __init__(self, switch: ModelSwitch) -> None:
        super().__init__(switch.to_model)
        self.switch = switch


@dataclass(slots=True)
class Sender:
    """Sends the request body to the best backend for its model."""

    path: str
    content: bytes
    model: str
    session: str | None
    request_id: str | None

    async def __call__(self) -> vllm.UpstreamResponse:
        return await pool.open(
            self.path,
            content=self.content,
            model=self.model,
            session=self.session,
            request_id=self.request_id,
        )


async def _open_through_switch(send: Sender, *, stream: bool) -> vllm.UpstreamResponse:
    """Open the upstream request on the best backend for the model. While a switch (to
    that model, or any when vLLM is down) runs, wait for it, bounded, instead of failing;
    with MODEL_AUTO_LOAD a model downloaded but served nowhere is switched to first. A
    stream raises SwitchPending instead of waiting here."""
    try:
        upstream = await send()
    except UpstreamTimeout:
        raise
    except ModelNotServed:
        switch = await _switch_to(send.model)
        if switch is None:
            raise
    except UpstreamError:
        try:
            switch = await run_sync(active_switch)
        except DATABASE_AWAY:
            switch = None  # no database, no switch to wait for: vLLM's error stands
        if switch is None:
            raise
    else:
        if upstream.status != 404:
            return upstream
        switch = await _switch_to(send.model)
        if switch is None:
            return upstream
        await upstream.aclose()
    if stream:
        raise SwitchPending(switch)
    await _wait_for(switch)
    vllm.forget_served_models()
    await pool.refresh()
    return await send()


async def _switch_to(model: str) -> ModelSwitch | None:
    """The switch bringing `model`: one running, else (MODEL_AUTO_LOAD) one queued now.
    Only reached when no backend serves the model, so the hot path never queries the
    database."""
    switch = await run_sync(active_switch)
    if switch is not None and switch.to_model == model:
        return switch
    if not settings.MODEL_AUTO_LOAD:
        return None
    quiet_first = sorted(pool.replicas.values(), key=lambda replica: replica.in_flight)
    return await run_sync(
        model_auto_load, model=model, preferred=[replica.name for replica in quiet_first]
    )


async def _wait_for(switch: ModelSwitch) -> None:
    """Wait until the switch ends; 503 with Retry-After once SWITCH_WAIT_SECONDS passed."""
    async for _phase in _switch_phases(switch):
        pass


async def _switch_phases(switch: ModelSwitch) -> AsyncIterator[str]:
    """The switch's phase about every SWITCH_KEEPALIVE_SECONDS while it runs; raises
    503 (Retry-After) once SWITCH_WAIT_SECONDS passed, and UpstreamUnavailable when the
    switch failed."""
    deadline = time.monotonic() + settings.SWITCH_WAIT_SECONDS
    told = 0.0
    current: ModelSwitch | None = switch
    while current is not None and current.is_active:
        now = time.monotonic()
        if now >= deadline:
            raise UpstreamUnavailable(
                f"vLLM is switching to '{switch.to_model}' ({current.phase}); retry shortly.",
                code="model_switching",
                headers={"Retry-After": "10"},
            )
        if now - told >= settings.SWITCH_KEEPALIVE_SECONDS:
            told = now
            yield current.phase
        await asyncio.sleep(0.5)
        current = await run_sync(switch_get, switch.pk)
    if current is not None and current.phase == SwitchPhase.FAILED:
        raise UpstreamUnavailable(
            f"Loading '{switch.to_model}' failed: {current.error or 'no reason given'}",
            code="model_load_failed",
            headers={"Retry-After": "30"},
        )


def _stream_after_switch(
    pending: SwitchPending, send: Sender, call: Call, *, strip_usage: bool
) -> StreamingHttpResponse:
    """A stream that waits for a switch: SSE comments while it runs, then the stream."""

    async def events() -> AsyncIterator[bytes]:
        try:
            async for phase in _switch_phases(pending.switch):
                yield f": loading {pending.switch.to_model} ({phase})\n\n".encode()
            vllm.forget_served_models()
            await pool.refresh()
            upstream = await send()
        except TalkTuahError as exc:
            call.status, call.error = exc.status, True
            await finish(call)
            yield sse_error_event(exc.message, str(exc.code), exc.status)
            return
        call.backend, call.attempts = upstream.backend, upstream.attempts
        call.status, call.accepted = upstream.status, upstream.status < 400
        if upstream.status >= 400:
            try:
                content = await upstream.read()
            finally:
                await upstream.aclose()
            call.error = True
            await finish(call)
            error = orjson.loads(normalise_upstream_error(upstream.status, content))["error"]
            yield sse_error_event(error["message"], error["type"], upstream.status)
            return
        async for chunk in relay_stream(upstream, call, strip_usage=strip_usage):
            yield chunk

    response = StreamingHttpResponse(
        events(), content_type="text/event-stream", headers=SSE_HEADERS
    )
    call.status = 200
    return response


async def _whole_response(upstream: vllm.UpstreamResponse, call: Call) -> HttpResponse:
    # A client that leaves while this waits cancels the task: the finally closes the
    # upstream connection and vLLM aborts the generation.
    try:
        content = await upstream.read()
    finally:
        await upstream.aclose()
    done = time.perf_counter()
    call.upstream_seconds = done - call.upstream_started
    if upstream.status >= 400:
        call.error = True
        response = HttpResponse(
            normalise_upstream_error(upstream.status, content),
            status=upstream.status,
            content_type="application/json",
        )
    else:
        call.prompt_tokens, call.completion_tokens = usage_of(content)
        response = HttpResponse(content, status=upstream.status, content_type=upstream.content_type)
    call.overhead_seconds = (done - call.started) - call.upstream_seconds
    await finish(call)
    response[OVERHEAD_HEADER] = _ms(time.perf_counter() - call.started - call.upstream_seconds)
    response[BACKEND_HEADER] = call.backend
    return response


async def relay_stream(
    upstream: vllm.UpstreamResponse, call: Call, *, strip_usage: bool
) -> AsyncIterator[bytes]:
    """Relay vLLM's SSE bytes as they arrive.

    Events are passed on whole (a partial event waits for its end, never longer); the
    usage chunk is read, and dropped when the client did not ask for it. A client that
    disconnects cancels this generator: the finally closes vLLM's connection at once.
    """
    relay = EventRelay(strip_usage=strip_usage)
    shutting_down = False

    async def end_for_shutdown() -> None:
        # Called at the end of the shutdown grace period: closing the upstream response
        # wakes the loop below, which then ends the stream with an error event.
        nonlocal shutting_down
        shutting_down = True
        await upstream.aclose()

    register_stream(end_for_shutdown)
    ACTIVE_STREAMS.inc()
    try:
        try:
            async for chunk in upstream.iter_raw():
                events = relay.feed(chunk)
                if relay.usage is not None:
                    call.prompt_tokens, call.completion_tokens = relay.usage
                if events:
                    if call.ttft_seconds is None:
                        call.ttft_seconds = time.perf_counter() - call.started
                    yield events
        except UpstreamError as exc:
            if not shutting_down:
                call.error = True
                kind = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
                yield sse_error_event(str(exc), kind, exc.status)
                return
        if shutting_down and not relay.finished:
            call.error = True
            yield sse_error_event(
                "The gateway is shutting down; send the request again.", "gateway_shutdown", 503
            )
        elif not relay.finished:
            if relay.pending:
                yield relay.pending
            call.error = True
            yield sse_error_event(
                "vLLM closed the stream before it finished.", "upstream_error", 502
            )
    finally:
        unregister_stream(end_for_shutdown)
        ACTIVE_STREAMS.dec()
        call.upstream_seconds = time.perf_counter() - call.upstream_started
        await upstream.aclose()
        await finish(call)


async def finish(call: Call) -> None:
    """Record a finished request: usage, token budget, metrics, one access-log line."""
    known = call.accepted or call.model in pool.served_models()
    model_label = vllm.model_label(call.model, accepted=known) if call.model else "none"
    if call.model:
        # Usage rows are labelled like the metrics: a model name a client made up (any
        # length, NUL bytes, ...) would be an unbounded row key, and a row the database
        # refuses fails the whole batch of every key's usage, write after write.
        usage.record(
            call.principal,
            model_label,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            error=call.error,
        )
    endpoint = call.endpoint.name
    key = call.principal.name
    REQUESTS.labels(key, model_label, endpoint, str(call.status)).inc()
    BACKEND_REQUESTS.labels(call.backend, str(call.status)).inc()
    if call.attempts > 1:
        RETRIES.inc(call.attempts - 1)
    if call.status == 429:
        RATE_LIMITED.labels(key, "rate").inc()
    if call.upstream_started:
        UPSTREAM_LATENCY.labels(endpoint, call.backend).observe(call.upstream_seconds)
        OVERHEAD.labels(endpoint).observe(max(call.overhead_seconds, 0.0))
        UPSTREAM_UP.set(0 if call.status in (502, 504) else 1)
    if call.ttft_seconds is not None:
        TIME_TO_FIRST_TOKEN.labels(model_label).observe(call.ttft_seconds)
    if call.prompt_tokens or call.completion_tokens:
        PROMPT_TOKENS.labels(key, model_label).inc(call.prompt_tokens)
        COMPLETION_TOKENS.labels(key, model_label).inc(call.completion_tokens)
        await add_tokens(call.principal, call.prompt_tokens + call.completion_tokens)
    # Never the key, never the prompt or the completion.
    access_log.info(
        "%s",
        orjson.dumps(
            {
                "key": call.principal.prefix,
                "key_name": key,
                "model": call.model or None,
                "backend": call.backend,
                "endpoint": endpoint,
                "stream": call.stream,
                "status": call.status,
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "ttft_ms": _ms(call.ttft_seconds) if call.ttft_seconds is not None else None,
                "duration_ms": _ms(time.perf_counter() - call.started),
                "overhead_ms": _ms(call.overhead_seconds),
                "attempts": call.attempts,
            }
        ).decode(),
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def list_models(principal: Principal) -> dict[str, Any]:
    """The models the backends serve (vLLM's own cards; with several backends their
    union), filtered by the key's allowed models."""
    await pool.ready()
    if len(pool.replicas) > 1:
        cards = [card for card in pool.served_cards() if principal.may_use(str(card["id"]))]
        return {"object": "list", "data": cards}
    status, data = await vllm.get_json("/v1/models")
    if status >= 400 or not isinstance(data, dict):
        raise UpstreamRefused.from_answer(status if status >= 400 else 502, orjson.dumps(data))
    data["data"] = [card for card in data.get("data", []) if principal.may_use(str(card.get("id")))]
    return data


async def key_usage(principal: Principal, *, days: int) -> dict[str, Any]:
    """A key's own usage per model and day, newest first, with totals."""
    rows = await run_sync(usage_rows, key_prefix=principal.prefix, days=days)
    totals = {
        field: sum(row[field] for row in rows)
        for field in ("requests", "errors", "prompt_tokens", "completion_tokens")
    }
    return {
        "key": principal.prefix,
        "name": principal.name,
        "days": days,
        "totals": totals,
        "usage": rows,
    }
