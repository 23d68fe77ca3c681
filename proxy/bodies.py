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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig

from plumbing.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the metric label
    path: str  # vLLM's path
    required: str  # the field a body must carry
    stream_default: bool = False


# An integer orjson may not keep: beyond -2**63 .. 2**64 - 1 it has 19 digits or more.
_LONG_NUMBER = re.compile(rb"\d{19}")

CHAT = Endpoint("chat_completions", "/v1/chat/completions", "messages")
API_CHAT = Endpoint("api_chat", "/v1/chat/completions", "messages", stream_default=True)
COMPLETIONS = Endpoint("completions", "/v1/completions", "prompt")
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", "input")


def wants_stream(body: dict[str, Any], endpoint: Endpoint) -> bool:
    """Whether the answer streams: `stream`, where null means the endpoint's default (as
    OpenAI's API documents it: `boolean or null`)."""
    stream = body.get("stream")
    return endpoint.stream_default if stream is None else bool(stream)


def openapi_body(endpoint: Endpoint) -> dict[str, Any]:
    """The OpenAPI requestBody of an endpoint: what `parse_body` checks, documented (so
    clients and schema-driven tools know the required field); other fields pass through."""
    required: dict[str, Any] = (
        {"type": "array", "minItems": 1, "items": {"type": "object"}}
        if endpoint.required == "messages"
        else {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1}]}
    )
    stream_doc = "Stream the answer as SSE" + (
        " (the default here)." if endpoint.stream_default else "."
    )
    schema = {
        "type": "object",
        "required": [endpoint.required],
        "properties": {
            endpoint.required: required,
            "model": {
                "type": ["string", "null"],
                "description": "Default: the model vLLM serves now.",
            },
            "stream": {
                "type": ["boolean", "null"],  # null: the default
                "default": endpoint.stream_default,
                "description": stream_doc,
            },
            "stream_options": {
                "type": ["object", "null"],
                "properties": {"include_usage": {"type": "boolean"}},
            },
        },
        "additionalProperties": True,
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


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
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", param="stream", code="invalid_field")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest(
            "'stream_options' must be an object.", param="stream_options", code="invalid_field"
        )
    return body
