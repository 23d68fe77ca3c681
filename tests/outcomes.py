"""Chat traffic under faults, judged request by request: concurrent clients (streaming
and not) send chat completions, each with its own X-Request-Id, and every answer is put
in exactly one bucket, so a test can say "sent 400: 380 ok, 12 failed cleanly, 8
streams ended with an error event, 0 hangs, 0 lost, 0 answered twice".

- ok: 200 with the whole answer (a stream: chunks, a finish_reason, one `[DONE]`);
- failed_before_stream: an error status with an OpenAI-shape body (no byte of an answer);
- stream_error_event: a stream that started, then ended with the SSE error event and
  `[DONE]`;
- hang: no answer within the client's timeout (the hang detector);
- lost: anything else (a broken body, a stream cut without the error event, a reset).

`answered_twice` counts answers that carry another request's id, or several answers in
one stream; `answer_log_repeats` reads the simulator's answer log (one line per request
it started to answer) for ids answered more than once, across restarts.
"""

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

BUCKETS = ("ok", "failed_before_stream", "stream_error_event", "hang", "lost")


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)  # of failed_before_stream
    answered_twice: int = 0
    ids: list[str] = field(default_factory=list)
    ok_ids: list[str] = field(default_factory=list)
    lost_samples: list[str] = field(default_factory=list)
    error_messages: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0  # served to the clients in their answers' usage
    completion_tokens: int = 0

    @property
    def sent(self) -> int:
        return len(self.ids)

    def lose(self, rid: str, why: str) -> None:
        self.counts["lost"] += 1
        if len(self.lost_samples) < 5:
            self.lost_samples.append(f"{rid}: {why}")

    def figures(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "ok": self.counts["ok"],
            "failed cleanly before stream": self.counts["failed_before_stream"],
            "streams ended with error event": self.counts["stream_error_event"],
            "hangs": self.counts["hang"],
            "lost": self.counts["lost"],
            "answered twice": self.answered_twice,
        }


def _error_of(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error:
        return error
    return None


def _judge_whole(out: Outcomes, rid: str, status: int, body: bytes) -> None:
    if status != 200:
        error = _error_of(body)
        if error is None:
            out.lose(rid, f"{status} without an OpenAI-shape error: {body[:200]!r}")
            return
        out.counts["failed_before_stream"] += 1
        out.statuses[status] += 1
        out.error_messages[error["message"][:60]] += 1
        return
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        out.lose(rid, f"200 with a broken body: {body[:200]!r}")
        return
    if data.get("id") != f"chatcmpl-{rid}":
        out.answered_twice += 1  # somebody else's answer
    if not data.get("choices") or not data["choices"][0].get("finish_reason"):
        out.lose(rid, f"200 without a finished choice: {body[:200]!r}")
        return
    usage = data.get("usage") or {}
    out.prompt_tokens += int(usage.get("prompt_tokens") or 0)
    out.completion_tokens += int(usage.get("completion_tokens") or 0)
    out.counts["ok"] += 1
    out.ok_ids.append(rid)


def _judge_stream(out: Outcomes, rid: str, raw: bytes) -> None:
    events = [event for event in raw.decode(errors="replace").split("\n\n") if event.strip()]
    payloads = [event.removeprefix("data: ") for event in events if event.startswith("data: ")]
    if payloads.count("[DONE]") > 1:
        out.answered_twice += 1
    if not payloads or payloads[-1] != "[DONE]":
        out.lose(rid, f"stream without [DONE] at its end: {raw[-200:]!r}")
        return
    chunks = []
    for payload in payloads[:-1]:
        try:
            chunks.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            out.lose(rid, f"stream with a broken event: {payload[:200]!r}")
            return
    errors = [chunk["error"] for chunk in chunks if "error" in chunk]
    answers = [chunk for chunk in chunks if "error" not in chunk]
    if {chunk.get("id") for chunk in answers} - {f"chatcmpl-{rid}"}:
        out.answered_twice += 1  # two answers, or another request's, in one stream
    finishes = [c for chunk in answers for c in chunk.get("choices", []) if c.get("finish_reason")]
    if len(finishes) > 1:
        out.answered_twice += 1
    if errors:
        if len(errors) != 1 or "error" not in chunks[-1]:
            out.lose(rid, f"error event not at the end: {raw[-300:]!r}")
            return
        out.counts["stream_error_event"] += 1
        out.error_messages[errors[0].get("message", "")[:60]] += 1
        return
    if not finishes:
        out.lose(rid, f"stream ended with [DONE] but no finish_reason: {raw[-300:]!r}")
        return
    for chunk in answers:
        usage = chunk.get("usage") or {}
        out.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        out.completion_tokens += int(usage.get("completion_tokens") or 0)
    out.counts["ok"] += 1
    out.ok_ids.append(rid)


async def _one(
    client: httpx.AsyncClient, out: Outcomes, *, key: str, model: str, stream: bool
) -> None:
    rid = uuid.uuid4().hex
    out.ids.append(rid)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"fault run {rid[:6]}"}],
        "max_tokens": 16,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": rid}
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            raw = await response.aread()
            sse = response.headers.get("content-type", "").startswith("text/event-stream")
    except httpx.TimeoutException:
        out.counts["hang"] += 1
        return
    except httpx.HTTPError as exc:
        out.lose(rid, f"transport error: {exc!r}")
        return
    if stream and sse and response.status_code == 200:
        _judge_stream(out, rid, raw)
    else:
        _judge_whole(out, rid, response.status_code, raw)


async def drive(
    base_url: str,
    *,
    key: str,
    model: str,
    seconds: float,
    clients: int = 8,
    client_timeout: float = 20.0,
    pause: float = 0.0,
    stop: asyncio.Event | None = None,
    out: Outcomes | None = None,
) -> Outcomes:
    """`clients` concurrent clients, half streaming, each sending one request after the
    other for `seconds` (or until `stop` is set), pausing `pause` s between requests;
    every answer judged (see the module's docstring) into `out`, which the caller may
    read while the clients run."""
    out = out if out is not None else Outcomes()
    deadline = time.monotonic() + seconds
    stop = stop or asyncio.Event()

    async def client_loop(index: int) -> None:
        stream = index % 2 == 0
        # One connection pool per client, as separate users would have.
        async with httpx.AsyncClient(base_url=base_url, timeout=client_timeout) as client:
            while time.monotonic() < deadline and not stop.is_set():
                await _one(client, out, key=key, model=model, stream=stream)
                stream = not stream if index % 4 == 3 else stream  # some clients mix
                if pause:
                    await asyncio.sleep(pause)

    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return out


def answer_log(path: Path) -> Counter[str]:
    """How many times the simulator's answer log shows each request id answered."""
    if not path.exists():
        return Counter()
    return Counter(line for line in path.read_text().splitlines() if line)


def answer_log_repeats(path: Path) -> dict[str, int]:
    """Request ids the simulator's answer log shows answered more than once."""
    return {rid: n for rid, n in answer_log(path).items() if n > 1}
