"""What the proxy accepts: the endpoints it forwards and the checks a request body
passes before it goes to vLLM. The body is otherwise relayed as-is (unknown fields
kept), so it is parsed once with orjson rather than through a schema: this is the hot
path.

orjson reads an integer beyond 64 bits as a float: a body whose `seed` is 2**64 + 1
would reach vLLM, when the gateway rewrites it, as 1.8446744073709552e+19. A body with
19 or more digits in a row (rare: then even in a string) is read again by the stdlib's
json, which keeps every integer exact, and a rewritten body with such an integer is
written by it too."""

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParserError

from plumbing.errors import BadRequest, Dialect, PayloadTooLarge, UnsupportedMediaType


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route the gateway forwards, and what it knows of its API.

    `dialect` is the API's own shape (plumbing.errors.Dialect): how its streams end and
    carry usage (sse.py), and, for Anthropic's, the shape of every error on the route.
    """

    name: str  # the metric label
    path: str  # vLLM's path
    required: str  # the field a body must carry ("" for none the gateway checks)
    stream_default: bool = False
    dialect: Dialect = "openai"
    streams: bool = True  # `stream` asks for SSE
    stream_usage: bool = False  # the gateway asks for the usage chunk (stream_options)
    salted: bool = False  # takes vLLM's `cache_salt`: the gateway sets it per key
    alternative: str = ""  # a field that may stand for `required` (tokenize: messages)
    multipart: bool = False  # a form upload (audio), relayed as sent
    counts_usage: bool = True  # False: what it answers was counted when it was made


# An integer orjson may not keep: beyond -2**63 .. 2**64 - 1 it has 19 digits or more.
_LONG_NUMBER = re.compile(rb"\d{19}")

CHAT = Endpoint(
    "chat_completions", "/v1/chat/completions", "messages", stream_usage=True, salted=True
)
API_CHAT = Endpoint(
    "api_chat",
    "/v1/chat/completions",
    "messages",
    stream_default=True,
    stream_usage=True,
    salted=True,
)
COMPLETIONS = Endpoint("completions", "/v1/completions", "prompt", stream_usage=True, salted=True)
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", "input", stream_usage=True, salted=True)
# Anthropic's Messages API (Claude Code, the anthropic SDKs), which vLLM serves itself.
MESSAGES = Endpoint("messages", "/v1/messages", "messages", dialect="anthropic", salted=True)
COUNT_TOKENS = Endpoint(
    "messages_count_tokens",
    "/v1/messages/count_tokens",
    "messages",
    dialect="anthropic",
    streams=False,
)
# OpenAI's Responses API (the Agents SDK, Codex); GET and cancel by id: stored.py.
RESPONSES = Endpoint("responses", "/v1/responses", "input", dialect="responses", salted=True)
RESPONSE_GET = Endpoint(
    "responses_get", "/v1/responses", "", dialect="responses", counts_usage=False
)
RESPONSE_CANCEL = Endpoint(
    "responses_cancel", "/v1/responses", "", dialect="responses", counts_usage=False
)
TOKENIZE = Endpoint("tokenize", "/tokenize", "prompt", alternative="messages", streams=False)
DETOKENIZE = Endpoint("detokenize", "/detokenize", "tokens", streams=False)
# Served when the model is a reranker or cross-encoder; else vLLM's 404 passes through.
RERANK = Endpoint("rerank", "/v1/rerank", "query", streams=False, salted=True)
SCORE = Endpoint("score", "/v1/score", "", streams=False, salted=True)
TRANSCRIPTIONS = Endpoint(
    "audio_transcriptions", "/v1/audio/transcriptions", "file", multipart=True
)


def wants_stream(body: dict[str, Any], endpoint: Endpoint) -> bool:
    """Whether the answer streams: `stream`, where null means the endpoint's default (as
    OpenAI's API documents it: `boolean or null`)."""
    if not endpoint.streams:
        return False
    stream = body.get("stream")
    return endpoint.stream_default if stream is None else bool(stream)


def openapi_body(endpoint: Endpoint) -> dict[str, Any]:
    """The OpenAPI requestBody of an endpoint: what `parse_body` checks, documented (so
    clients and schema-driven tools know the required field); other fields pass through."""
    properties: dict[str, Any] = {
        "model": {"type": ["string", "null"], "description": "Default: the model vLLM serves now."}
    }
    for name in (endpoint.required, endpoint.alternative):
        if name:
            properties[name] = _FIELD_SCHEMAS.get(name, _TEXT_OR_LIST)
    if endpoint.streams:
        stream_doc = "Stream the answer as SSE" + (
            " (the default here)." if endpoint.stream_default else "."
        )
        properties["stream"] = {
            "type": ["boolean", "null"],  # null: the default
            "default": endpoint.stream_default,
            "description": stream_doc,
        }
    if endpoint.stream_usage:
        properties["stream_options"] = {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    schema["additionalProperties"] = True
    if endpoint.required and endpoint.alternative:
        schema["anyOf"] = [{"required": [endpoint.required]}, {"required": [endpoint.alternative]}]
    elif endpoint.required:
        schema["required"] = [endpoint.required]
    media = "multipart/form-data" if endpoint.multipart else "application/json"
    if endpoint.multipart:
        properties["file"] = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {media: {"schema": schema}}}}


_TEXT_OR_LIST = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]}
_FIELD_SCHEMAS: dict[str, Any] = {
    "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    "tokens": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
    "query": {"type": "string", "minLength": 1},
}


def encode_body(body: dict[str, Any]) -> bytes:
    """A body the gateway changed, as JSON: orjson's, or the stdlib's for an integer
    beyond 64 bits (orjson refuses to write one)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def parse_body(
    *, content_type: str, raw: Callable[[], bytes], endpoint: Endpoint
) -> dict[str, Any]:
    """The JSON object of a request body, checked for what the gateway itself relies on
    (the required field, `model`, `stream`, `stream_options`). `raw` reads the body: it
    raises RequestDataTooBig past MAX_REQUEST_BYTES, and is not called for a wrong type."""
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {content_type or 'none'!r}.",
            code="unsupported_media_type",
        )
    try:
        content = raw()
    except RequestDataTooBig:
        raise PayloadTooLarge("Request body too large.", code="request_too_large") from None
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if _LONG_NUMBER.search(content) is not None:
        # Valid JSON (orjson said so, and refuses a number beyond a double's range, so
        # at most ~309 digits): the same value, with its integers exact.
        body = json.loads(content)
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object.", code="invalid_body")
    _check_required(body, endpoint)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.", param="model", code="invalid_field")
    stream = body.get("stream") if endpoint.streams else None
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream", code="invalid_field")
    options = body.get("stream_options") if endpoint.stream_usage else None
    if options is not None and not isinstance(options, dict):
        raise BadRequest(
            "'stream_options' must be an object.", param="stream_options", code="invalid_field"
        )
    return body


def _check_required(body: dict[str, Any], endpoint: Endpoint) -> None:
    """The field the endpoint needs is there (or its alternative), and `messages` is a
    list: what the gateway itself reads; vLLM checks the rest."""
    if not endpoint.required:
        return
    present = [
        name
        for name in (endpoint.required, endpoint.alternative)
        if name and body.get(name) not in (None, [], "")
    ]
    if not present:
        either = f" or '{endpoint.alternative}'" if endpoint.alternative else ""
        raise BadRequest(
            f"'{endpoint.required}'{either} is required.",
            param=endpoint.required,
            code="missing_field",
        )
    if "messages" in present and not isinstance(body["messages"], list):
        raise BadRequest("'messages' must be a list.", param="messages", code="invalid_field")


def response_id_of(content: bytes) -> str | None:
    """The `id` of a Responses API answer, when it has one."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    found = data.get("id") if isinstance(data, dict) else None
    return found if isinstance(found, str) and found else None


@dataclass(slots=True)
class Form:
    """A multipart form as the client sent it: its plain fields (what the gateway reads:
    model, stream, priority) and its files, to be sent on as they came or, when the
    gateway changed a field, encoded again."""

    type: str  # the Content-Type, with the client's boundary
    fields: dict[str, Any]
    files: list[tuple[str, str, str, bytes]]  # field, file name, content type, content

    def encoded(self, fields: dict[str, Any]) -> tuple[bytes, str]:
        """The form with `fields` for its plain fields, and its new Content-Type."""
        boundary = "talktuah-" + secrets.token_hex(16)
        parts: list[bytes] = []
        for name, value in fields.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"'
                f"\r\n\r\n{value}\r\n".encode()
            )
        for name, filename, content_type, content in self.files:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{_quoted(name)}"; '
                f'filename="{_quoted(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                + content
                + b"\r\n"
            )
        parts.append(f"--{boundary}--\r\n".encode())
        return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def parse_form(request: HttpRequest, endpoint: Endpoint) -> Form:
    """A multipart upload (the audio routes): checked for what the gateway relies on
    (the file, `model`, `stream`), under MAX_REQUEST_BYTES like every body."""
    content_type = request.content_type or ""
    if content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type must be multipart/form-data, got {content_type or 'none'!r}.",
            code="unsupported_media_type",
        )
    try:
        request.body  # noqa: B018 - read (and size-checked) first, so it can be sent on as is
        post, uploaded = request.POST, request.FILES
    except RequestDataTooBig:
        raise PayloadTooLarge("Request body too large.", code="request_too_large") from None
    except (MultiPartParserError, TooManyFieldsSent) as exc:
        raise BadRequest(f"The form could not be read: {exc}", code="invalid_form") from None
    fields: dict[str, Any] = {name: post.get(name) for name in post}
    if "stream" in fields:
        fields["stream"] = str(fields["stream"]).lower() == "true"
    files = [
        (name, item.name or name, item.content_type or "application/octet-stream", item.read())
        for name in uploaded
        for item in uploaded.getlist(name)
    ]
    if endpoint.required and not any(name == endpoint.required for name, *_ in files):
        raise BadRequest(
            f"'{endpoint.required}' (a file) is required.",
            param=endpoint.required,
            code="missing_field",
        )
    return Form(type=request.META.get("CONTENT_TYPE", content_type), fields=fields, files=files)
