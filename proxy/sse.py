"""The pure core of the streaming relay: vLLM's SSE bytes, cut anywhere by the network,
regrouped into whole events, with the usage chunk read (and dropped when the client did
not ask for it). No I/O here: `relay_stream` in relay.py feeds it what the socket
gives, and the tests feed it every way of cutting a stream."""

from dataclasses import dataclass
from typing import Any

import orjson

from plumbing.errors import Dialect

DONE = b"data: [DONE]\n\n"

# The events that end a stream of Anthropic's Messages API and of the Responses API
# (neither sends `data: [DONE]`), and those that carry usage or the response's id.
_ANTHROPIC_END = frozenset((b"message_stop", b"error"))
_ANTHROPIC_USAGE = frozenset((b"message_start", b"message_delta"))
_RESPONSES_END = frozenset(
    (b"response.completed", b"response.incomplete", b"response.failed", b"error")
)


def usage_of(content: bytes) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a JSON answer or chunk, in OpenAI's shape
    (`prompt_tokens`, `completion_tokens`) or Anthropic's and the Responses API's
    (`input_tokens`, `output_tokens`); zeros without usage."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return 0, 0
    found = data.get("usage") if isinstance(data, dict) else None
    return _tokens(found)


def _tokens(found: Any) -> tuple[int, int]:
    if not isinstance(found, dict):
        return 0, 0
    prompt = found.get("prompt_tokens", found.get("input_tokens"))
    completion = found.get("completion_tokens", found.get("output_tokens"))
    return _count(prompt), _count(completion)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _data_of(event: bytes) -> dict[str, Any] | None:
    """A named event's `data: {...}` (None when it has none or it is not a JSON object)."""
    start = event.find(b"\ndata:")
    if start < 0:
        return None
    try:
        data = orjson.loads(event[start + 6 :])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def is_usage_chunk(event: bytes) -> bool:
    """vLLM's include_usage chunk: no choices, only usage (continuous usage stats ride on
    chunks that have choices, and are kept)."""
    return event.startswith(b"data: {") and b'"choices":[]' in event and b'"usage":' in event


@dataclass(slots=True)
class EventRelay:
    """Feed it chunks as they arrive; it returns the whole events each one completes."""

    strip_usage: bool
    dialect: Dialect = "openai"
    pending: bytes = b""  # the start of an event whose end has not arrived
    usage: tuple[int, int] | None = None  # from the usage chunk, once seen
    finished: bool = False  # the stream's last event went out (`data: [DONE]`, ...)
    response_id: str | None = None  # the Responses API's id, from its first event

    def feed(self, chunk: bytes) -> bytes:
        """What goes to the client now: the events `chunk` completes (a partial event
        waits for its end, never longer), less the usage chunk when it is stripped."""
        self.pending += chunk
        end = self.pending.rfind(b"\n\n")
        if end < 0:
            return b""
        events, self.pending = self.pending[: end + 2], self.pending[end + 2 :]
        if self.dialect != "openai":
            self._read_named(events)
            return events
        if b'"usage":' in events:
            kept = []
            for event in events.split(b"\n\n")[:-1]:
                if is_usage_chunk(event):
                    self.usage = usage_of(event[6:])
                    if self.strip_usage:
                        continue
                kept.append(event + b"\n\n")
            events = b"".join(kept)
        if events.endswith(DONE):
            self.finished = True
        return events

    def _read_named(self, events: bytes) -> None:
        """Anthropic's and the Responses API's streams: usage, the id and the end are in
        named events (message_start/message_delta, response.created/completed)."""
        for event in events.split(b"\n\n")[:-1]:
            if not event.startswith(b"event:"):
                continue
            name = event[6 : event.find(b"\n")].strip() if b"\n" in event else b""
            if self.dialect == "anthropic":
                if name in _ANTHROPIC_USAGE:
                    data = _data_of(event)
                    if data is not None:
                        message = data.get("message")
                        usage = message.get("usage") if isinstance(message, dict) else None
                        self._add_usage(_tokens(usage or data.get("usage")))
                elif name in _ANTHROPIC_END:
                    self.finished = True
            elif name == b"response.created" or name in _RESPONSES_END:
                data = _data_of(event)
                response = data.get("response") if data is not None else None
                if isinstance(response, dict):
                    if self.response_id is None and isinstance(response.get("id"), str):
                        self.response_id = response["id"]
                    self._add_usage(_tokens(response.get("usage")))
                if name in _RESPONSES_END:
                    self.finished = True

    def _add_usage(self, found: tuple[int, int]) -> None:
        # Anthropic's message_delta repeats the counts so far: the largest is the total.
        if found != (0, 0):
            old = self.usage or (0, 0)
            self.usage = (max(old[0], found[0]), max(old[1], found[1]))
