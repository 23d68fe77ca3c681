"""A stand-in for a vLLM 0.32 OpenAI-compatible server, for tests, demos and benchmarks.

TalkTuah is a gateway in front of vLLM; running a real vLLM needs a model and a lot of
memory, so this module fakes one. It is a raw ASGI application (no Django, no framework:
full control of the bytes on the wire, and cheap enough to be the upstream in
benchmarks) served by uvicorn, like vLLM itself.

What it reproduces, checked against real captures of vLLM 0.32.0 (see
``tests/devtools/test_simulator.py``):

* the routes ``/health``, ``/version``, ``/v1/models``, ``/v1/chat/completions``,
  ``/v1/completions`` and ``/metrics``, with vLLM's headers, JSON field sets and field
  order, and SSE framing (``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``), including
  ``stream_options.include_usage`` and ``continuous_usage_stats``;
* vLLM's (and FastAPI's) error bodies and status codes, all sent before any SSE byte;
* generation that takes time (``token_delay`` per token) and stops at once when the
  client disconnects, streamed or not, like vLLM aborting a request;
* vLLM's Prometheus metrics that matter to the gateway, with the same names, help
  texts, types and labels, plus ``simulator_*`` counters for tests;
* a loading phase (``startup_delay``) during which connections are refused.

Generated text is a cycle of short deterministic tokens; prompt tokens are counted as
whitespace-separated words (plus a fixed per-message overhead for chat), so tests can
build a prompt of an exact length by repeating a word.

Run it with ``python manage.py vllm_simulator --model NAME --port P``.
"""

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-sim"

# Per chat message overhead and per conversation overhead when counting prompt tokens
# (roughly what a chat template adds around each message).
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PER_CONVERSATION = 3

# The generated text: token i is _TOKENS[i % len(_TOKENS)], except that the first token
# of every later cycle gets a leading space.
_TOKENS = (
    "Hello",
    ",",
    " this",
    " is",
    " the",
    " vLLM",
    " simulator",
    " speaking",
    ".",
    " Tokens",
    " are",
    " cheap",
    " and",
    " fully",
    " deterministic",
    "!",
)
_TOKENS_JSON = tuple(orjson.dumps(t) for t in _TOKENS)
_TOKEN_CYCLE_START_JSON = orjson.dumps(" " + _TOKENS[0])

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"
_METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_VARY = (b"vary", b"Origin")
_DONE = b"data: [DONE]\n\n"
_NOT_FOUND = b'{"detail":"Not Found"}'
_METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


def token_text(index: int) -> str:
    """The text of the index-th generated token (0-based)."""
    text = _TOKENS[index % len(_TOKENS)]
    if index >= len(_TOKENS) and index % len(_TOKENS) == 0:
        return " " + text
    return text


def _token_json(index: int) -> bytes:
    if index >= len(_TOKENS) and index % len(_TOKENS) == 0:
        return _TOKEN_CYCLE_START_JSON
    return _TOKENS_JSON[index % len(_TOKENS)]


def generated_text(n: int) -> str:
    """The whole text of n generated tokens."""
    return "".join(token_text(i) for i in range(n))


@dataclass
class SimulatorConfig:
    """How the simulated vLLM behaves."""

    model: str = "demo-model"  # the served model name
    max_model_len: int = 512
    tokens: int = 16  # tokens generated when the request does not force more
    token_delay: float = 0.02  # seconds before each generated token
    startup_delay: float = 0.0  # seconds of "loading" before the socket is bound
    root: str | None = None  # what vLLM "loaded" (its --model), shown as the card's root


class RequestError(Exception):
    """A request that vLLM would refuse: status and the exact JSON body to send."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _openai_error(status: int, message: str, err_type: str, param: str | None) -> RequestError:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return RequestError(status, orjson.dumps(body))


def _describe_input(value: Any) -> Any:
    """How vLLM shows a rejected input in a validation error message."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return value


def _validation_error(
    err_type: str, loc: str, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> RequestError:
    """A FastAPI request validation error, as vLLM 0.32 renders it."""
    detail: dict[str, Any] = {"type": err_type, "loc": loc, "msg": msg}
    detail["input"] = _describe_input(value)
    if ctx is not None:
        detail["ctx"] = ctx
    return _openai_error(400, f"1 validation error:\n  {detail!r}", "Bad Request", loc)


def _bad_request(message: str, param: str, value: Any) -> RequestError:
    """A vLLM BadRequestError about one request parameter."""
    return _openai_error(
        400, f"{message} (parameter={param}, value={value})", "BadRequestError", param
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _random_hex16() -> str:
    return f"{random.getrandbits(64):016x}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Histogram:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class _Generation:
    """One validated generation request."""

    endpoint: str  # "chat" or "completions"
    request_id: str
    created: int
    prompt_tokens: int
    n: int  # tokens to generate
    finish_reason: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    produced: int = 0


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None = _JSON,
    first: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers: Headers = [*first, (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    headers.append(_VARY)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Simulator:
    """The ASGI application: one simulated vLLM server and its counters."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.started_at = time.time()
        self.num_requests_running = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.request_success = dict.fromkeys(FINISHED_REASONS, 0)
        self.requests_total = 0  # generation requests accepted
        self.http_requests_total = 0  # every HTTP request, any route (for cache tests)
        self.aborted_requests_total = 0  # ... whose client left before the end
        self.rejected_requests_total = 0  # generation requests refused with a 4xx
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.e2e = _Histogram(E2E_BUCKETS)
        self._created = {
            name: time.time() for name in ("prompt_tokens", "generation_tokens", *FINISHED_REASONS)
        }
        self._process_registry = CollectorRegistry(auto_describe=True)
        GCCollector(registry=self._process_registry)
        PlatformCollector(registry=self._process_registry)
        ProcessCollector(registry=self._process_registry)
        self._model_json = orjson.dumps(self.config.model)
        self._routes: dict[str, tuple[str, Callable[[Scope, Receive, Send], Awaitable[None]]]] = {
            "/health": ("GET", self._health),
            "/version": ("GET", self._version),
            "/v1/models": ("GET", self._models),
            "/metrics": ("GET", self._metrics),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.http_requests_total += 1
            route = self._routes.get(scope["path"])
            if route is None:
                await _send_response(send, 404, _NOT_FOUND)
            elif scope["method"] != route[0]:
                allow = [(b"allow", route[0].encode())]
                await _send_response(send, 405, _METHOD_NOT_ALLOWED, first=allow)
            else:
                await route[1](scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    # -- simple routes -------------------------------------------------------------------

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(send, 200, b"", content_type=None)

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(send, 200, orjson.dumps({"version": VLLM_VERSION}))

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        now = int(time.time())
        model = self.config.model
        card = {
            "id": model,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": self.config.root or f"/models/{model}",
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{_random_hex16()}",
                    "object": "model_permission",
                    "created": now,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        await _send_response(send, 200, orjson.dumps({"object": "list", "data": [card]}))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(
            send, 200, self.render_metrics().encode(), content_type=_METRICS_CONTENT_TYPE
        )

    # -- metrics -------------------------------------------------------------------------

    def render_metrics(self) -> str:
        """The Prometheus text exposition of /metrics."""
        model_label = f'model_name="{_escape_label(self.config.model)}"'
        labels = f'engine="0",{model_label}'
        out: list[str] = [generate_latest(self._process_registry).decode()]

        def family(name: str, help_text: str, kind: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            out.extend(f"{sample} {floatToGoString(value)}\n" for sample, value in samples)

        def gauge(name: str, help_text: str, value: float) -> None:
            family(name, help_text, "gauge", [(f"{name}{{{labels}}}", value)])

        def counter(base: str, help_text: str, value: float) -> None:
            family(f"{base}_total", help_text, "counter", [(f"{base}_total{{{labels}}}", value)])
            gauge(f"{base}_created", help_text, self._created[base.removeprefix("vllm:")])

        def histogram(name: str, help_text: str, hist: _Histogram) -> None:
            samples: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                cumulative += count
                le = floatToGoString(bound)
                samples.append((f'{name}_bucket{{engine="0",le="{le}",{model_label}}}', cumulative))
            samples.append((f"{name}_count{{{labels}}}", cumulative))
            samples.append((f"{name}_sum{{{labels}}}", hist.sum))
            family(name, help_text, "histogram", samples)
            gauge(f"{name}_created", help_text, hist.created)

        running = self.num_requests_running
        gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", running
        )
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", 0)
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            min(1.0, running * 0.01),
        )
        counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens_total
        )
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            self.generation_tokens_total,
        )
        success_help = "Count of successfully processed requests."
        family(
            "vllm:request_success_total",
            success_help,
            "counter",
            [
                (
                    f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
                    f"{model_label}}}",
                    count,
                )
                for reason, count in self.request_success.items()
            ],
        )
        family(
            "vllm:request_success_created",
            success_help,
            "gauge",
            [
                (
                    f'vllm:request_success_created{{engine="0",finished_reason="{reason}",'
                    f"{model_label}}}",
                    self._created[reason],
                )
                for reason in FINISHED_REASONS
            ],
        )
        histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            self.ttft,
        )
        histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            self.e2e,
        )
        family(
            "simulator_requests_total",
            "Generation requests the simulator accepted.",
            "counter",
            [("simulator_requests_total", self.requests_total)],
        )
        family(
            "simulator_http_requests_total",
            "HTTP requests of any route, this scrape included.",
            "counter",
            [("simulator_http_requests_total", self.http_requests_total)],
        )
        family(
            "simulator_aborted_requests_total",
            "Generation requests whose client disconnected before the end.",
            "counter",
            [("simulator_aborted_requests_total", self.aborted_requests_total)],
        )
        family(
            "simulator_rejected_requests_total",
            "Generation requests refused with a 4xx error.",
            "counter",
            [("simulator_rejected_requests_total", self.rejected_requests_total)],
        )
        return "".join(out)

    # -- request validation --------------------------------------------------------------

    async def _read_json(self, scope: Scope, receive: Receive) -> dict[str, Any] | None:
        """The request's JSON object; None when the client left; RequestError when bad."""
        body = await _read_body(receive)
        if body is None:
            return None
        content_type = (_header(scope, b"content-type") or b"").decode("latin-1")
        media_type = content_type.split(";", 1)[0].strip().lower()
        data: Any = None
        parse = not content_type or media_type == "application/json"
        if not parse and media_type.startswith("application/"):
            parse = media_type.endswith("+json")
        if parse and not body:
            raise _validation_error("missing", "body", "Field required", None)
        if parse:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                # Re-parse with the stdlib for FastAPI's position and message.
                try:
                    data = json.loads(body)
                except json.JSONDecodeError as exc:
                    raise _validation_error(
                        "json_invalid",
                        f"body.{exc.pos}",
                        "JSON decode error",
                        {},
                        {"error": exc.msg},
                    ) from None
                except UnicodeDecodeError:
                    raise _validation_error(
                        "json_invalid", "body.0", "JSON decode error", {}, {"error": "bad UTF-8"}
                    ) from None
        if media_type != "application/json":
            raise _openai_error(
                400,
                "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
                "Bad Request",
                None,
            )
        if not isinstance(data, dict):
            raise _validation_error(
                "model_attributes_type",
                "body",
                "Input should be a valid dictionary or object to extract fields from",
                data,
            )
        return data

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            return  # vLLM serves its only model when the request names none
        if not isinstance(model, str):
            raise _validation_error(
                "string_type", "body.model", "Input should be a valid string", model
            )
        if model != self.config.model:
            raise _openai_error(
                404,
                f"The model `{model}` does not exist. Valid aliases: {self.config.model}.",
                "NotFoundError",
                "model",
            )

    @staticmethod
    def _optional_number(body: dict[str, Any], key: str) -> float | None:
        value = body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _validation_error(
                "float_type", f"body.{key}", "Input should be a valid number", value
            )
        return float(value)

    @staticmethod
    def _optional_int(body: dict[str, Any], key: str) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _validation_error(
                "int_type", f"body.{key}", "Input should be a valid integer", value
            )
        return value

    @staticmethod
    def _chat_prompt_tokens(messages: list[Any]) -> int:
        words = 0
        for message in messages:
            if not isinstance(message, dict):
                raise _validation_error(
                    "model_type", "body.messages", "Input should be a valid dictionary", message
                )
            content = message.get("content")
            if isinstance(content, str):
                words += len(content.split())
            elif isinstance(content, list):
                for part in content:
                    text = part.get("text") if isinstance(part, dict) else None
                    if isinstance(text, str):
                        words += len(text.split())
        return words + CHAT_TOKENS_PER_MESSAGE * len(messages) + CHAT_TOKENS_PER_CONVERSATION

    @staticmethod
    def _completion_prompt_tokens(body: dict[str, Any]) -> int:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return len(prompt.split())
        if isinstance(prompt, list) and prompt:
            tokens = 0
            for item in prompt:
                if isinstance(item, str):
                    tokens += len(item.split())
                elif isinstance(item, list):
                    tokens += len(item)  # a list of token ids
                elif isinstance(item, int) and not isinstance(item, bool):
                    tokens += 1  # a token id
                else:
                    raise _validation_error(
                        "string_type", "body.prompt", "Input should be a valid string", item
                    )
            return tokens
        raise _openai_error(
            400,
            "Either prompt or prompt_embeds must be provided and non-empty.",
            "BadRequestError",
            None,
        )

    def _plan(self, scope: Scope, body: dict[str, Any], endpoint: str) -> _Generation:
        """Validate a generation request the way vLLM does; decide what to generate."""
        if endpoint == "chat":
            messages = body.get("messages")
            if messages is None:
                raise _validation_error("missing", "body.messages", "Field required", body)
            if not isinstance(messages, list):
                raise _validation_error(
                    "list_type", "body.messages", "Input should be a valid list", messages
                )
        if body.get("stream_options") and not body.get("stream"):
            message = "Stream options can only be defined when `stream=True`."
            raise _validation_error(
                "value_error", "body", f"Value error, {message}", body, {"error": message}
            )
        self._check_model(body)
        temperature = self._optional_number(body, "temperature")
        if temperature is not None and not 0.0 <= temperature <= 2.0:
            raise _bad_request(
                f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature
            )
        max_tokens = self._optional_int(body, "max_tokens")
        if endpoint == "chat":
            max_tokens = self._optional_int(body, "max_completion_tokens") or max_tokens
            prompt_tokens = self._chat_prompt_tokens(body["messages"])
        else:
            prompt_tokens = self._completion_prompt_tokens(body)
        if max_tokens is not None and max_tokens < 1:
            raise _bad_request(
                f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
            )
        max_len = self.config.max_model_len
        if prompt_tokens > max_len:
            raise _bad_request(
                f"This model's maximum context length is {max_len} tokens. However, your "
                f"prompt contains at least {prompt_tokens} input tokens, which exceeds this "
                "limit even without any output tokens. Please reduce the length of the input "
                "prompt.",
                "input_tokens",
                prompt_tokens,
            )
        room = max_len - prompt_tokens
        if body.get("ignore_eos") is True:
            n = max_tokens if max_tokens is not None else room
        else:
            n = min(max_tokens or self.config.tokens, self.config.tokens)
        finish_reason = "length" if n == max_tokens else "stop"
        if n >= room:  # the context is full: vLLM stops for length
            n = room
            finish_reason = "length"

        stream = body.get("stream") is True
        options = body.get("stream_options")
        if not stream or not isinstance(options, dict):
            options = {}
        # As in vLLM, continuous usage stats are only sent along with include_usage.
        include_usage = options.get("include_usage") is True
        continuous = include_usage and options.get("continuous_usage_stats") is True

        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        header_id = _header(scope, b"x-request-id")
        if header_id:
            request_id = prefix + header_id.decode("latin-1")
        elif isinstance(body.get("request_id"), str) and body["request_id"]:
            request_id = prefix + body["request_id"]
        else:
            request_id = prefix + _random_hex16()
        return _Generation(
            endpoint=endpoint,
            request_id=request_id,
            created=int(time.time()),
            prompt_tokens=prompt_tokens,
            n=n,
            finish_reason=finish_reason,
            stream=stream,
            include_usage=include_usage,
            continuous_usage=continuous,
        )

    # -- generation ----------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, "chat")

    async def _completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._generation_endpoint(scope, receive, send, "completions")

    async def _generation_endpoint(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str
    ) -> None:
        try:
            body = await self._read_json(scope, receive)
            if body is None:
                return  # the client left while sending the request
            gen = self._plan(scope, body, endpoint)
        except RequestError as exc:
            self.rejected_requests_total += 1
            await _send_response(send, exc.status, exc.body)
            return

        self.requests_total += 1
        self.num_requests_running += 1
        self.prompt_tokens_total += gen.prompt_tokens
        started = time.monotonic()
        try:
            if gen.stream:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", _SSE), _VARY],
                    }
                )
                work = self._stream(gen, send, started)
            else:
                work = self._produce(gen, started, None)
            completed = await self._until_disconnect(receive, work)
        finally:
            self.num_requests_running -= 1
        if not completed:
            self.aborted_requests_total += 1
            return
        self.request_success[gen.finish_reason] += 1
        self.e2e.observe(time.monotonic() - started)
        if gen.stream:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _send_response(send, 200, self._full_response(gen))

    @staticmethod
    async def _until_disconnect(receive: Receive, work: Coroutine[Any, Any, None]) -> bool:
        """Run work, cancelling it as soon as the client disconnects.

        True when the work ran to its end, False when the client left first.
        """
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()  # re-raise a failure of the work itself
        return True

    async def _produce(
        self,
        gen: _Generation,
        started: float,
        on_token: Callable[[int], Awaitable[None]] | None,
    ) -> None:
        """Generate gen.n tokens, token_delay apart, counting each as it is produced."""
        delay = self.config.token_delay
        for i in range(gen.n):
            if delay > 0:
                await asyncio.sleep(delay)
            gen.produced += 1
            self.generation_tokens_total += 1
            if i == 0:
                self.ttft.observe(time.monotonic() - started)
            if on_token is not None:
                await on_token(i)

    @staticmethod
    def _usage_json(gen: _Generation, details: bool, completion: int | None = None) -> bytes:
        p = gen.prompt_tokens
        c = gen.produced if completion is None else completion
        tail = b',"completion_tokens_details":null}' if details else b"}"
        return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d%s' % (
            p,
            p + c,
            c,
            tail,
        )

    async def _stream(self, gen: _Generation, send: Send, started: float) -> None:
        chat = gen.endpoint == "chat"
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        envelope = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
            orjson.dumps(gen.request_id),
            obj,
            gen.created,
            self._model_json,
        )
        head = envelope + (b'[{"index":0,"delta":{"content":' if chat else b'[{"index":0,"text":')
        close = b"}," if chat else b","
        fingerprint = b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"'
        continuous = gen.continuous_usage
        last = gen.n - 1

        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        def usage(completion: int | None = None) -> bytes:
            if not continuous:
                return b""
            return b',"usage":' + self._usage_json(gen, True, completion)

        async def role() -> None:
            await body(
                envelope + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]'
                + usage(0)
                + b',"prompt_token_ids":null,"prompt_text":null}\n\n'
            )

        def final(token: bytes) -> bytes:
            fields = (
                b'"logprobs":null,"finish_reason":"%s","stop_reason":null,'
                % gen.finish_reason.encode()
            )
            fields += (
                b'"token_ids":null}]' if chat else b'"prompt_token_ids":null,"token_ids":null}]'
            )
            return (
                head
                + token
                + close
                + fields
                + usage()
                + (b"" if gen.include_usage else fingerprint)
                + b"}\n\n"
            )

        middle = (
            b'"logprobs":null,"finish_reason":null,"token_ids":null}]'
            if chat
            else b'"logprobs":null,"finish_reason":null,"stop_reason":null,'
            b'"prompt_token_ids":null,"token_ids":null}]'
        )

        async def on_token(i: int) -> None:
            if chat and i == 0:
                await role()  # vLLM sends the role once the first token is out
            token = _token_json(i)
            if i == last:
                await body(final(token))
            else:
                await body(head + token + close + middle + usage() + b"}\n\n")

        await self._produce(gen, started, on_token)
        if gen.n == 0:  # the prompt filled the context: nothing could be generated
            if chat:
                await role()
            await body(final(b'""'))
        if gen.include_usage:
            await body(
                envelope + b'[],"usage":' + self._usage_json(gen, False) + fingerprint + b"}\n\n"
            )
        await body(_DONE)

    def _full_response(self, gen: _Generation) -> bytes:
        text = generated_text(gen.produced)
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "total_tokens": gen.prompt_tokens + gen.produced,
            "completion_tokens": gen.produced,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
        if gen.endpoint == "chat":
            return orjson.dumps(
                {
                    "id": gen.request_id,
                    "object": "chat.completion",
                    "created": gen.created,
                    "model": self.config.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": text,
                                "refusal": None,
                                "annotations": None,
                                "audio": None,
                                "function_call": None,
                                "reasoning": None,
                            },
                            "logprobs": None,
                            "finish_reason": gen.finish_reason,
                            "stop_reason": None,
                            "token_ids": None,
                            "routed_experts": None,
                        }
                    ],
                    "service_tier": None,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "usage": usage,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "prompt_text": None,
                    "kv_transfer_params": None,
                    "ec_transfer_params": None,
                    "metrics": None,
                }
            )
        return orjson.dumps(
            {
                "id": gen.request_id,
                "object": "text_completion",
                "created": gen.created,
                "model": self.config.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": gen.finish_reason,
                        "stop_reason": None,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )


class _Server(uvicorn.Server):
    """uvicorn's server, calling back once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()


def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8001,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run the simulator until SIGTERM/SIGINT.

    Sleeps config.startup_delay first, before binding the socket, so that connections
    are refused while the "model loads", as with vLLM. on_listening is called once the
    socket accepts connections.
    """
    if config.startup_delay > 0:
        time.sleep(config.startup_delay)
    server_config = uvicorn.Config(
        Simulator(config),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    _Server(server_config, on_listening).run()
