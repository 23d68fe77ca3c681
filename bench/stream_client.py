"""The streaming client the benchmark measures with: one keep-alive HTTP/1.1 connection
that POSTs a chat request and times each server-sent event as it is read (time to first
token, total time, gaps between tokens).

Hand-written on asyncio streams on purpose: a measuring client should add as little as
possible to what it measures. It reads only what it needs (the status line, a few
headers, chunked framing, SSE `data:` lines) and takes the time as soon as the bytes are
read, with no HTTP library's pool, response objects and decoding layers between the
socket and the clock; it runs on the core it shares with the upstream, so the less it
does, the less it slows the upstream down. Every target is measured with this same
client, so what it does add cancels out of the differences to direct.

    client = StreamClient(port, "Bearer ...", "/v1/chat/completions")
    sample = await client.stream(body)  # a StreamSample: ttft, total, gaps or error
    client.close()
"""

import asyncio
import itertools
import json
import math
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"  # the benchmark's services all listen on loopback


@dataclass
class StreamSample:
    ttft: float = math.nan  # seconds from the request sent to the first content token
    total: float = math.nan  # ... to `data: [DONE]`
    gaps: list[float] = field(default_factory=list)  # between content tokens, as received
    error: str = ""


class _Events:
    """Splits an SSE body into events and notes when each content token arrived."""

    def __init__(self, first: asyncio.Future[None] | None = None, light: bool = False) -> None:
        self.light = light  # after the first token, count events without parsing them
        self.buffer = b""
        self.arrivals: list[float] = []
        self.done = math.nan
        self.error = ""
        self.first = first

    def feed(self, data: bytes, now: float) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n\n")) >= 0:
            event, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self.data(line[5:].strip(), now)

    def data(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = now
            return
        if self.light and self.arrivals and b'"error"' not in payload:
            self.arrivals.append(now)
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.error = "an event that is not JSON"
            return
        if "error" in chunk:
            self.error = f"error event: {str(chunk['error'])[:200]}"
        choices = chunk.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            self.arrivals.append(now)
            if self.first is not None and not self.first.done():
                self.first.set_result(None)


class StreamClient:
    """One keep-alive connection, one request at a time (as an SDK client holds one)."""

    def __init__(self, port: int, authorization: str, path: str) -> None:
        self.port = port
        self.authorization = authorization  # the Authorization header's value
        self.path = path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Opens the connection unless it is open: callers connect ahead of time so a
        sample's time is the request's, not the TCP handshake's."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = self.reader = None

    async def stream(
        self,
        body: bytes,
        first: asyncio.Future[None] | None = None,
        seconds: float = 60,
        light: bool = False,
    ) -> StreamSample:
        """POSTs `body` (a streaming chat request) and reads the answer to its end, within
        `seconds`. `first`, when given, is resolved at the first content token, or
        cancelled when the stream ends without one (the hold test waits on it). `light`
        counts the events after the first token without parsing them (the saturation
        test, where the client must cost less than what it measures). A failed stream is
        a sample with `error` set; cancelling this hangs up."""
        await self.connect()
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: {self.authorization}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        events = _Events(first, light)
        sample = StreamSample()
        sent = time.perf_counter()
        self.writer.write(head + body)
        try:
            async with asyncio.timeout(seconds):
                status, keep_alive = await self._read_response(self.reader, events)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
            return sample
        except BaseException:
            self.close()  # cancelled: hang up, as a client that leaves does
            raise
        finally:
            if first is not None and not first.done():
                first.cancel()  # this stream will not bring a first token
        if not keep_alive:
            self.close()
        if status != 200:
            sample.error = f"HTTP {status}: {events.buffer[:200]!r}"
        elif events.error:
            sample.error = events.error
        elif not events.arrivals or math.isnan(events.done):
            sample.error = "the stream ended without content or without [DONE]"
        if not sample.error:
            sample.ttft = events.arrivals[0] - sent
            sample.total = events.done - sent
            sample.gaps = [b - a for a, b in itertools.pairwise(events.arrivals)]
        return sample

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, events: _Events) -> tuple[int, bool]:
        """Reads one response into `events`: (its status, whether the connection stays
        open for the next request)."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass  # trailers
                    break
                data = await reader.readexactly(size + 2)
                events.feed(data[:-2], time.perf_counter())
        elif "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
            events.feed(data, time.perf_counter())
        else:
            events.feed(await reader.read(), time.perf_counter())
            return status, False
        return status, headers.get("connection") != "close"
