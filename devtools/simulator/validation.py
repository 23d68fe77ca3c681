"""Request validation as vLLM 0.32 does it: which bodies it refuses, with which status
and exact error body (FastAPI's validation errors rendered in OpenAI's shape, vLLM's
BadRequestError, its NotFoundError for an unknown model), and what a valid request asks
to generate (`plan`).

Prompt tokens are counted as whitespace-separated words (plus a fixed per-message
overhead for chat), so tests can build a prompt of an exact length by repeating a word.
"""

import json
import random
import time
from typing import Any

import orjson

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.generation import Generation, reply_tokens

# Per chat message overhead and per conversation overhead when counting prompt tokens
# (roughly what a chat template adds around each message).
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PER_CONVERSATION = 3


class RequestError(Exception):
    """A request that vLLM would refuse: status and the exact JSON body to send.

    message and err_type are set for vLLM's own errors (not FastAPI's validation
    errors), which the Messages API renders again in Anthropic's shape (`anthropic`).
    """

    def __init__(
        self,
        status: int,
        body: bytes,
        message: str | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.message = message
        self.err_type = err_type

    def anthropic(self) -> "RequestError":
        """This error as vLLM's /v1/messages sends it: FastAPI's validation errors keep
        OpenAI's shape (a handler for the whole app renders them), vLLM's own errors
        become Anthropic's {"type": "error", "error": {"type", "message"}}."""
        if self.message is None or self.err_type is None:
            return self
        error = {"type": self.err_type, "message": self.message}
        return RequestError(self.status, orjson.dumps({"type": "error", "error": error}))


def random_hex16() -> str:
    return f"{random.getrandbits(64):016x}"


def openai_error(status: int, message: str, err_type: str, param: str | None) -> RequestError:
    """One of vLLM's own errors (its ErrorResponse), in OpenAI's shape."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return RequestError(status, orjson.dumps(body), message, err_type)


def _fastapi_error(message: str, param: str | None) -> RequestError:
    """A 400 from FastAPI's request validation, as vLLM's app-wide handler renders it."""
    body = {"error": {"message": message, "type": "Bad Request", "param": param, "code": 400}}
    return RequestError(400, orjson.dumps(body))


def _describe_input(value: Any) -> Any:
    """How vLLM shows a rejected input in a validation error message."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return value


def validation_detail(
    err_type: str, loc: str, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One of pydantic's errors in a FastAPI validation error, as vLLM 0.32 shows it."""
    detail: dict[str, Any] = {"type": err_type, "loc": loc, "msg": msg}
    detail["input"] = _describe_input(value)
    if ctx is not None:
        detail["ctx"] = ctx
    return detail


def validation_errors(details: list[dict[str, Any]]) -> RequestError:
    """A FastAPI request validation error of one or more details, as vLLM 0.32 renders
    it: `N validation error(s):` and one line per detail; param is the first's loc."""
    label = "error" if len(details) == 1 else "errors"
    lines = "".join(f"\n  {detail!r}" for detail in details)
    return _fastapi_error(f"{len(details)} validation {label}:{lines}", details[0]["loc"])


def _validation_error(
    err_type: str, loc: str, msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> RequestError:
    """A FastAPI request validation error of one detail."""
    return validation_errors([validation_detail(err_type, loc, msg, value, ctx)])


def missing(loc: str, body: dict[str, Any]) -> dict[str, Any]:
    """The detail of a required field that the body lacks."""
    return validation_detail("missing", loc, "Field required", body)


# pydantic's error type and message for a value that is not of the type a field wants.
_TYPE_ERRORS = {
    str: ("string_type", "Input should be a valid string"),
    int: ("int_type", "Input should be a valid integer"),
    float: ("float_type", "Input should be a valid number"),
    list: ("list_type", "Input should be a valid list"),
}


def wrong_type(loc: str, value: Any, expected: type) -> dict[str, Any]:
    """The detail of a field whose value is not the expected str, int, float or list."""
    err_type, msg = _TYPE_ERRORS[expected]
    return validation_detail(err_type, loc, msg, value)


def value_error(loc: str, message: str, value: Any) -> dict[str, Any]:
    """The detail of a field that a validator of the request model refused."""
    return validation_detail(
        "value_error", loc, f"Value error, {message}", value, {"error": message}
    )


def _bad_request(message: str, param: str, value: Any) -> RequestError:
    """A vLLM BadRequestError about one request parameter."""
    return openai_error(
        400, f"{message} (parameter={param}, value={value})", "BadRequestError", param
    )


def parse_json(body: bytes, content_type: str) -> dict[str, Any]:
    """The request's JSON object; RequestError when vLLM would refuse the body."""
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
        raise _fastapi_error(
            "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
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


def check_model(body: dict[str, Any], served: str) -> None:
    """Refuse a model this server does not serve, with vLLM's 404 (None means served)."""
    model = body.get("model")
    if model is None:
        return  # vLLM serves its only model when the request names none
    if not isinstance(model, str):
        raise validation_errors([wrong_type("body.model", model, str)])
    if model != served:
        raise openai_error(
            404,
            f"The model `{model}` does not exist. Valid aliases: {served}.",
            "NotFoundError",
            "model",
        )


def _optional_number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise validation_errors([wrong_type(f"body.{key}", value, float)])
    return float(value)


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation_errors([wrong_type(f"body.{key}", value, int)])
    return value


def chat_prompt_tokens(messages: list[Any]) -> int:
    """Prompt tokens of chat messages: their words plus the chat template's overhead."""
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
                raise validation_errors([wrong_type("body.prompt", item, str)])
        return tokens
    raise openai_error(
        400,
        "Either prompt or prompt_embeds must be provided and non-empty.",
        "BadRequestError",
        None,
    )


def check_temperature(body: dict[str, Any]) -> None:
    temperature = _optional_number(body, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise _bad_request(
            f"temperature must be in [0, 2], got {temperature}.", "temperature", temperature
        )


def check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise _bad_request(
            f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens
        )


def check_context(config: SimulatorConfig, prompt_tokens: int) -> None:
    """Refuse a prompt over the context length, as vLLM does before generating."""
    max_len = config.max_model_len
    if prompt_tokens > max_len:
        raise _bad_request(
            f"This model's maximum context length is {max_len} tokens. However, your "
            f"prompt contains at least {prompt_tokens} input tokens, which exceeds this "
            "limit even without any output tokens. Please reduce the length of the input "
            "prompt.",
            "input_tokens",
            prompt_tokens,
        )


def tokens_to_generate(
    config: SimulatorConfig, prompt_tokens: int, max_tokens: int | None, ignore_eos: bool
) -> tuple[int, str]:
    """How many tokens a valid request gets, and why it stops ("length" or "stop"):
    config.tokens, then "EOS", unless max_tokens or the context length comes first."""
    room = config.max_model_len - prompt_tokens
    if ignore_eos:
        n = max_tokens if max_tokens is not None else room
    else:
        n = min(max_tokens or config.tokens, config.tokens)
    finish_reason = "length" if n == max_tokens else "stop"
    if n >= room:  # the context is full: vLLM stops for length
        n = room
        finish_reason = "length"
    return n, finish_reason


def new_generation(
    config: SimulatorConfig,
    *,
    endpoint: str,
    request_id: str,
    prompt_tokens: int,
    max_tokens: int | None,
    ignore_eos: bool = False,
    stream: bool = False,
    include_usage: bool = False,
    continuous_usage: bool = False,
) -> Generation:
    """The Generation of a request that passed validation."""
    n, finish_reason = tokens_to_generate(config, prompt_tokens, max_tokens, ignore_eos)
    return Generation(
        endpoint=endpoint,
        model=config.model,
        request_id=request_id,
        created=int(time.time()),
        prompt_tokens=prompt_tokens,
        n=n,
        finish_reason=finish_reason,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        reply=reply_tokens(config.reply) if config.reply else (),
    )


def completion_id(prefix: str, body: dict[str, Any], request_id: bytes | None) -> str:
    """vLLM's id for a completion: the X-Request-Id header, else the body's request_id,
    else 16 random hex digits, after prefix."""
    if request_id:
        return prefix + request_id.decode("latin-1")
    if isinstance(body.get("request_id"), str) and body["request_id"]:
        return prefix + body["request_id"]
    return prefix + random_hex16()


def plan(
    config: SimulatorConfig, body: dict[str, Any], endpoint: str, request_id: bytes | None
) -> Generation:
    """Validate a chat or completions request the way vLLM does; decide what to generate.

    endpoint is "chat" or "completions"; request_id is the X-Request-Id header, if any.
    """
    if endpoint == "chat":
        messages = body.get("messages")
        if messages is None:
            raise _validation_error("missing", "body.messages", "Field required", body)
        if not isinstance(messages, list):
            raise validation_errors([wrong_type("body.messages", messages, list)])
    if body.get("stream_options") and not body.get("stream"):
        message = "Stream options can only be defined when `stream=True`."
        raise validation_errors([value_error("body", message, body)])
    check_model(body, config.model)
    check_temperature(body)
    max_tokens = optional_int(body, "max_tokens")
    if endpoint == "chat":
        max_tokens = optional_int(body, "max_completion_tokens") or max_tokens
        prompt_tokens = chat_prompt_tokens(body["messages"])
    else:
        prompt_tokens = _completion_prompt_tokens(body)
    check_max_tokens(max_tokens)
    check_context(config, prompt_tokens)

    stream = body.get("stream") is True
    options = body.get("stream_options")
    if not stream or not isinstance(options, dict):
        options = {}
    # As in vLLM, continuous usage stats are only sent along with include_usage.
    include_usage = options.get("include_usage") is True
    return new_generation(
        config,
        endpoint=endpoint,
        request_id=completion_id("chatcmpl-" if endpoint == "chat" else "cmpl-", body, request_id),
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        ignore_eos=body.get("ignore_eos") is True,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=include_usage and options.get("continuous_usage_stats") is True,
    )
