"""Token generation: deterministic tokens, streamed as vLLM's SSE chunks or returned as
one JSON response, with vLLM's field sets and field order. Tokens come the batch's
token_delay apart, longer when more requests run (devtools.simulator.batch).

Generated text is a cycle of short tokens, so tests can predict it (`generated_text`).
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from devtools.simulator.batch import Batch
from devtools.simulator.config import SYSTEM_FINGERPRINT
from devtools.simulator.metrics import SimulatorMetrics

Write = Callable[[bytes], Awaitable[None]]

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
DONE = b"data: [DONE]\n\n"


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


def token_json(gen: "Generation", index: int) -> bytes:
    """The index-th token of gen as a JSON string."""
    return orjson.dumps(gen.text_of(index)) if gen.reply else _token_json(index)


def generated_text(n: int) -> str:
    """The whole text of n generated tokens."""
    return "".join(token_text(i) for i in range(n))


def reply_tokens(reply: str) -> tuple[str, ...]:
    """A fixed reply as tokens: each word with the whitespace after it."""
    return tuple(re.findall(r"\S+\s*|\s+", reply)) if reply else ()


@dataclass
class Generation:
    """One validated generation request, and how far it got."""

    endpoint: str  # "chat", "completions", "messages" or "responses"
    model: str
    request_id: str
    created: int
    prompt_tokens: int
    n: int  # tokens to generate
    finish_reason: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    produced: int = 0
    reply: tuple[str, ...] = ()  # a fixed reply's tokens (reply_tokens), else the cycle
    # What one API keeps beside (the Responses API: its ids and what it echoes back).
    extra: Any = None

    def text_of(self, index: int) -> str:
        if self.reply:
            return self.reply[index % len(self.reply)]
        return token_text(index)

    def text(self) -> str:
        """The text produced so far."""
        return "".join(self.text_of(i) for i in range(self.produced))


OnToken = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Slot:
    """A generation's slot in the batch (the caller admitted it), where its tokens are
    produced: the batch sets their pace and the metrics count them. started is when the
    request arrived, so the time to first token includes any wait."""

    batch: Batch
    metrics: SimulatorMetrics
    started: float

    async def produce(self, gen: Generation, on_token: OnToken | None = None) -> None:
        """Generate gen.n tokens, counting each as it is produced: each token's delay
        depends on how many run at that moment. on_token(i) follows the i-th token."""
        batch = self.batch
        metrics = self.metrics
        # Without a slowdown the delay is a constant: no call per token, which shows in
        # the benchmarks' CPU time.
        fixed_delay = batch.fixed_token_delay
        for i in range(gen.n):
            delay = batch.token_delay() if fixed_delay is None else fixed_delay
            if delay > 0:
                await asyncio.sleep(delay)
            gen.produced += 1
            metrics.generation_tokens.inc()
            if i == 0:
                metrics.time_to_first_token.observe(time.monotonic() - self.started)
            if on_token is not None:
                await on_token(i)


def _usage_json(gen: Generation, details: bool, completion: int | None = None) -> bytes:
    p = gen.prompt_tokens
    c = gen.produced if completion is None else completion
    tail = b',"completion_tokens_details":null}' if details else b"}"
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d%s' % (
        p,
        p + c,
        c,
        tail,
    )


async def stream(gen: Generation, write: Write, slot: Slot) -> None:
    """Generate gen, writing each token as vLLM's SSE chunk, then usage and [DONE]."""
    # The chunks are assembled from bytes, not dumped from dicts: the simulator is the
    # upstream in benchmarks and must cost little per token.
    chat = gen.endpoint == "chat"
    obj = b"chat.completion.chunk" if chat else b"text_completion"
    envelope = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
        orjson.dumps(gen.request_id),
        obj,
        gen.created,
        orjson.dumps(gen.model),
    )
    head = envelope + (b'[{"index":0,"delta":{"content":' if chat else b'[{"index":0,"text":')
    close = b"}," if chat else b","
    fingerprint = b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"'
    continuous = gen.continuous_usage
    last = gen.n - 1

    def usage(completion: int | None = None) -> bytes:
        if not continuous:
            return b""
        return b',"usage":' + _usage_json(gen, True, completion)

    async def role() -> None:
        await write(
            envelope + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}]'
            + usage(0)
            + b',"prompt_token_ids":null,"prompt_text":null}\n\n'
        )

    def final(token: bytes) -> bytes:
        fields = (
            b'"logprobs":null,"finish_reason":"%s","stop_reason":null,' % gen.finish_reason.encode()
        )
        fields += b'"token_ids":null}]' if chat else b'"prompt_token_ids":null,"token_ids":null}]'
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
        token = orjson.dumps(gen.text_of(i)) if gen.reply else _token_json(i)
        if i == last:
            await write(final(token))
        else:
            await write(head + token + close + middle + usage() + b"}\n\n")

    await slot.produce(gen, on_token)
    if gen.n == 0:  # the prompt filled the context: nothing could be generated
        if chat:
            await role()
        await write(final(b'""'))
    if gen.include_usage:
        await write(envelope + b'[],"usage":' + _usage_json(gen, False) + fingerprint + b"}\n\n")
    await write(DONE)


def full_response(gen: Generation) -> bytes:
    """The JSON body of a non-streamed generation, once gen has produced its tokens."""
    text = gen.text()
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
                "model": gen.model,
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
            "model": gen.model,
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
