"""The one module that talks to the gateway (httpx): a few typed calls and one exception,
GatewayError, carrying the status, the OpenAI-shape error's message and code, and
Retry-After when the gateway sent one. It also decides when a chat request is made
again (RetryPolicy), and says so in the events it streams: the screens only show them.
It also reads how long a reply waited in the gateway's admission queue (a full backend):
the `X-TalkTuah-Queue-Ms` header, or, for a stream the gateway holds and answers at
once with `: queued` comments, the time until its first data."""

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=10.0, pool=5.0)
QUEUE_HEADER = "X-TalkTuah-Queue-Ms"  # how long the request waited for a slot
QUEUED_COMMENT = "queued"  # a held stream's keep-alive comment starts so


class GatewayError(Exception):
    """A refused or failed call; status 0 means the gateway could not be reached."""

    def __init__(
        self, message: str, *, status: int = 0, code: str | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.message}" if self.status else self.message


@dataclass
class Delta:
    """Text of the reply, as it arrives."""

    text: str


@dataclass
class Comment:
    """An SSE comment: the gateway says it is loading a model for this request."""

    text: str


@dataclass
class Queued:
    """The gateway holds the stream until the backend has a free slot: sent with each of
    its `: queued` comments, `seconds` since the gateway answered."""

    seconds: float


@dataclass
class Attempt:
    """The chat request goes out: the first time, or again after Retrying."""

    number: int


@dataclass
class Retrying:
    """The gateway asked to come back later and nothing of the reply had come: the
    request goes out again in `seconds` s. Sent once a second while waiting."""

    error: GatewayError
    seconds: int


@dataclass(frozen=True)
class RetryPolicy:
    """When a chat request is made again: only on a 503 (the gateway is switching models)
    that came before any of the reply, as often as it comes; Esc stops the waiting. The
    wait is the gateway's Retry-After, else `default_seconds`, and never more than
    `max_seconds`, so a finished switch is noticed soon."""

    default_seconds: int = 3
    max_seconds: int = 10

    def delay(self, error: GatewayError, *, replied: bool) -> int | None:
        """Seconds to wait before the next attempt; None: give up, the error stands."""
        if error.status != 503 or replied:
            return None
        return min(error.retry_after or self.default_seconds, self.max_seconds)


@dataclass
class Figures:
    """What a finished reply cost and how fast it came."""

    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_seconds: float | None = None
    tokens_per_second: float | None = None
    queued_seconds: float | None = None  # waited in the gateway for a slot
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        parts = []
        if self.model:
            parts.append(self.model)
        if self.queued_seconds:
            parts.append(f"queued {self.queued_seconds:.1f} s")
        if self.first_token_seconds is not None:
            parts.append(f"first token {self.first_token_seconds * 1000:.0f} ms")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tok/s")
        if self.prompt_tokens is not None:
            parts.append(f"prompt {self.prompt_tokens} tok")
        if self.completion_tokens is not None:
            parts.append(f"completion {self.completion_tokens} tok")
        return " · ".join(parts)


def _error_from(response: httpx.Response, body: bytes) -> GatewayError:
    message, code = response.reason_phrase or "error", None
    try:
        detail = json.loads(body)
    except ValueError:
        detail = None
    if isinstance(detail, dict):
        error = detail.get("error", detail)
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("detail") or message)
            code = error.get("code")
        elif isinstance(detail.get("detail"), str):
            message = detail["detail"]
        elif isinstance(error, str):
            message = error
    try:
        retry_after = int(response.headers.get("Retry-After", "0"))
    except ValueError:
        retry_after = 0
    return GatewayError(
        message,
        status=response.status_code,
        code=str(code) if code else None,
        retry_after=retry_after,
    )


def _unreachable(url: str, exc: httpx.TransportError) -> GatewayError:
    # What the user reads is the URL and the kind of failure, not the exception's repr.
    return GatewayError(f"cannot reach {url} ({type(exc).__name__})")


def _queue_ms(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get(QUEUE_HEADER, "0")), 0.0)
    except ValueError:
        return 0.0


class Gateway:
    """One long-lived AsyncClient against one gateway with one key; always aclose()."""

    def __init__(self, url: str, key: str, *, retry: RetryPolicy | None = None) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _call(self, method: str, path: str, **params: Any) -> Any:
        # Parameters left as None are not sent (e.g. `backend`, optional with one).
        sent = {name: value for name, value in params.items() if value is not None}
        try:
            response = await self.client.request(method, path, params=sent or None)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response, response.content)
        return response.json()

    async def models(self) -> list[str]:
        answer = await self._call("GET", "/v1/models")
        return [str(card["id"]) for card in answer.get("data", [])]

    # The management calls take `backend` (a Backend's name): needed by the gateway when
    # it has several, optional when it has one; None sends none.

    async def model_status(self, backend: str | None = None) -> dict[str, Any]:
        """With several backends and none named: the first's, every one's under
        `backends`."""
        result: dict[str, Any] = await self._call("GET", "/api/model-status", backend=backend)
        return result

    async def loading_status(self, backend: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", "/api/model-loading-status", backend=backend
        )
        return result

    async def switch_model(self, model_id: str, backend: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", "/api/switch-model", model_id=model_id, backend=backend
        )
        return result

    async def download_model(self, model_id: str, backend: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", "/api/download-model", model_id=model_id, backend=backend
        )
        return result

    async def download_progress(self, job_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/api/download-progress", job_id=job_id)
        return result

    async def usage(self) -> dict[str, Any]:
        """/api/usage: the key's own usage and its token quotas (`quota`: each with its
        limit, used, remaining and when it resets)."""
        result: dict[str, Any] = await self._call("GET", "/api/usage", days=1)
        return result

    async def health(self) -> dict[str, Any]:
        """/api/healthz answers 503 with the same body when not ok: both are answers."""
        try:
            response = await self.client.get("/api/healthz")
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code not in (200, 503):
            raise _error_from(response, response.content)
        result: dict[str, Any] = response.json()
        return result

    async def chat(
        self, request: Callable[[], dict[str, Any]], figures: Figures
    ) -> AsyncGenerator[Attempt | Retrying | Queued | Comment | Delta, None]:
        """Stream a chat completion, made again as `self.retry` says: yields each Attempt,
        the reply's text as it arrives, the gateway's comments (Queued for its queue's),
        and a Retrying a second while it waits to try again; an error it does not retry
        is raised. `request()` gives the body, asked before each attempt: a retry sends
        what the conversation holds by then (another model picked while waiting, say).
        Closing the iterator closes the stream, so the gateway and vLLM stop generating."""
        replied = False
        number = 1
        while True:
            yield Attempt(number)
            try:
                async with aclosing(self._chat_once(request(), figures)) as events:
                    async for event in events:
                        replied = replied or isinstance(event, Delta)
                        yield event
                return
            except GatewayError as error:
                wait = self.retry.delay(error, replied=replied)
                if wait is None:
                    raise
                refused = error  # `error` is unbound when the except clause ends
            for left in range(wait, 0, -1):
                yield Retrying(refused, left)
                await asyncio.sleep(1)
            number += 1

    async def _chat_once(
        self, body: dict[str, Any], figures: Figures
    ) -> AsyncGenerator[Delta | Queued | Comment, None]:
        """One streamed chat completion: the reply's text as it arrives, filling `figures`
        (usage from the usage chunk, time to first token, tokens/s, time queued)."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.monotonic()
        first: float | None = None
        held_since: float | None = None  # the gateway answered and holds it in its queue
        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise _error_from(response, await response.aread())
                # A stream admitted before it was answered says how long it waited; one
                # held after its answer cannot (its headers went first): it is timed here.
                figures.queued_seconds = _queue_ms(response) / 1000 or None
                answered = time.monotonic()
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        comment = line[1:].strip()
                        if comment.startswith(QUEUED_COMMENT):
                            held_since = held_since or answered
                            yield Queued(time.monotonic() - held_since)
                        else:
                            yield Comment(comment)
                        continue
                    if not line.startswith("data:"):
                        continue
                    if held_since is not None:
                        figures.queued_seconds = time.monotonic() - held_since
                        held_since = None
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise GatewayError(
                            f"the gateway sent a malformed event: {data[:80]!r}", status=502
                        ) from exc
                    if "error" in chunk:
                        # The gateway's closing event: {"error": {"message", "type",
                        # "code": <HTTP status>}} then [DONE].
                        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        status = error.get("code")
                        raise GatewayError(
                            str(error.get("message") or chunk["error"]),
                            status=status if isinstance(status, int) else 502,
                            code=str(error.get("type") or "stream_error"),
                        )
                    figures.model = chunk.get("model") or figures.model
                    usage = chunk.get("usage")
                    if usage:
                        figures.prompt_tokens = usage.get("prompt_tokens")
                        figures.completion_tokens = usage.get("completion_tokens")
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if first is None:
                                first = time.monotonic()
                                figures.first_token_seconds = first - started
                            yield Delta(text)
        except httpx.TimeoutException as exc:
            raise GatewayError("the gateway stopped answering (timeout)", status=504) from exc
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        finally:
            if first is not None and figures.completion_tokens:
                elapsed = time.monotonic() - first
                if elapsed > 0:
                    figures.tokens_per_second = figures.completion_tokens / elapsed
