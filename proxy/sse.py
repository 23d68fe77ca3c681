"""The pure core of the streaming relay: vLLM's SSE bytes, cut anywhere by the network,
regrouped into whole events, with the usage chunk read (and dropped when the client did
not ask for it). No I/O here: `relay_stream` in relay.py feeds it what the socket
gives, and the tests feed it every way of cutting a stream."""

from dataclasses import dataclass

import orjson

DONE = b"data: [DONE]\n\n"


def usage_of(content: bytes) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a JSON answer or chunk; zeros without usage."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return 0, 0
    found = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return 0, 0
    return int(found.get("prompt_tokens") or 0), int(found.get("completion_tokens") or 0)


def is_usage_chunk(event: bytes) -> bool:
    """vLLM's include_usage chunk: no choices, only usage (continuous usage stats ride on
    chunks that have choices, and are kept)."""
    return event.startswith(b"data: {") and b'"choices":[]' in event and b'"usage":' in event


@dataclass(slots=True)
class EventRelay:
    """Feed it chunks as they arrive; it returns the whole events each one completes."""

    strip_usage: bool
    pending: bytes = b""  # the start of an event whose end has not arrived
    usage: tuple[int, int] | None = None  # from the usage chunk, once seen
    finished: bool = False  # `data: [DONE]` went out

    def feed(self, chunk: bytes) -> bytes:
        """What goes to the client now: the events `chunk` completes (a partial event
        waits for its end, never longer), less the usage chunk when it is stripped."""
        self.pending += chunk
        end = self.pending.rfind(b"\n\n")
        if end < 0:
            return b""
        events, self.pending = self.pending[: end + 2], self.pending[end + 2 :]
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
