"""The OpenAI Responses API as vLLM 0.32 serves it: POST /v1/responses (plain, streamed,
background), GET /v1/responses/{id} and POST /v1/responses/{id}/cancel
(tests/wire/vllm-0.32/responses*).

`input` is a string or a list of messages, `instructions` a system message before it,
`previous_response_id` continues a stored response (its input and output come first).
Prompt tokens are counted as chat's. The answer is "completed", or "incomplete" with
incomplete_details {"reason": "max_output_tokens"} when it hit the limit.

vLLM stores responses only when started with VLLM_ENABLE_RESPONSES_API_STORE=1 (else it
quietly treats every request as `store: false`); the simulator always stores, and honours
`store: false`. A `background` request answers at once with status "queued" and runs in
the batch without a client; cancel works on it while it is queued or in progress, and
refuses any other ("Cannot cancel a synchronous response.", as vLLM). A streamed
background request is streamed as any other (vLLM's replay of its events on GET ?stream
is not simulated).

The stream has `event:` lines and no `data: [DONE]`; sequence_number counts from 0.
"""

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

import orjson

from devtools.simulator import validation
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.generation import Generation, Slot, Write, token_json

# Responses kept for GET and previous_response_id; the oldest go first past this.
MAX_STORED = 10_000


@dataclass
class Stored:
    """One stored response: its body as GET returns it, the chat messages it continues
    with (its input and its output), and its task while it runs in the background."""

    body: dict[str, Any]
    messages: list[Any]
    task: "asyncio.Task[None] | None" = None


class ResponseStore:
    """The responses of one simulated vLLM, by id (insertion ordered, bounded)."""

    def __init__(self) -> None:
        self._items: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def get(self, response_id: str) -> Stored | None:
        return self._items.get(response_id)

    def put(self, response_id: str, stored: Stored) -> None:
        self._items[response_id] = stored
        while len(self._items) > MAX_STORED:
            self._items.popitem(last=False)


@dataclass
class ResponseRequest:
    """What a Responses request keeps beside its Generation (Generation.extra)."""

    item_id: str  # the output message's id, msg_<16 hex>
    messages: list[Any]  # the prompt as chat messages (previous response's included)
    echo: dict[str, Any]  # the request fields the response object shows
    store: bool
    background: bool


def not_found(response_id: str) -> validation.RequestError:
    return validation.openai_error(
        404, f"Response with id '{response_id}' not found.", "invalid_request_error", "response_id"
    )


def cannot_cancel() -> validation.RequestError:
    return validation.openai_error(
        400, "Cannot cancel a synchronous response.", "invalid_request_error", None
    )


def _input_messages(body: dict[str, Any]) -> list[Any]:
    value = body["input"]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return list(value)
    raise validation.validation_errors([validation.wrong_type("body.input", value, str)])


def plan(config: SimulatorConfig, body: dict[str, Any], store: ResponseStore) -> Generation:
    """Validate a Responses request as vLLM does; decide what to generate."""
    if body.get("input") is None:
        raise validation.validation_errors([validation.missing("body.input", body)])
    validation.check_model(body, config.model)
    validation.check_temperature(body)
    max_output_tokens = validation.optional_int(body, "max_output_tokens")
    validation.check_max_tokens(max_output_tokens)
    previous_id = body.get("previous_response_id")
    previous = None
    if previous_id is not None:
        previous = store.get(str(previous_id))
        if previous is None:
            raise not_found(str(previous_id))

    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    if previous is not None:
        messages.extend(m for m in previous.messages if m.get("role") != "system")
    messages.extend(_input_messages(body))
    prompt_tokens = validation.chat_prompt_tokens(messages)
    if prompt_tokens >= config.max_model_len:
        raise validation.openai_error(
            400,
            f"The engine prompt length {prompt_tokens} exceeds the max_model_len "
            f"{config.max_model_len}. Please reduce prompt.",
            "invalid_request_error",
            None,
        )
    gen = validation.new_generation(
        config,
        endpoint="responses",
        request_id="resp_" + validation.random_hex16(),
        prompt_tokens=prompt_tokens,
        max_tokens=max_output_tokens,
        stream=body.get("stream") is True,
    )
    room = config.max_model_len - prompt_tokens
    echo = {
        "instructions": instructions,
        "metadata": body.get("metadata"),
        "temperature": float(body.get("temperature", 1.0)),
        "tool_choice": body.get("tool_choice", "none"),
        "top_p": float(body.get("top_p", 1.0)),
        "background": body.get("background") is True,
        "max_output_tokens": max_output_tokens if max_output_tokens is not None else room,
        "previous_response_id": previous_id,
        "user": body.get("user"),
    }
    gen.extra = ResponseRequest(
        item_id="msg_" + validation.random_hex16(),
        messages=messages,
        echo=echo,
        store=body.get("store", True) is not False,
        background=echo["background"],
    )
    return gen


def _request(gen: Generation) -> ResponseRequest:
    request: ResponseRequest = gen.extra
    return request


def _response(
    gen: Generation,
    *,
    status: str,
    output: list[Any],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The response object, fields in vLLM's order."""
    echo = _request(gen).echo
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": gen.request_id,
        "created_at": gen.created,
        "incomplete_details": incomplete,
        "instructions": echo["instructions"],
        "metadata": echo["metadata"],
        "model": gen.model,
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": echo["temperature"],
        "tool_choice": echo["tool_choice"],
        "tools": [],
        "top_p": echo["top_p"],
        "background": echo["background"],
        "max_output_tokens": echo["max_output_tokens"],
        "max_tool_calls": None,
        "previous_response_id": echo["previous_response_id"],
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": usage,
        "user": echo["user"],
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


def _part(text: str, logprobs: Any) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _item(gen: Generation, status: str, content: list[Any]) -> dict[str, Any]:
    return {
        "id": _request(gen).item_id,
        "content": content,
        "role": "assistant",
        "status": status,
        "type": "message",
        "phase": None,
    }


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "input_tokens": gen.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": gen.produced,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": gen.prompt_tokens + gen.produced,
    }


def final_response(gen: Generation) -> dict[str, Any]:
    """The response object once gen has produced its tokens."""
    text = gen.text()
    output = [_item(gen, "completed", [_part(text, None)])] if text else []
    status = "incomplete" if gen.finish_reason == "length" else "completed"
    return _response(gen, status=status, output=output, usage=_usage(gen))


def full_response(gen: Generation) -> bytes:
    """The JSON body of a non-streamed answer."""
    return orjson.dumps(final_response(gen))


def queued_response(gen: Generation) -> dict[str, Any]:
    """The response object of a background request before it ran."""
    return _response(gen, status="queued", output=[], usage=None)


def finished(gen: Generation, store: ResponseStore) -> None:
    """Store a response that ran to its end (unless store is false or it was cancelled)."""
    request = _request(gen)
    if not request.store:
        return
    stored = store.get(gen.request_id)
    if stored is not None and stored.body["status"] == "cancelled":
        return
    output = {"role": "assistant", "content": gen.text()}
    store.put(gen.request_id, Stored(final_response(gen), [*request.messages, output]))


def _event(name: str, payload: dict[str, Any], sequence_number: int) -> bytes:
    # vLLM's event models put sequence_number and type last (with `text` between them
    # for output_text.done): insert them in that order.
    data = {**payload, "sequence_number": sequence_number}
    if "text" in payload and name == "response.output_text.done":
        text = data.pop("text")
        data["sequence_number"] = data.pop("sequence_number")
        data["text"] = text
    data["type"] = name
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def preamble(gen: Generation) -> bytes:
    """response.created and response.in_progress: sent as soon as the stream opens, even
    while the request waits for a slot in the batch."""
    response = _response(gen, status="in_progress", output=[], usage=None)
    return _event("response.created", {"response": response}, 0) + _event(
        "response.in_progress", {"response": response}, 1
    )


async def stream(gen: Generation, write: Write, slot: Slot) -> None:
    """Generate gen, writing vLLM's Responses events (one output_text.delta per token)
    after the preamble."""
    item_id = _request(gen).item_id
    opened = _event(
        "response.output_item.added",
        {"item": _item(gen, "in_progress", []), "output_index": 0},
        2,
    ) + _event(
        "response.content_part.added",
        {"content_index": 0, "item_id": item_id, "output_index": 0, "part": _part("", [])},
        3,
    )
    # Each token's event from bytes: the per token cost stays small.
    head = b'event: response.output_text.delta\ndata: {"content_index":0,"delta":'
    middle = b',"item_id":"' + item_id.encode() + b'","logprobs":[],"output_index":0,'
    middle += b'"sequence_number":'
    tail = b',"type":"response.output_text.delta"}\n\n'

    async def on_token(i: int) -> None:
        delta = head + token_json(gen, i) + middle + b"%d" % (4 + i) + tail
        await write(opened + delta if i == 0 else delta)

    await slot.produce(gen, on_token)
    sequence = 4 + gen.produced
    end = b""
    text = gen.text()
    if gen.produced:
        part = _part(text, None)
        end += _event(
            "response.output_text.done",
            {
                "content_index": 0,
                "item_id": item_id,
                "logprobs": [],
                "output_index": 0,
                "text": text,
            },
            sequence,
        )
        end += _event(
            "response.content_part.done",
            {"content_index": 0, "item_id": item_id, "output_index": 0, "part": part},
            sequence + 1,
        )
        end += _event(
            "response.output_item.done",
            {"item": _item(gen, "completed", [part]), "output_index": 0},
            sequence + 2,
        )
        sequence += 3
    else:
        sequence = 2
    end += _event("response.completed", {"response": final_response(gen)}, sequence)
    await write(end)
