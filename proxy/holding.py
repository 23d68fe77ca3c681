"""Holding a request through a model switch: while a switch (to the request's model, or
any when vLLM is down) runs, the request waits for it, bounded, instead of failing; with
MODEL_AUTO_LOAD a model downloaded but served nowhere is switched to first. A stream is
answered at once and waits inside the stream (SSE comments keep clients and proxies from
timing out), then relayed."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.http import StreamingHttpResponse

from backends.admission import Claim
from backends.pool import pool
from modelmgr.models import ModelSwitch, SwitchPhase
from modelmgr.selectors import active_switch, active_switches, switch_get
from modelmgr.services import model_auto_load
from plumbing import vllm
from plumbing.db import DATABASE_AWAY, run_sync
from plumbing.errors import (
    ModelNotServed,
    TalkTuahError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    normalise_upstream_error,
    sse_error_event,
)
from proxy.accounting import Call, finish, opened_by
from proxy.relay import SSE_HEADERS, relay_stream

log = logging.getLogger("talktuah.holding")


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
    claim: Claim | None = None  # its place in a full backend's queue (admission.py)
    estimate: int = 0  # tokens it may cost, charged to the key until its usage is known
    prioritized: bytes | None = None  # the body for backends that run priority scheduling
    content_type: str = vllm.JSON
    backend: str | None = None  # the one backend to ask (it holds what the request names)
    method: str = "POST"

    async def __call__(self) -> vllm.UpstreamResponse:
        return await pool.open(
            self.path,
            content=self.content,
            model=self.model,
            session=self.session,
            request_id=self.request_id,
            claim=self.claim,
            estimate=self.estimate,
            prioritized=self.prioritized,
            method=self.method,
            content_type=self.content_type,
            backend=self.backend,
        )


async def open_through_switch(send: Sender, *, stream: bool) -> vllm.UpstreamResponse:
    """Open the upstream request on the best backend for the model. While a switch runs
    that brings the model, or that restarts a backend serving it (it is down meanwhile),
    wait for it, bounded, instead of failing; with no such switch a dead backend's 503
    comes at once (the pool fails fast). With MODEL_AUTO_LOAD a model downloaded but
    served nowhere is switched to first. A stream raises SwitchPending instead of
    waiting here."""
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
            switch = _holding_for(send.model, await run_sync(active_switches))
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
    await pool.refresh()
    return await send()


def _holding_for(model: str, switches: list[ModelSwitch]) -> ModelSwitch | None:
    """The running switch a request for `model` may wait for: one bringing the model,
    else one on a backend that serves it (or whose models are not known yet)."""
    serving = {r.name for r in pool.replicas.values() if r.models is None or r.serves(model)}
    return next((s for s in switches if s.to_model == model), None) or next(
        (s for s in switches if s.backend in serving), None
    )


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


def stream_after_switch(
    pending: SwitchPending, send: Sender, call: Call, *, strip_usage: bool
) -> StreamingHttpResponse:
    """A stream that waits for a switch: SSE comments while it runs, then the stream."""

    async def opened() -> AsyncIterator[bytes | vllm.UpstreamResponse]:
        async for phase in _switch_phases(pending.switch):
            yield f": loading {pending.switch.to_model} ({phase})\n\n".encode()
        await pool.refresh()
        yield await send()

    return _stream_once_opened(opened(), call, strip_usage=strip_usage)


def stream_when_admitted(send: Sender, call: Call, *, strip_usage: bool) -> StreamingHttpResponse:
    """A stream that waits for a slot on a full backend: answered at once, an SSE
    comment every ADMISSION_KEEPALIVE_SECONDS while it waits (proxies do not cut it),
    then the stream. A client that leaves cancels the wait: nothing reaches vLLM."""

    async def opened() -> AsyncIterator[bytes | vllm.UpstreamResponse]:
        task = asyncio.ensure_future(send())
        try:
            # At once (a client can say it is queued), then every keep-alive interval.
            wait = 0.0
            while True:
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    break
                yield b": queued: the backend is full, waiting for a slot\n\n"
                wait = settings.ADMISSION_KEEPALIVE_SECONDS
        finally:
            if not task.done():
                task.cancel()  # the client left: out of the queue
                with contextlib.suppress(BaseException):
                    await task
        yield task.result()

    return _stream_once_opened(opened(), call, strip_usage=strip_usage)


def _stream_once_opened(
    opened: AsyncIterator[bytes | vllm.UpstreamResponse], call: Call, *, strip_usage: bool
) -> StreamingHttpResponse:
    """A stream answered before vLLM was asked: `opened` yields keep-alive comments, then
    the upstream response, which is relayed; an error on the way is an SSE error event."""

    async def events() -> AsyncIterator[bytes]:
        upstream: vllm.UpstreamResponse | None = None
        try:
            async for step in opened:
                if isinstance(step, bytes):
                    yield step
                else:
                    upstream = step
        except TalkTuahError as exc:
            call.status, call.error = exc.status, True
            await finish(call)
            message = exc.message
            if isinstance(exc, UpstreamError):
                if exc.detail:
                    log.warning("stream %s failed: %s", call.request_id, exc.detail)
                message = f"{message} (request {call.request_id})"
            yield sse_error_event(message, str(exc.code), exc.status, call.endpoint.dialect)
            return
        assert upstream is not None
        opened_by(call, upstream)
        if upstream.status >= 400:
            try:
                content = await upstream.read()
            finally:
                await upstream.aclose()
            call.error = True
            await finish(call)
            dialect = call.endpoint.dialect
            body = orjson.loads(normalise_upstream_error(upstream.status, content, dialect))
            error = body["error"]
            yield sse_error_event(error["message"], error["type"], upstream.status, dialect)
            return
        async for chunk in relay_stream(upstream, call, strip_usage=strip_usage):
            yield chunk

    response = StreamingHttpResponse(
        events(), content_type="text/event-stream", headers=SSE_HEADERS
    )
    call.status = 200
    return response
