"""The proxy workflow: validate a request body, apply the key's limits, forward it to
vLLM and relay the answer (streamed or not), recording usage on the way."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from modelmgr.lifecycle import active_switch
from proxy import usage, vllm
from proxy.auth import Principal
from proxy.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ProxyError,
    UnsupportedMediaType,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreachable,
    normalise_upstream_error,
    sse_error_event,
)
from proxy.ratelimit import add_tokens, check_request_rate, check_token_rate

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # vLLM's path
    required: str  # the field a body must carry
    stream_default: bool = False


CHAT = Endpoint("/v1/chat/completions", "messages")
SEED_CHAT = Endpoint("/v1/chat/completions", "messages", stream_default=True)
COMPLETIONS = Endpoint("/v1/completions", "prompt")
EMBEDDINGS = Endpoint("/v1/embeddings", "input")


def upstream_error(exc: vllm.VllmError) -> ProxyError:
    if exc.timed_out:
        return UpstreamTimeout(str(exc), code="upstream_timeout")
    return UpstreamUnreachable(str(exc), code="upstream_unreachable")


def parse_body(request: HttpRequest, endpoint: Endpoint) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.content_type or 'none'!r}.",
            code="unsupported_media_type",
        )
    try:
        raw = request.body
    except RequestDataTooBig:
        raise PayloadTooLarge("Request body too large.", code="request_too_large") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_body")
    value = body.get(endpoint.required)
    if value is None or value == [] or value == "":
        raise BadRequest(
            f"'{endpoint.required}' is required.", param=endpoint.required, code="missing_field"
        )
    if endpoint.required == "messages" and not isinstance(value, list):
        raise BadRequest("'messages' must be a list.", param="messages", code="invalid_field")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.", param="model", code="invalid_field")
    stream = body.get("stream", endpoint.stream_default)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream", code="invalid_field")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(
            "'stream_options' must be an object.", param="stream_options", code="invalid_field"
        )
    return body


async def default_model() -> str:
    try:
        names = await vllm.served_model_names()
    except vllm.VllmError as exc:
        raise upstream_error(exc) from exc
    if not names:
        raise UpstreamUnavailable("vLLM serves no model right now.", headers={"Retry-After": "5"})
    return names[0]


async def forward(
    *, request: HttpRequest, principal: Principal, endpoint: Endpoint
) -> HttpResponseBase:
    """Forward one OpenAI-style request to vLLM; the body passes through unchanged but
    for a missing model and, on streams, `stream_options.include_usage`."""
    body = parse_body(request, endpoint)
    changed = False
    model = body.get("model")
    if not model:
        model = body["model"] = await default_model()
        changed = True
    if not principal.may_use(model):
        raise Forbidden(
            f"This API key may not use the model '{model}'.",
            param="model",
            code="model_not_allowed",
        )
    await check_request_rate(request, principal)
    await check_token_rate(principal)

    stream = bool(body.get("stream", endpoint.stream_default))
    client_wants_usage = True
    if stream:
        # Ask vLLM for the usage chunk so usage can be recorded; strip it again below
        # when the client did not ask for it.
        options = body.setdefault("stream_options", {})
        client_wants_usage = bool(options.get("include_usage"))
        if not client_wants_usage or "stream" not in body:
            options["include_usage"] = True
            body["stream"] = True
            changed = True
    content = orjson.dumps(body) if changed else request.body

    try:
        upstream = await _open_through_switch(
            endpoint.path, content, request.headers.get("x-request-id"), model
        )
    except vllm.VllmError as exc:
        usage.record(principal, model, error=True)
        raise upstream_error(exc) from exc
    except ProxyError:
        usage.record(principal, model, error=True)
        raise

    if upstream.status >= 400 or not (
        stream and upstream.content_type.startswith("text/event-stream")
    ):
        return await _whole_response(upstream, principal=principal, model=model)
    return StreamingHttpResponse(
        relay_stream(
            upstream, principal=principal, model=model, strip_usage=not client_wants_usage
        ),
        content_type=upstream.content_type,
        headers=SSE_HEADERS,
    )


async def _open_through_switch(
    path: str, content: bytes, request_id: str | None, model: str
) -> vllm.UpstreamResponse:
    """Open the upstream request; while a model switch runs, wait for it (bounded)
    instead of failing on vLLM being down or not knowing the new model yet."""
    try:
        upstream = await vllm.open_request("POST", path, content=content, request_id=request_id)
    except vllm.VllmError as exc:
        if exc.timed_out or not await _wait_for_switch(None):
            raise
    else:
        if upstream.status != 404 or not await _wait_for_switch(model, before=upstream.aclose):
            return upstream
    vllm.forget_served_models()
    return await vllm.open_request("POST", path, content=content, request_id=request_id)


async def _wait_for_switch(
    model: str | None, *, before: Callable[[], Awaitable[None]] | None = None
) -> bool:
    """False when no switch (to `model`, if given) runs. Else wait until it ends and
    return True, or answer 503 with Retry-After once SWITCH_WAIT_SECONDS have passed.
    Only reached on an upstream failure, so the hot path never queries the database."""
    switch = await sync_to_async(active_switch)()
    if switch is None or (model is not None and switch.to_model != model):
        return False
    if before is not None:
        await before()
    deadline = time.monotonic() + settings.SWITCH_WAIT_SECONDS
    while switch is not None:
        if time.monotonic() >= deadline:
            raise UpstreamUnavailable(
                f"vLLM is switching to '{switch.to_model}' ({switch.phase}); retry shortly.",
                code="model_switching",
                headers={"Retry-After": "10"},
            )
        await asyncio.sleep(0.5)
        switch = await sync_to_async(active_switch)()
    return True


async def _whole_response(
    upstream: vllm.UpstreamResponse, *, principal: Principal, model: str
) -> HttpResponse:
    # A client that leaves while this waits cancels the task: the finally closes the
    # upstream connection and vLLM aborts the generation.
    try:
        content = await upstream.read()
    except vllm.VllmError as exc:
        usage.record(principal, model, error=True)
        raise upstream_error(exc) from exc
    finally:
        await upstream.aclose()
    if upstream.status >= 400:
        usage.record(principal, model, error=True)
        return HttpResponse(
            normalise_upstream_error(upstream.status, content),
            status=upstream.status,
            content_type="application/json",
        )
    prompt, completion = _usage_of(content)
    usage.record(principal, model, prompt_tokens=prompt, completion_tokens=completion)
    await add_tokens(principal, prompt + completion)
    return HttpResponse(content, status=upstream.status, content_type=upstream.content_type)


def _usage_of(content: bytes) -> tuple[int, int]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return 0, 0
    found = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return 0, 0
    return int(found.get("prompt_tokens") or 0), int(found.get("completion_tokens") or 0)


def _is_usage_chunk(event: bytes) -> bool:
    return event.startswith(b"data: {") and b'"choices":[]' in event and b'"usage":' in event


async def relay_stream(
    upstream: vllm.UpstreamResponse, *, principal: Principal, model: str, strip_usage: bool
) -> AsyncIterator[bytes]:
    """Relay vLLM's SSE bytes as they arrive.

    Events are passed on whole (a partial event waits for its end, never longer); the
    usage chunk is read, and dropped when the client did not ask for it. A client that
    disconnects cancels this generator: the finally closes vLLM's connection at once.
    """
    pending = b""
    prompt = completion = 0
    finished = broken = False
    try:
        async for chunk in upstream.iter_raw():
            pending += chunk
            end = pending.rfind(b"\n\n")
            if end < 0:
                continue
            events, pending = pending[: end + 2], pending[end + 2 :]
            if b'"usage":' in events:
                kept = []
                for event in events.split(b"\n\n")[:-1]:
                    if _is_usage_chunk(event):
                        prompt, completion = _usage_of(event[6:])
                        if strip_usage:
                            continue
                    kept.append(event + b"\n\n")
                events = b"".join(kept)
            if events.endswith(b"data: [DONE]\n\n"):
                finished = True
            if events:
                yield events
        if pending:
            yield pending
        if not finished:
            broken = True
            yield sse_error_event(
                "vLLM closed the stream before it finished.", "upstream_error", 502
            )
    except vllm.VllmError as exc:
        broken = True
        if exc.timed_out:
            yield sse_error_event(str(exc), "upstream_timeout", 504)
        else:
            yield sse_error_event(str(exc), "upstream_error", 502)
    finally:
        await upstream.aclose()
        usage.record(
            principal, model, prompt_tokens=prompt, completion_tokens=completion, error=broken
        )
        await add_tokens(principal, prompt + completion)


async def list_models(principal: Principal) -> HttpResponse:
    """vLLM's model list, filtered by the key's allowed models."""
    try:
        status, data = await vllm.get_json("/v1/models")
    except vllm.VllmError as exc:
        raise upstream_error(exc) from exc
    if status >= 400 or not isinstance(data, dict):
        return HttpResponse(
            normalise_upstream_error(status, orjson.dumps(data)),
            status=status if status >= 400 else 502,
            content_type="application/json",
        )
    data["data"] = [card for card in data.get("data", []) if principal.may_use(str(card.get("id")))]
    return HttpResponse(orjson.dumps(data), content_type="application/json")
