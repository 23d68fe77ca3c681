"""The HTTP/1.1 protocol the gateway serves with (`manage.py serve` runs uvicorn with it):
uvicorn's httptools protocol plus the guards uvicorn does not have, each found by a
hostile client in tests/faults/test_hostile_clients.py:

- a request head (request line and headers) must arrive within REQUEST_HEADER_TIMEOUT,
  and a new connection must send one by then: slowloris trickling header bytes, and idle
  connections, were otherwise held open forever;
- a head over MAX_REQUEST_HEAD_BYTES is a 431: httptools buffers a header of any size
  (a 1 MB Authorization header reached the key check; an endless one grows the memory);
- a request body must arrive whole within REQUEST_BODY_TIMEOUT of its head: one body byte
  a second otherwise pinned a request (and its task) forever;
- a request that is not valid HTTP gets its 400 in OpenAI's shape, not uvicorn's text;
- a body over MAX_REQUEST_BYTES (announced by Content-Length, or as it arrives) is a 413
  at once: Django reads a whole body before any view, so before the key check, and a
  client without a key had 200 MB read (and spooled to disk) before its 401.

The refusals are written here, before any ASGI task runs for them, in OpenAI's error shape
with `Connection: close`. The settings are read from Django's once per process, when the
first connection arrives (uvicorn imports this module before the app sets Django up).

`python -m proxy.http '<uvicorn.run keyword arguments as JSON>'` runs uvicorn with it:
the serve command execs that, in a fresh interpreter (prometheus_client reads
PROMETHEUS_MULTIPROC_DIR when it is first imported).
"""

import asyncio
import functools
import json
import sys
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

PROTOCOL = "proxy.http:GuardedHttpToolsProtocol"


@functools.cache
def _limits() -> tuple[float, float, int, int]:
    from django.conf import settings

    return (
        settings.REQUEST_HEADER_TIMEOUT,
        settings.REQUEST_BODY_TIMEOUT,
        settings.MAX_REQUEST_HEAD_BYTES,
        settings.MAX_REQUEST_BYTES,
    )


def _refusal(status: int, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        )
    )


REQUEST_TIMEOUT = _refusal(408, "The request did not arrive in time.", "request_timeout")
BODY_TOO_LARGE = _refusal(413, "Request body too large.", "request_too_large")
HEAD_TOO_LARGE = _refusal(
    431, "The request line and headers are too large.", "request_header_fields_too_large"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timeout, self._body_timeout, self._max_head, self._max_body = _limits()
        # Bytes of the request head received so far; None once the head is complete.
        self._head_bytes: int | None = 0
        self._body_bytes = 0
        self._body_too_large = False
        self._guard: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends no request at all is closed too.
        self._arm(self._head_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._head_bytes is not None and len(data) > self._max_head - self._head_bytes:
            # Parse only up to the limit: a head still incomplete there is too large.
            room = max(self._max_head - self._head_bytes, 0)
            self._feed(data[:room])
            if self.transport.is_closing():
                return
            if self._head_bytes is not None:
                self._refuse(HEAD_TOO_LARGE)
                return
            data = data[room:]
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        in_head = self._head_bytes is not None
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._body_too_large:
            self._refuse(BODY_TOO_LARGE)
            return
        if self._head_bytes is not None:
            # The head is incomplete after this chunk. If it was already before, the whole
            # chunk was head bytes (a head that began in this chunk counts from the next).
            if in_head:
                self._head_bytes += len(data)
            if self._guard is None:
                self._arm(self._head_timeout, self._head_late)
        elif (
            self._guard is None
            and self.cycle is not None
            and self.cycle.more_body
            and not self.cycle.response_complete
        ):
            # Only a body that did not come whole with its head needs a deadline.
            self._arm(self._body_timeout, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._body_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._disarm()
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > self._max_body:
                # Refused before the app runs: no task, nothing of the body read.
                self._body_too_large = True
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_too_large:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            self._body_too_large = True
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._body_too_large:
            super().on_message_complete()

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._guard = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _head_late(self) -> None:
        self._guard = None
        if self._head_bytes is None or self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing asked, nothing to answer: an idle connection
        else:
            self._refuse(REQUEST_TIMEOUT)

    def _body_late(self) -> None:
        self._guard = None
        if self.transport.is_closing() or self.cycle is None or not self.cycle.more_body:
            return
        if self.cycle.response_started:
            self.transport.close()
        else:
            # The app waiting for the body sees the disconnect and gives up.
            self._refuse(REQUEST_TIMEOUT)

    def send_400_response(self, msg: str) -> None:
        """A request that is not valid HTTP (a header value with a control character,
        a malformed request line): uvicorn's plain-text 400, in OpenAI's shape."""
        self._refuse(_refusal(400, f"Invalid HTTP request: {msg}", "invalid_http_request"))

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if self.cycle is not None:
            self.cycle.keep_alive = False
            if self.cycle.response_started and not self.cycle.response_complete:
                # Too late for an answer: just close.
                self.transport.close()
                return
        self.transport.write(answer)
        self.transport.close()


def main() -> None:
    uvicorn.run(http=PROTOCOL, **json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
