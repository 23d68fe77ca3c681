"""Forwarding a request to vLLM: validate the body, apply the key's limits, send it to the
best backend and answer it, whole or streamed through the relay (relay.py); a model
switch in the way is held through (holding.py), and every answer is counted
(accounting.py).

`forward` takes the request and returns the response itself, unlike the other services:
it is the hot path. It reads the body once, builds the streaming response around the
upstream stream without copying it, and counts every answer, refusals included, in one
`Call` (metrics, usage, access log)."""

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from backends.admission import Claim
from backends.pool import MODELS_FRESH_SECONDS, pool
from modelmgr.auth import Principal
from plumbing import vllm
from plumbing.errors import (
    BadRequest,
    Forbidden,
    TalkTuahError,
    UpstreamError,
    UpstreamUnavailable,
    UpstreamUnreachable,
    normalise_upstream_error,
)
from proxy import quota, stored
from proxy.accounting import Call, finish, ms, opened_by
from proxy.bodies import (
    RESPONSE_CANCEL,
    RESPONSE_GET,
    RESPONSES,
    Endpoint,
    Form,
    encode_body,
    parse_body,
    parse_form,
    response_id_of,
    wants_stream,
)
from proxy.holding import (
    Sender,
    SwitchPending,
    open_through_switch,
    stream_after_switch,
    stream_when_admitted,
)
from proxy.middleware import request_id_of
from proxy.ratelimit import check_request_rate, check_token_rate
from proxy.relay import SSE_HEADERS, relay_stream
from proxy.salt import cache_salt
from proxy.sse import usage_of

OVERHEAD_HEADER = "X-TalkTuah-Overhead-Ms"
BACKEND_HEADER = "X-TalkTuah-Backend"  # which backend answered (names are admin-chosen)
QUEUE_HEADER = "X-TalkTuah-Queue-Ms"  # how long it waited for a slot on a full backend


async def default_model() -> str:
    """The model a request that names none gets: the first the backends serve."""
    names = pool.served_models()
    if names:
        return names[0]
    looked = await pool.look(max_age=MODELS_FRESH_SECONDS)
    names = pool.served_models()
    if not names and looked and not any(record.reachable for _replica, record in looked):
        raise UpstreamUnreachable(
            "vLLM is unreachable right now, so the gateway cannot tell which model it "
            "serves; name one, or retry shortly.",
            code="upstream_unreachable",
        )
    if not names:
        raise UpstreamUnavailable("vLLM serves no model right now.", headers={"Retry-After": "5"})
    return names[0]


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
    call.request_id = request_id_of(request)
    try:
        return await _forward(request, call)
    except TalkTuahError as exc:
        call.status, call.error = exc.status, True
        await finish(call)
        raise


async def _forward(request: HttpRequest, call: Call) -> HttpResponseBase:
    endpoint, principal = call.endpoint, call.principal
    form: Form | None = None
    if endpoint.multipart:
        form = parse_form(request, endpoint)
        body: dict[str, Any] = form.fields
    else:
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
    if stream and endpoint.stream_usage:
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
    if "priority" in body:
        # vLLM's `priority` is the gateway's to set (from the key's tier, on backends
        # that schedule by it): a client's own would let it jump everyone's queue.
        del body["priority"]
        changed = True
    if endpoint.salted and settings.PREFIX_CACHE_ISOLATION == "key":
        # vLLM's prefix cache, shared, would let one key time another's prompts: each
        # key's requests are salted with its own secret value, whatever the client sent.
        salt = cache_salt(principal)
        if body.get("cache_salt") != salt:
            body["cache_salt"] = salt
            changed = True
    backend = None
    if endpoint is RESPONSES and body.get("previous_response_id") is not None:
        previous = body["previous_response_id"]
        if not isinstance(previous, str):
            raise BadRequest(
                "'previous_response_id' must be a string.",
                param="previous_response_id",
                code="invalid_field",
            )
        # Only the key's own, and on the backend that holds it.
        backend = await stored.backend_of(previous, principal)
    if form is not None:
        content, content_type = form.encoded(body) if changed else (request.body, form.type)
    else:
        content, content_type = (encode_body(body) if changed else request.body), vllm.JSON
    claim = Claim(
        principal.prefix,
        tier=principal.tier,
        share=principal.share,
        max_parallel=principal.max_parallel_requests,
    )
    prioritized = None
    if pool.schedules_by_priority and form is None:
        prioritized = encode_body({**body, "priority": claim.rank})
    if endpoint.counts_usage:
        # Last of the checks: a request refused by another limit holds no tokens.
        call.reservation = await quota.reserve(principal, body=body, size=len(content))

    call.upstream_started = time.perf_counter()
    session = _session_of(request, body)
    send = Sender(
        endpoint.path,
        content,
        model,
        session,
        call.request_id,
        claim=claim,
        estimate=_estimate(body, len(content)),
        prioritized=prioritized,
        content_type=content_type,
        backend=backend,
    )
    if stream and pool.would_wait(model, session, claim):
        return _counting(stream_when_admitted(send, call, strip_usage=not client_wants_usage), call)
    try:
        upstream = await open_through_switch(send, stream=stream)
    except UpstreamError as exc:
        call.attempts = exc.attempts
        raise
    except SwitchPending as pending:
        return _counting(
            stream_after_switch(pending, send, call, strip_usage=not client_wants_usage), call
        )
    opened_by(call, upstream)

    if upstream.status >= 400 or not (
        stream and upstream.content_type.startswith("text/event-stream")
    ):
        return await _whole_response(upstream, call)
    # The header goes before the body: the gateway's own time until now, that is before
    # vLLM was asked and since its headers came back.
    headers_at = time.perf_counter()
    response = _counting(
        StreamingHttpResponse(
            relay_stream(upstream, call, strip_usage=not client_wants_usage),
            content_type=upstream.content_type,
            headers=SSE_HEADERS,
        ),
        call,
    )
    call.overhead_seconds = (call.upstream_started - call.started) + (
        time.perf_counter() - headers_at
    )
    response[OVERHEAD_HEADER] = ms(call.overhead_seconds)
    response[BACKEND_HEADER] = call.backend
    response[QUEUE_HEADER] = ms(call.queued_seconds)
    return response


def _counting(response: StreamingHttpResponse, call: Call) -> StreamingHttpResponse:
    """A stream whose tokens a quota holds: its events are counted, so one cut before
    vLLM's usage chunk still settles what it used."""
    if call.reservation is None:
        return response
    content = response.streaming_content
    if isinstance(content, AsyncIterator):

        def add(events: int) -> None:
            call.streamed_events += events

        response.streaming_content = quota.counted(content, add)
    return response


def _estimate(body: dict[str, Any], size: int) -> int:
    """The tokens a request may cost, before its usage is known: its body's size over
    four (about a token's bytes) plus what it asks to generate (else a modest guess)."""
    wanted = body.get("max_completion_tokens") or body.get("max_tokens")
    generate = wanted if isinstance(wanted, int) and 0 < wanted < 1_000_000 else 64
    return size // 4 + generate


def _session_of(request: HttpRequest, body: dict[str, Any]) -> str | None:
    """What keeps a conversation on one replica: X-Session-Id, else the `user` field."""
    session = request.headers.get("x-session-id") or body.get("user")
    return session if isinstance(session, str) and session else None


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
            normalise_upstream_error(upstream.status, content, call.endpoint.dialect),
            status=upstream.status,
            content_type="application/json",
        )
    else:
        if call.endpoint.counts_usage:
            call.prompt_tokens, call.completion_tokens = usage_of(content)
        if call.endpoint is RESPONSES:
            call.response_id = response_id_of(content)
            await stored.remember(call)
        response = HttpResponse(content, status=upstream.status, content_type=upstream.content_type)
    call.overhead_seconds = (done - call.started) - call.upstream_seconds
    await finish(call)
    response[OVERHEAD_HEADER] = ms(time.perf_counter() - call.started - call.upstream_seconds)
    response[BACKEND_HEADER] = call.backend
    response[QUEUE_HEADER] = ms(call.queued_seconds)
    return response


async def list_models(principal: Principal) -> dict[str, Any]:
    """The models the backends serve (vLLM's own cards, the union over the backends,
    at most MODELS_FRESH_SECONDS old), filtered by the key's allowed models."""
    await pool.ready()
    found = await pool.look(max_age=MODELS_FRESH_SECONDS)
    if found and not any(record.reachable for _replica, record in found):
        raise UpstreamUnavailable(
            "vLLM is unreachable right now; retry shortly.",
            code="upstream_unreachable",
            headers={"Retry-After": "5"},
        )
    cards = [card for card in pool.served_cards() if principal.may_use(str(card["id"]))]
    return {"object": "list", "data": cards}


async def forward_stored(
    *, request: HttpRequest, principal: Principal, response_id: str, cancel: bool
) -> HttpResponseBase:
    """GET /v1/responses/{id} (streamed again with `?stream=true`) or its cancel, sent
    to the backend that made the response, for the key that made it only."""
    endpoint = RESPONSE_CANCEL if cancel else RESPONSE_GET
    call = Call(principal=principal, endpoint=endpoint, started=_started_at(request))
    call.request_id = request_id_of(request)
    try:
        await pool.ready()
        backend = await stored.backend_of(response_id, principal)
        path = f"{endpoint.path}/{quote(response_id, safe='')}" + ("/cancel" if cancel else "")
        query = request.META.get("QUERY_STRING", "")
        send = Sender(
            path + (f"?{query}" if query and not cancel else ""),
            b"",
            "",
            None,
            call.request_id,
            backend=backend,
            method="POST" if cancel else "GET",
        )
        call.upstream_started = time.perf_counter()
        upstream = await send()
    except TalkTuahError as exc:
        call.status, call.error = exc.status, True
        await finish(call)
        raise
    opened_by(call, upstream)
    if upstream.status >= 400 or not upstream.content_type.startswith("text/event-stream"):
        return await _whole_response(upstream, call)
    call.stream = True
    response = StreamingHttpResponse(
        relay_stream(upstream, call, strip_usage=False),
        content_type=upstream.content_type,
        headers=SSE_HEADERS,
    )
    response[BACKEND_HEADER] = call.backend
    return response
