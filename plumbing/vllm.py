"""The vLLM adapter: the only module that talks HTTP to vLLM.

One long-lived client per event loop (so per uvicorn worker), with explicit limits and
timeouts: an aiohttp session by default (UPSTREAM_TRANSPORT=aiohttp), or an httpx client.
aiohttp is used directly, not under httpx: on the request path httpx's request objects,
URL parsing and cookie handling cost about a sixth of the gateway's CPU at 64 streams.
Requests are retried only before any response byte arrived (connection refused or reset,
DNS failure: vLLM restarting), with backoff, for a bounded total time; once vLLM has
started answering a request is never replayed.
"""

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

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


@functools.lru_cache(maxsize=4)
def _upstream_for(base_url: str, api_key: str) -> Upstream:
    return Upstream("default", base_url, api_key)


def default_upstream() -> Upstream:
    """The backend VLLM_BASE_URL and VLLM_API_KEY describe (read on each call, so a
    changed setting applies at once)."""
    return _upstream_for(settings.VLLM_BASE_URL, settings.VLLM_API_KEY)


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


def _headers(upstream: Upstream, request_id: str | None = None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
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
    backend: str = "default"
    # Called once when the response is closed (the pool counts requests in flight).
    on_close: Callable[[], None] | None = field(default=None, repr=False)

    async def read(self) -> bytes:
        try:
            return await self._body.read()
        except _TIMEOUTS as exc:
            raise UpstreamTimeout("vLLM did not answer in time") from exc
        except _BROKEN as exc:
            raise UpstreamDisconnected(f"vLLM broke off its response: {exc!r}") from exc

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive, no buffering."""
        try:
            async for chunk in self._body.iter_raw():
                yield chunk
        except _TIMEOUTS as exc:
            raise UpstreamTimeout("vLLM stopped sending (read timeout)") from exc
        except _BROKEN as exc:
            raise UpstreamDisconnected(f"vLLM broke off the stream: {exc!r}") from exc

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
) -> UpstreamResponse:
    """One attempt: send a request and return once the response headers arrived."""
    state = _client_state()
    connect, read = settings.UPSTREAM_CONNECT_TIMEOUT, settings.UPSTREAM_READ_TIMEOUT
    headers = _headers(upstream, request_id)
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
        raise NotReached(repr(exc), attempts=1) from exc
    except _TIMEOUTS as exc:
        raise UpstreamTimeout("vLLM did not answer in time", attempts=1) from exc
    return UpstreamResponse(
        status=status, content_type=content_type, attempts=1, _body=body, backend=upstream.name
    )


def unreachable(where: str, attempts: int, last_error: NotReached | None) -> UpstreamUnreachable:
    reason = last_error.message if last_error is not None else "no backend to try"
    return UpstreamUnreachable(
        f"vLLM at {where} is unreachable after {attempts} attempts: {reason}", attempts=attempts
    )


async def open_request(
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    request_id: str | None = None,
    upstream: Upstream | None = None,
) -> UpstreamResponse:
    """Send a request to one vLLM, retried while nothing reached it (vLLM restarting),
    with backoff, for UPSTREAM_RETRY_SECONDS."""
    upstream = upstream or default_upstream()
    deadline = time.monotonic() + settings.UPSTREAM_RETRY_SECONDS
    delay = 0.05
    attempts = 0
    while True:
        attempts += 1
        try:
            response = await send(upstream, method, path, content=content, request_id=request_id)
        except UpstreamTimeout as exc:
            exc.attempts = attempts
            raise
        except NotReached as exc:
            if time.monotonic() + delay > deadline:
                raise unreachable(upstream.base_url, attempts, exc) from exc
        else:
            response.attempts = attempts
            return response
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def get_json(path: str, upstream: Upstream | None = None) -> tuple[int, Any]:
    """A small GET (models, health), retried like any other request."""
    response = await open_request("GET", path, upstream=upstream)
    try:
        content = await response.read()
    finally:
        await response.aclose()
    try:
        return response.status, orjson.loads(content) if content else None
    except orjson.JSONDecodeError as exc:
        raise UpstreamInvalidResponse(
            f"vLLM answered {path} with something that is not JSON"
        ) from exc


_models_cache: tuple[float, list[str]] | None = None


async def served_model_names() -> list[str]:
    """The model names vLLM serves now, cached for a few seconds."""
    global _models_cache
    now = time.monotonic()
    if (
        _models_cache is not None
        and now - _models_cache[0] < settings.UPSTREAM_MODELS_CACHE_SECONDS
    ):
        return _models_cache[1]
    status, data = await get_json("/v1/models")
    if status != 200 or not isinstance(data, dict):
        raise UpstreamInvalidResponse(f"vLLM answered /v1/models with HTTP {status}")
    names = [str(card["id"]) for card in data.get("data", []) if "id" in card]
    _models_cache = (now, names)
    return names


def forget_served_models() -> None:
    global _models_cache
    _models_cache = None


@dataclass(frozen=True, slots=True)
class Probe:
    healthy: bool
    models: list[str]
    detail: str
    latency_ms: float | None = None


def probe(timeout: float = 2.0, upstream: Upstream | None = None) -> Probe:
    """One synchronous look at vLLM (/health, then /v1/models), for the worker and the
    management views; never raises."""
    upstream = upstream or default_upstream()
    base = upstream.base_url
    started = time.monotonic()
    try:
        with httpx.Client(timeout=timeout, headers=_headers(upstream)) as http:
            health = http.get(base + "/health")
            latency = (time.monotonic() - started) * 1000
            if health.status_code != 200:
                return Probe(False, [], f"/health answered HTTP {health.status_code}", latency)
            listed = http.get(base + "/v1/models")
            names = [str(card["id"]) for card in listed.json().get("data", []) if "id" in card]
    except httpx.HTTPError as exc:
        return Probe(False, [], f"unreachable: {exc.__class__.__name__}")
    except (ValueError, AttributeError, TypeError):
        return Probe(True, [], "/v1/models answered something that is not a model list")
    return Probe(True, names, "ok", latency)


@dataclass(frozen=True, slots=True)
class Health:
    """What one quick look at vLLM found (no retries: health checks must be fast)."""

    reachable: bool
    healthy: bool
    latency_ms: float | None
    models: list[dict[str, Any]]
    metrics_text: str | None
    detail: str
    listed: bool = False  # /v1/models answered with a list (`models` is what it said)


async def _quick_get(upstream: Upstream, path: str, wait: float) -> tuple[int, bytes]:
    """One GET within `wait` seconds in all, never retried (health checks must be fast)."""
    async with asyncio.timeout(wait):
        response = await send(upstream, "GET", path)
        try:
            return response.status, await response.read()
        finally:
            await response.aclose()


async def health_check(
    wait: float = 2.0, upstream: Upstream | None = None, *, with_metrics: bool = True
) -> Health:
    upstream = upstream or default_upstream()
    started = time.monotonic()
    try:
        status, _ = await _quick_get(upstream, "/health", wait)
    except (UpstreamError, TimeoutError) as exc:
        return Health(False, False, None, [], None, f"unreachable: {exc.__class__.__name__}")
    latency = round((time.monotonic() - started) * 1000, 2)
    if status != 200:
        return Health(True, False, latency, [], None, f"/health answered HTTP {status}")
    models: list[dict[str, Any]] = []
    listed = False
    metrics_text = None
    detail = "ok"
    try:
        status, answer = await _quick_get(upstream, "/v1/models", wait)
        if status != 200:
            raise UpstreamInvalidResponse(f"/v1/models answered HTTP {status}")
        models = [card for card in orjson.loads(answer).get("data", []) if isinstance(card, dict)]
        listed = True
        if with_metrics:
            status, scraped = await _quick_get(upstream, "/metrics", wait)
            if status == 200:
                metrics_text = scraped.decode(errors="replace")
    except (UpstreamError, TimeoutError, ValueError, AttributeError) as exc:
        detail = f"vLLM is up but did not list its models or metrics: {exc.__class__.__name__}"
    return Health(True, True, latency, models, metrics_text, detail, listed)


async def metrics_text(wait: float = 2.0, upstream: Upstream | None = None) -> str | None:
    """vLLM's /metrics exposition, or None when it does not answer."""
    try:
        status, text = await _quick_get(upstream or default_upstream(), "/metrics", wait)
    except (UpstreamError, TimeoutError):
        return None
    return text.decode(errors="replace") if status == 200 else None


def model_label(model: str, *, accepted: bool) -> str:
    """A bounded metric label: the model when vLLM accepted it (so it serves it) or
    listed it lately, else "other" (clients can send any string)."""
    if accepted or (_models_cache is not None and model in _models_cache[1]):
        return model
    return "other"


def metrics_text_sync(timeout: float = 2.0, upstream: Upstream | None = None) -> str | None:
    """vLLM's /metrics for synchronous callers (the admin), or None."""
    upstream = upstream or default_upstream()
    try:
        with httpx.Client(timeout=timeout, headers=_headers(upstream)) as http:
            response = http.get(upstream.base_url + "/metrics")
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def queue_figures(metrics_text: str | None) -> dict[str, float] | None:
    """Waiting and running requests and KV-cache usage from vLLM's /metrics."""
    if not metrics_text:
        return None
    wanted = {
        "vllm:num_requests_waiting": "waiting",
        "vllm:num_requests_running": "running",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
    }
    figures: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name in wanted:
                figures[wanted[family.name]] = sum(sample.value for sample in family.samples)
    except ValueError:
        return None
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
