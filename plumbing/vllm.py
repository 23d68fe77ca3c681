"""The vLLM adapter: the only module that talks HTTP to vLLM.

One long-lived client per event loop (so per uvicorn worker), with explicit limits and
timeouts: an aiohttp session by default (UPSTREAM_TRANSPORT=aiohttp), or an httpx client.
aiohttp is used directly, not under httpx: on the request path httpx's request objects,
URL parsing and cookie handling cost about a sixth of the gateway's CPU at 64 streams.
`send` makes one attempt; the pool (`backends.pool`) decides where to send it again, and
only before any response byte arrived (connection refused or reset, DNS failure): once
vLLM has started answering a request is never replayed. `health_check` and its sync twin
are the one look at a vLLM that every health record is made of.
"""

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
from django.conf import settings

from plumbing.errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

__all__ = ["UpstreamError"]  # what every function here may raise (a subclass of it)

# Errors raised before the first response byte: nothing reached vLLM's handler, or
# vLLM went away before answering, so the request may be sent again.
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.NetworkError,
    aiohttp.ClientConnectorError,  # refused, DNS
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,  # closed before answering
    aiohttp.ClientOSError,  # reset
)
_TIMEOUTS = (httpx.TimeoutException, asyncio.TimeoutError)  # aiohttp's are TimeoutErrors
_BROKEN = (httpx.HTTPError, aiohttp.ClientError)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One vLLM server: where it is and the API key it wants (plaintext, in memory only)."""

    name: str
    base_url: str
    api_key: str = ""


@dataclass
class _ClientState:
    client: httpx.AsyncClient | aiohttp.ClientSession
    loop: asyncio.AbstractEventLoop

    @property
    def closed(self) -> bool:
        if isinstance(self.client, aiohttp.ClientSession):
            return self.client.closed
        return self.client.is_closed

    async def aclose(self) -> None:
        if isinstance(self.client, aiohttp.ClientSession):
            await self.client.close()
        else:
            await self.client.aclose()


_state: _ClientState | None = None


def _new_client() -> httpx.AsyncClient | aiohttp.ClientSession:
    if settings.UPSTREAM_TRANSPORT == "aiohttp":
        connector = aiohttp.TCPConnector(
            limit=settings.UPSTREAM_MAX_CONNECTIONS,
            keepalive_timeout=settings.UPSTREAM_KEEPALIVE_EXPIRY,
        )
        # No cookies (vLLM sets none; a jar would be per-process state shared by keys).
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    limits = httpx.Limits(
        max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=settings.UPSTREAM_KEEPALIVE_EXPIRY,
    )
    return httpx.AsyncClient(limits=limits)


def _client_state() -> _ClientState:
    """The process's client, bound to the running event loop."""
    global _state
    loop = asyncio.get_running_loop()
    if _state is None or _state.loop is not loop or _state.closed:
        _state = _ClientState(client=_new_client(), loop=loop)
    return _state


async def reset_client() -> None:
    """Drop pooled connections (fresh DNS and sockets on the next request)."""
    global _state
    state, _state = _state, None
    if state is not None and state.loop is asyncio.get_running_loop():
        await state.aclose()


# Timeouts are read from settings on each request, so a changed setting applies at once;
# the objects are built only when the values change (this is on the request path).
@functools.lru_cache(maxsize=4)
def _httpx_timeout(connect: float, read: float) -> httpx.Timeout:
    return httpx.Timeout(connect=connect, read=read, write=read, pool=read)


@functools.lru_cache(maxsize=4)
def _aiohttp_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    # connect covers waiting for a pooled connection too; sock_read each read.
    return aiohttp.ClientTimeout(
        total=None, connect=connect + read, sock_connect=connect, sock_read=read
    )


JSON = "application/json"


def _headers(
    upstream: Upstream, request_id: str | None = None, content_type: str = JSON
) -> dict[str, str]:
    headers = {"content-type": content_type}
    if upstream.api_key:
        headers["authorization"] = f"Bearer {upstream.api_key}"
    if request_id:
        headers["x-request-id"] = request_id
    return headers


class _Body(Protocol):
    """The body of an open response, as one transport gives it."""

    async def read(self) -> bytes: ...

    def iter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _HttpxBody:
    response: httpx.Response

    async def read(self) -> bytes:
        return await self.response.aread()

    def iter_raw(self) -> AsyncIterator[bytes]:
        return self.response.aiter_raw()

    async def aclose(self) -> None:
        await self.response.aclose()


@dataclass(slots=True)
class _AiohttpBody:
    response: aiohttp.ClientResponse

    async def read(self) -> bytes:
        return await self.response.read()

    async def iter_raw(self) -> AsyncIterator[bytes]:
        content = self.response.content
        while chunk := await content.readany():
            yield chunk

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()  # read to the end: the connection goes back to the pool
        else:
            self.response.close()  # unfinished: close the connection (vLLM aborts)


@dataclass
class UpstreamResponse:
    """An open response from vLLM; always close it (`aclose`), ideally in `finally`."""

    status: int
    content_type: str
    attempts: int
    _body: _Body = field(repr=False)
    backend: str  # the name of the backend that answered
    # Called once when the response is closed (the pool counts requests in flight).
    on_close: Callable[[], None] | None = field(default=None, repr=False)
    # Seconds the request waited for a slot on its backend before it was sent, and what
    # to tell once its tokens are known (the admission's fair share).
    queued_seconds: float = 0.0
    on_tokens: Callable[[int], None] | None = field(default=None, repr=False)

    async def read(self) -> bytes:
        try:
            return await self._body.read()
        except _TIMEOUTS as exc:
            raise UpstreamTimeout("vLLM did not answer in time") from exc
        except _BROKEN as exc:
            raise UpstreamDisconnected("vLLM broke off its response.", detail=repr(exc)) from exc

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive, no buffering."""
        try:
            async for chunk in self._body.iter_raw():
                yield chunk
        except _TIMEOUTS as exc:
            raise UpstreamTimeout("vLLM stopped sending (read timeout)") from exc
        except _BROKEN as exc:
            raise UpstreamDisconnected("vLLM broke off the stream.", detail=repr(exc)) from exc

    async def aclose(self) -> None:
        # Closing an unfinished response closes its connection: that is how vLLM learns
        # the client left and aborts the generation.
        await self._body.aclose()
        if self.on_close is not None:
            release, self.on_close = self.on_close, None
            release()


class NotReached(UpstreamUnreachable):
    """One attempt found nothing answering (refused, reset, DNS): safe to send again."""


async def send(
    upstream: Upstream,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    request_id: str | None = None,
    content_type: str = JSON,
) -> UpstreamResponse:
    """One attempt: send a request and return once the response headers arrived."""
    state = _client_state()
    connect, read = settings.UPSTREAM_CONNECT_TIMEOUT, settings.UPSTREAM_READ_TIMEOUT
    headers = _headers(upstream, request_id, content_type)
    body: _Body
    try:
        if isinstance(state.client, aiohttp.ClientSession):
            answer = await state.client.request(
                method,
                upstream.base_url + path,
                data=content,
                headers=headers,
                timeout=_aiohttp_timeout(connect, read),
            )
            status, body = answer.status, _AiohttpBody(answer)
            content_type = answer.headers.get("Content-Type", "")
        else:
            request = state.client.build_request(
                method,
                upstream.base_url + path,
                content=content,
                headers=headers,
                timeout=_httpx_timeout(connect, read),
            )
            response = await state.client.send(request, stream=True)
            status, body = response.status_code, _HttpxBody(response)
            content_type = response.headers.get("content-type", "")
    except _RETRYABLE as exc:
        raise NotReached("vLLM could not be reached.", attempts=1, detail=repr(exc)) from exc
    except _TIMEOUTS as exc:
        raise UpstreamTimeout("vLLM did not answer in time", attempts=1) from exc
    return UpstreamResponse(
        status=status, content_type=content_type, attempts=1, _body=body, backend=upstream.name
    )


def unreachable(where: str, attempts: int, last_error: NotReached | None) -> UpstreamUnreachable:
    """The error of a request no backend took: where and why in its detail only."""
    reason = last_error.detail if last_error is not None else "no backend to try"
    return UpstreamUnreachable(
        f"vLLM is unreachable (tried {attempts} times); retry shortly.",
        attempts=attempts,
        detail=f"{where}: {reason}",
    )


@dataclass(frozen=True, slots=True)
class Health:
    """What one quick look at vLLM found (no retries: health checks must be fast)."""

    reachable: bool
    healthy: bool
    latency_ms: float | None
    models: list[dict[str, Any]]  # its /v1/models cards
    metrics_text: str | None
    detail: str
    listed: bool = False  # /v1/models answered with a list (`models` is what it said)

    @property
    def model_names(self) -> list[str]:
        return [str(card["id"]) for card in self.models if "id" in card]


# A look is one sequence of GETs (/health, /v1/models, /metrics) read the same way by the
# async check (the gateway's poller) and the sync one (the worker, the admin): the
# generator names the next path and is sent each answer, or thrown the failure.
_LOOK_ERRORS = (UpstreamError, TimeoutError, httpx.HTTPError)
_Look = Generator[str, tuple[int, bytes], Health]


def _look(*, with_metrics: bool) -> _Look:
    started = time.monotonic()
    try:
        status, _ = yield "/health"
    except _LOOK_ERRORS as exc:
        return Health(False, False, None, [], None, f"unreachable: {exc.__class__.__name__}")
    latency = round((time.monotonic() - started) * 1000, 2)
    if status != 200:
        return Health(True, False, latency, [], None, f"/health answered HTTP {status}")
    models: list[dict[str, Any]] = []
    listed = False
    metrics_text = None
    detail = "ok"
    try:
        status, answer = yield "/v1/models"
        if status != 200:
            raise UpstreamInvalidResponse(f"/v1/models answered HTTP {status}")
        models = [card for card in orjson.loads(answer).get("data", []) if isinstance(card, dict)]
        listed = True
        if with_metrics:
            status, scraped = yield "/metrics"
            if status == 200:
                metrics_text = scraped.decode(errors="replace")
    except (*_LOOK_ERRORS, ValueError, AttributeError) as exc:
        detail = f"vLLM is up but did not list its models or metrics: {exc.__class__.__name__}"
    return Health(True, True, latency, models, metrics_text, detail, listed)


async def _quick_get(upstream: Upstream, path: str, wait: float) -> tuple[int, bytes]:
    """One GET within `wait` seconds in all, never retried (health checks must be fast)."""
    async with asyncio.timeout(wait):
        response = await send(upstream, "GET", path)
        try:
            return response.status, await response.read()
        finally:
            await response.aclose()


def _step(look: _Look, answer: tuple[int, bytes] | BaseException) -> str | Health:
    """Feed one answer (or failure) to a look: the next path, or what it found."""
    try:
        if isinstance(answer, BaseException):
            return look.throw(answer)
        return look.send(answer)
    except StopIteration as done:
        found: Health = done.value
        return found


async def health_check(
    upstream: Upstream, *, wait: float = 2.0, with_metrics: bool = True
) -> Health:
    """/health, then /v1/models (and /metrics), each within `wait` seconds; never raises."""
    look = _look(with_metrics=with_metrics)
    step: str | Health = next(look)
    while isinstance(step, str):
        answer: tuple[int, bytes] | BaseException
        try:
            answer = await _quick_get(upstream, step, wait)
        except _LOOK_ERRORS as exc:
            answer = exc
        step = _step(look, answer)
    return step


def health_check_sync(
    upstream: Upstream, *, wait: float = 2.0, with_metrics: bool = True
) -> Health:
    """The same look for synchronous callers (the worker, the admin); never raises."""
    look = _look(with_metrics=with_metrics)
    step: str | Health = next(look)
    with httpx.Client(timeout=wait, headers=_headers(upstream)) as http:
        while isinstance(step, str):
            answer: tuple[int, bytes] | BaseException
            try:
                got = http.get(upstream.base_url + step)
                answer = (got.status_code, got.content)
            except httpx.HTTPError as exc:
                answer = exc
            step = _step(look, answer)
    return step


QUEUE_GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}


def queue_figures(metrics_text: str | None) -> dict[str, float] | None:
    """Waiting and running requests and KV-cache usage from vLLM's /metrics: each gauge's
    samples summed (one per engine). Only the sample lines of these three names are read,
    not the whole exposition (some 650 lines, every BACKEND_POLL_SECONDS, on the event
    loop); None when there are none, or one has no number."""
    if not metrics_text:
        return None
    figures: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, brace, rest = line.partition("{")
        if brace:
            rest = rest.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        figure = QUEUE_GAUGES.get(name.rstrip())
        if figure is None:
            continue
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            return None
        figures[figure] = figures.get(figure, 0.0) + value
    return figures or None


def labelled_families(expositions: list[tuple[str, str]]) -> str:
    """vLLM's `vllm:*` families from several backends' expositions, as one: each sample
    gains a `backend` label, and each family's HELP and TYPE lines appear once."""
    heads: dict[str, list[str]] = {}
    head_of: dict[str, str] = {}  # family -> the backend whose HELP/TYPE lines are kept
    samples: dict[str, list[str]] = {}
    for backend, text in expositions:
        family: str | None = None
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                family = parts[2] if len(parts) >= 3 and parts[2].startswith("vllm:") else None
                if family is not None and head_of.setdefault(family, backend) == backend:
                    heads.setdefault(family, []).append(line)
                    samples.setdefault(family, [])
            elif line.startswith("vllm:"):
                name = family or line.split("{", 1)[0].split(" ", 1)[0]
                samples.setdefault(name, []).append(_with_backend(line, backend))
    lines: list[str] = []
    for name, found in samples.items():
        lines += heads.get(name, [])
        lines += found
    return "\n".join(lines) + "\n" if lines else ""


def _with_backend(sample: str, backend: str) -> str:
    label = f'backend="{backend}"'  # a slug: nothing to escape
    if "{" in sample.split(" ", 1)[0]:
        name, _brace, rest = sample.partition("{")
        return f"{name}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    name, _space, value = sample.partition(" ")
    return f"{name}{{{label}}} {value}"
