"""Reading Server-Sent Events bodies as vLLM and the gateway send them: every event one
`data: <payload>` line, events separated by a blank line, the stream ended by
`data: [DONE]`.

    sse_data(raw)  -> ["{...}", "{...}", "[DONE]"]   every payload, in order
    sse_json(raw)  -> [{...}, {...}]                 the JSON chunks, [DONE] checked and left out
"""

from typing import Any

import orjson

DONE = "[DONE]"


def sse_data(raw: bytes | str) -> list[str]:
    """The payload of every event of an SSE body, in order, `[DONE]` included."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    payloads: list[str] = []
    for event in text.split("\n\n"):
        if not event.strip():
            continue
        assert event.startswith("data: ") and "\n" not in event, event
        payloads.append(event.removeprefix("data: "))
    return payloads


def sse_json(raw: bytes | str) -> list[Any]:
    """The JSON chunks of an SSE body that ends with `data: [DONE]` (not in the list)."""
    payloads = sse_data(raw)
    assert payloads and payloads[-1] == DONE, payloads[-3:]
    return [orjson.loads(payload) for payload in payloads[:-1]]
