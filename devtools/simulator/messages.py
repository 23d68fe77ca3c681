"""The Anthropic Messages API as vLLM 0.32 serves it: POST /v1/messages (plain and
streamed) and POST /v1/messages/count_tokens (tests/wire/vllm-0.32/messages*).

vLLM turns a Messages request into a chat completion (the system prompt becoming a system
message), so the prompt is counted as chat's and the id is chat's (`chatcmpl-<16 hex>`).
FastAPI's validation errors keep OpenAI's shape (vLLM renders them for the whole app);
vLLM's own errors, such as an unknown model, come in Anthropic's shape
(err-messages-unknown-model.json). `max_tokens` is required; the answer stops with
"max_tokens" when it reached it, else "end_turn".

The stream has `event:` lines and no `data: [DONE]`: message_start (input tokens),
content_block_start, one content_block_delta per token, content_block_stop, message_delta
(stop_reason, input and output tokens), message_stop.
"""

from typing import Any

import orjson

from devtools.simulator import validation
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.generation import Generation, Slot, Write, token_json

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _chat_messages(body: dict[str, Any]) -> list[Any]:
    """The chat messages vLLM makes of a Messages request: one system message of the
    `system` field and any system messages, then the others."""
    system: list[str] = []
    chat: list[Any] = []
    parts = [body.get("system")]
    for message in body["messages"]:
        if isinstance(message, dict) and message.get("role") == "system":
            parts.append(message.get("content"))
        else:
            chat.append(message)
    for part in parts:
        if isinstance(part, str) and part:
            system.append(part)
        elif isinstance(part, list):
            system.extend(
                block["text"]
                for block in part
                if isinstance(block, dict) and isinstance(block.get("text"), str)
            )
    if system:
        return [{"role": "system", "content": "".join(system)}, *chat]
    return chat


def _validate(body: dict[str, Any], *, needs_max_tokens: bool) -> None:
    """FastAPI's validation of AnthropicMessagesRequest (or its count_tokens request):
    every error at once, in the model's field order."""
    details: list[dict[str, Any]] = []
    model = body.get("model")
    if model is None:
        details.append(validation.missing("body.model", body))
    elif not isinstance(model, str):
        details.append(validation.wrong_type("body.model", model, str))
    elif not model:
        details.append(validation.value_error("body.model", "Model is required", model))
    messages = body.get("messages")
    if messages is None:
        details.append(validation.missing("body.messages", body))
    elif not isinstance(messages, list):
        details.append(validation.wrong_type("body.messages", messages, list))
    if needs_max_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            details.append(validation.missing("body.max_tokens", body))
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            details.append(validation.wrong_type("body.max_tokens", max_tokens, int))
        elif max_tokens <= 0:
            message = "max_tokens must be positive"
            details.append(validation.value_error("body.max_tokens", message, max_tokens))
    if details:
        raise validation.validation_errors(details)


def plan(config: SimulatorConfig, body: dict[str, Any], request_id: bytes | None) -> Generation:
    """Validate a Messages request as vLLM does; decide what to generate."""
    _validate(body, needs_max_tokens=True)
    try:
        validation.check_model(body, config.model)
        validation.check_temperature(body)
        prompt_tokens = validation.chat_prompt_tokens(_chat_messages(body))
        validation.check_context(config, prompt_tokens)
    except validation.RequestError as exc:
        raise exc.anthropic() from None
    return validation.new_generation(
        config,
        endpoint="messages",
        request_id=validation.completion_id("chatcmpl-", {}, request_id),
        prompt_tokens=prompt_tokens,
        max_tokens=body["max_tokens"],
        stream=body.get("stream") is True,
    )


def count_tokens(config: SimulatorConfig, body: dict[str, Any]) -> bytes:
    """The body of POST /v1/messages/count_tokens (RequestError when vLLM refuses it)."""
    _validate(body, needs_max_tokens=False)
    try:
        validation.check_model(body, config.model)
        tokens = validation.chat_prompt_tokens(_chat_messages(body))
    except validation.RequestError as exc:
        raise exc.anthropic() from None
    return orjson.dumps(
        {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
    )


def _usage(gen: Generation) -> dict[str, int]:
    return {"input_tokens": gen.prompt_tokens, "output_tokens": gen.produced}


def full_response(gen: Generation) -> bytes:
    """The JSON body of a non-streamed answer (vLLM leaves out its None fields)."""
    text = gen.text()
    return orjson.dumps(
        {
            "id": gen.request_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}] if text else [],
            "model": gen.model,
            "stop_reason": _STOP_REASONS[gen.finish_reason],
            "usage": _usage(gen),
        }
    )


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


async def stream(gen: Generation, write: Write, slot: Slot) -> None:
    """Generate gen, writing vLLM's Messages events (one content_block_delta per token)."""
    message: dict[str, Any] = {
        "id": gen.request_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": gen.model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": gen.prompt_tokens, "output_tokens": 0},
    }
    start = _event(b"message_start", orjson.dumps({"type": "message_start", "message": message}))
    block_start = _event(
        b"content_block_start",
        b'{"type":"content_block_start","content_block":{"type":"text","text":""},"index":0}',
    )
    # Each token's event from bytes, as chat's chunks: the per token cost stays small.
    head = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":'
    )
    tail = b'},"index":0}\n\n'

    async def on_token(i: int) -> None:
        delta = head + token_json(gen, i) + tail
        # vLLM starts the message with the first chunk of the chat stream, which comes
        # with the first token.
        await write(start + block_start + delta if i == 0 else delta)

    await slot.produce(gen, on_token)
    end = b"" if gen.n else start  # nothing could be generated: no content block
    if gen.n:
        end += _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
    delta = {"stop_reason": _STOP_REASONS[gen.finish_reason], "stop_sequence": None}
    end += _event(
        b"message_delta",
        orjson.dumps({"type": "message_delta", "delta": delta, "usage": _usage(gen)}),
    )
    end += _event(b"message_stop", b'{"type":"message_stop"}')
    await write(end)
