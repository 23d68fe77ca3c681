"""The relay: vLLM's SSE bytes passed on to the client as they arrive, events whole, the
usage chunk read (and dropped when the client did not ask for it). A client that
disconnects, or a gateway that shuts down, closes vLLM's connection at once."""

import logging
import time
from collections.abc import AsyncIterator

from plumbing import vllm
from plumbing.errors import UpstreamError, UpstreamTimeout, sse_error_event
from proxy import stored
from proxy.accounting import Call, finish
from proxy.metrics import ACTIVE_STREAMS
from proxy.shutdown import register_stream, unregister_stream
from proxy.sse import EventRelay

log = logging.getLogger("talktuah.relay")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def relay_stream(
    upstream: vllm.UpstreamResponse, call: Call, *, strip_usage: bool
) -> AsyncIterator[bytes]:
    """Relay vLLM's SSE bytes as they arrive.

    Events are passed on whole (a partial event waits for its end, never longer); the
    usage chunk is read, and dropped when the client did not ask for it. A client that
    disconnects cancels this generator: the finally closes vLLM's connection at once.
    """
    dialect = call.endpoint.dialect
    relay = EventRelay(strip_usage=strip_usage, dialect=dialect)
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
                if relay.usage is not None and call.endpoint.counts_usage:
                    call.prompt_tokens, call.completion_tokens = relay.usage
                if relay.response_id is not None and call.response_id is None:
                    call.response_id = relay.response_id
                    await stored.remember(call)
                if events:
                    if call.ttft_seconds is None:
                        call.ttft_seconds = time.perf_counter() - call.started
                    yield events
        except UpstreamError as exc:
            if not shutting_down:
                call.error = True
                kind = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
                log.warning("stream %s broke: %s", call.request_id, exc.detail or exc.message)
                message = f"{exc.message} (request {call.request_id})"
                yield sse_error_event(message, kind, exc.status, dialect)
                return
        if shutting_down and not relay.finished:
            call.error = True
            yield sse_error_event(
                "The gateway is shutting down; send the request again.",
                "gateway_shutdown",
                503,
                dialect,
            )
        elif not relay.finished:
            if relay.pending:
                yield relay.pending
            call.error = True
            yield sse_error_event(
                f"vLLM closed the stream before it finished (request {call.request_id}).",
                "upstream_error",
                502,
                dialect,
            )
    finally:
        unregister_stream(end_for_shutdown)
        ACTIVE_STREAMS.dec()
        call.upstream_seconds = time.perf_counter() - call.upstream_started
        await upstream.aclose()
        await finish(call)
