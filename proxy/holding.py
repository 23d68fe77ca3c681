"""Holding a request through a model switch: while a switch (to the request's model, or
any when vLLM is down) runs, the request waits for it, bounded, instead of failing; with
MODEL_AUTO_LOAD a model downloaded but served nowhere is switched to first. A stream is
answered at once and waits inside the stream (SSE comments keep clients and proxies from
timing out), then relayed."""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.http import StreamingHttpResponse

from modelmgr.models import ModelSwitch, SwitchPhase
from modelmgr.selectors import active_switch, switch_get
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
from proxy.accounting import Call, finish
from proxy.pool import pool
from proxy.relay import SSE_HEADERS, relay_stream


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


async def open_through_switch(send: Sender, *, stream: bool) -> vllm.UpstreamResponse:
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


def stream_after_switch(
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
