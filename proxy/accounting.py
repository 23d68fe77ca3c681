"""Accounting: one `Call` per proxied request, as metrics, usage and the access log see
it, recorded once by `finish` (usage, token budget, metrics, one access-log line); and
`key_usage`, a key's own usage and quotas as /api/usage reads it."""

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from backends.pool import pool
from modelmgr.auth import Principal
from modelmgr.selectors import usage_rows
from plumbing import vllm
from plumbing.db import run_sync
from proxy import quota, usage
from proxy.bodies import Endpoint
from proxy.metrics import (
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
from proxy.ratelimit import add_tokens

access_log = logging.getLogger("talktuah.access")


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
    queued_seconds: float = 0.0  # waited for a slot on a full backend
    response_id: str | None = None  # a Responses API response it created (stored.py)
    request_id: str = ""  # X-Request-Id: the client's, or the gateway's own
    # Tells the backend's admission queue the tokens served (the key's fair share).
    on_tokens: Callable[[int], None] | None = None
    reservation: quota.Reservation | None = None  # tokens held against its quotas
    streamed_events: int = 0  # SSE events relayed (what a stream cut short settles)


def opened_by(call: Call, upstream: vllm.UpstreamResponse) -> None:
    """What the call learns once vLLM answered: who, after how many tries and waits."""
    call.backend, call.attempts = upstream.backend, upstream.attempts
    call.status, call.accepted = upstream.status, upstream.status < 400
    call.queued_seconds, call.on_tokens = upstream.queued_seconds, upstream.on_tokens


async def finish(call: Call) -> None:
    """Record a finished request: usage, token budget, metrics, one access-log line."""
    # A bounded label: the model when vLLM accepted it or a backend serves it, else
    # "other" (clients can send any string).
    known = call.accepted or call.model in pool.served_models()
    model_label = (call.model if known else "other") if call.model else "none"
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
    status = str(call.status)
    _child(REQUESTS, key, model_label, endpoint, status).inc()
    _child(BACKEND_REQUESTS, call.backend, status).inc()
    if call.attempts > 1:
        RETRIES.inc(call.attempts - 1)
    if call.status == 429:
        _child(RATE_LIMITED, key, "rate").inc()
    if call.upstream_started:
        _child(UPSTREAM_LATENCY, endpoint, call.backend).observe(call.upstream_seconds)
        _child(OVERHEAD, endpoint).observe(max(call.overhead_seconds, 0.0))
        UPSTREAM_UP.set(0 if call.status in (502, 504) else 1)
    if call.ttft_seconds is not None:
        _child(TIME_TO_FIRST_TOKEN, model_label).observe(call.ttft_seconds)
    if call.prompt_tokens or call.completion_tokens:
        _child(PROMPT_TOKENS, key, model_label).inc(call.prompt_tokens)
        _child(COMPLETION_TOKENS, key, model_label).inc(call.completion_tokens)
        await add_tokens(call.principal, call.prompt_tokens + call.completion_tokens)
    if call.on_tokens is not None:
        settle, call.on_tokens = call.on_tokens, None
        settle(call.prompt_tokens + call.completion_tokens)
    # The quotas' reservation becomes the real usage (released on a failure).
    reservation, call.reservation = call.reservation, None
    await quota.settle(
        call.principal,
        reservation,
        tokens=call.prompt_tokens + call.completion_tokens,
        streamed_events=call.streamed_events,
    )
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
                "ttft_ms": ms(call.ttft_seconds) if call.ttft_seconds is not None else None,
                "duration_ms": ms(time.perf_counter() - call.started),
                "overhead_ms": ms(call.overhead_seconds),
                "attempts": call.attempts,
                "queued_ms": ms(call.queued_seconds) if call.queued_seconds else None,
                "request_id": call.request_id or None,
            }
        ).decode(),
    )


@functools.lru_cache(maxsize=8192)
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, looked up once: prometheus_client's
    labels() costs more than the update itself, and every answer makes several. The
    values are bounded (key names, served models, endpoints, statuses)."""
    return metric.labels(*labels)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


async def key_usage(principal: Principal, *, days: int) -> dict[str, Any]:
    """A key's own usage per model and day, newest first, with totals, and its token
    quotas (limit, used or held, remaining, when each resets)."""
    rows = await run_sync(usage_rows, key_prefix=principal.prefix, days=days)
    totals = {
        field: sum(row[field] for row in rows)
        for field in ("requests", "errors", "prompt_tokens", "completion_tokens")
    }
    return {
        "key": principal.prefix,
        "name": principal.name,
        "team": principal.quota.team_name or None,
        "days": days,
        "totals": totals,
        "usage": rows,
        "quota": await quota.status(principal),
    }
