"""The HTTP server's guards (proxy/http.py), over real sockets against `manage.py serve`:
a head that does not arrive in time or is too large, a body that trickles, an idle
connection, and the file-descriptor limit the serve command raises."""

import contextlib
import json
import resource
import socket
import time
from collections.abc import Iterator

import pytest

from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(tmp_path) -> Iterator[GatewayProcess]:
    env = {
        "TALKTUAH_VAR_DIR": str(tmp_path),
        "REQUEST_HEADER_TIMEOUT": "0.5",
        "REQUEST_BODY_TIMEOUT": "0.5",
        "MAX_REQUEST_HEAD_BYTES": "8192",
        "MAX_REQUEST_BYTES": "1000000",
        "SHUTDOWN_DRAIN_SECONDS": "0",
    }
    with GatewayProcess(env=env) as gateway:
        yield gateway


def answer_of(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def refusal(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_it_answers_408_to_a_head_that_does_not_arrive_in_time(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        status, error = refusal(answer_of(sock))
    assert (status, error["code"]) == (408, "request_timeout")


def test_it_answers_408_to_a_body_that_trickles(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        status, error = refusal(answer_of(sock))
    assert (status, error["code"]) == (408, "request_timeout")


def test_it_answers_431_to_a_head_over_the_limit(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        with contextlib.suppress(OSError):  # it may close before reading all of it
            sock.sendall(
                b"GET /livez HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + b"a" * 100_000
                + b"\r\n\r\n"
            )
        status, error = refusal(answer_of(sock))
    assert (status, error["code"]) == (431, "request_header_fields_too_large")


def test_it_closes_a_connection_that_sends_nothing(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert answer_of(sock) == b""


def test_it_serves_a_head_and_body_that_come_in_pieces_within_the_deadlines(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"POST /v1/chat/completions HTTP/1.1\r\n", b"Host: x\r\n"):
            sock.sendall(piece)
            time.sleep(0.1)
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
        time.sleep(0.1)
        sock.sendall(b"}")
        sock.settimeout(10)
        head = sock.recv(65536)
    # The request went through to the app: no key, so its own 401 (not a guard's answer).
    assert head.startswith(b"HTTP/1.1 401 ")


def test_the_serve_command_raises_its_file_descriptor_limit(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit ({hard}) is not one serve raises to")
    # The gateway inherits a low soft limit (a common default), as under systemd.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        gateway = GatewayProcess(env={"TALKTUAH_VAR_DIR": str(tmp_path)})
        gateway.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        with open(f"/proc/{gateway.process.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
    finally:
        gateway.stop()
    assert line.split()[3] == str(hard)


def test_it_answers_413_to_a_content_length_over_the_limit_before_reading_it(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000001\r\n\r\n{"
        )
        status, error = refusal(answer_of(sock))
    assert (status, error["code"]) == (413, "request_too_large")


def test_it_answers_413_to_a_chunked_body_once_it_passes_the_limit(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (100_000, b" " * 100_000)
        with contextlib.suppress(OSError):  # it closes once past the limit
            for _ in range(11):  # 1.1 MB
                sock.sendall(chunk)
        status, error = refusal(answer_of(sock))
    assert (status, error["code"]) == (413, "request_too_large")
