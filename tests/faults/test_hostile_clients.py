"""Hostile clients against the gateway as production runs it (`manage.py serve`, a real
process): each attack lasts a few seconds while a well-behaved client sends chat
completions, and the lane prints that client's p50 and failures during the attack next to
its p50 just before it, on the same gateway. Then each attack's own answer is checked:
a clean 4xx in OpenAI's shape (or a closed connection where HTTP allows no answer), never
a 500, a reset or a connection held open forever, and the gateway keeps serving."""

import contextlib
import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.conftest import report
from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ATTACK_SECONDS = 3.0
# Short guards, so an attack shows its effect within seconds (production defaults are longer).
GUARD_ENV = {
    "REQUEST_HEADER_TIMEOUT": "2",
    "REQUEST_BODY_TIMEOUT": "2",
    "SHUTDOWN_DRAIN_SECONDS": "0",
}


class WellBehavedClient:
    """Sequential non-streaming chat completions on one keep-alive connection, timed."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}

    def run(self, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        failures: list[str] = []
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = client.post("/v1/chat/completions", json=CHAT, headers=self.headers)
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                    continue
                if response.status_code != 200:
                    failures.append(str(response.status_code))
                    continue
                latencies.append(time.perf_counter() - started)
        p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
        return {"p50_ms": round(p50, 1), "requests": len(latencies), "failures": len(failures)}


@pytest.fixture
def hostile(simulator, make_key, tmp_path) -> Iterator[tuple[GatewayProcess, str]]:
    sim = simulator(tokens=4, token_delay=0.001)
    key = make_key(name="well-behaved", rpm_limit=1_000_000)
    env = {"VLLM_BASE_URL": sim.url, "TALKTUAH_VAR_DIR": str(tmp_path), **GUARD_ENV}
    with GatewayProcess(env=env) as server:
        yield server, key


def under_attack(
    server: GatewayProcess, key: str, attack: Callable[[threading.Event], object]
) -> tuple[dict[str, Any], dict[str, Any], object]:
    """The well-behaved client's figures before and during `attack` (run in a thread
    until the event is set); returns both and what the attack returned."""
    client = WellBehavedClient(server.url, key)
    client.run(0.5)  # warm-up: connections, key cache, served-model cache
    before = client.run(ATTACK_SECONDS)
    stop = threading.Event()
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(attack(stop)), daemon=True)
    thread.start()
    time.sleep(0.3)  # let the attack get going
    during = client.run(ATTACK_SECONDS)
    stop.set()
    thread.join(30)
    assert outcome, "the attack did not finish"
    return before, during, outcome[0]


def connect(server: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed (or reset) this connection; reads what it sent."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and len(chunks) > 0:
                sock.settimeout(0.5)
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def slowloris(server: GatewayProcess, *, connections: int, head: bytes, trickle: bytes):
    """`connections` sockets send `head`, then one byte of `trickle` a second until told
    to stop; returns how many the server had closed by then."""

    def attack(stop: threading.Event) -> dict[str, int]:
        socks = []
        for _ in range(connections):
            sock = connect(server)
            sock.sendall(head)
            socks.append(sock)
        sent = 0
        while not stop.wait(1.0):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
            sent += 1
        closed = sum(closed_by_server(sock) for sock in socks)
        for sock in socks:
            sock.close()
        return {"connections": connections, "closed_by_gateway": closed}

    return attack


@pytest.mark.timeout(120)
def test_slowloris_headers_one_byte_a_second(hostile):
    server, key = hostile
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    attack = slowloris(server, connections=200, head=head, trickle=b"X-Slow: " + b"a" * 64)
    before, during, outcome = under_attack(server, key, attack)
    report("slowloris, headers 1 byte/s, 200 connections", before=before, during=during, **outcome)
    assert during["failures"] == 0
    # REQUEST_HEADER_TIMEOUT (2 s here) closes a head that does not complete.
    assert outcome["closed_by_gateway"] == 200


@pytest.mark.timeout(120)
def test_slowloris_body_one_byte_a_second(hostile):
    server, key = hostile
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    attack = slowloris(server, connections=200, head=head, trickle=b" ")
    before, during, outcome = under_attack(server, key, attack)
    report("slowloris, body 1 byte/s, 200 connections", before=before, during=during, **outcome)
    assert during["failures"] == 0
    assert outcome["closed_by_gateway"] == 200


@pytest.mark.timeout(120)
def test_a_thousand_idle_connections(hostile):
    server, key = hostile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:  # this test process holds the 1,000 client sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))

    def attack(stop: threading.Event) -> dict[str, int]:
        socks = [connect(server) for _ in range(1000)]
        stop.wait(30)
        closed = sum(closed_by_server(sock) for sock in socks)
        for sock in socks:
            sock.close()
        return {"connections": 1000, "closed_by_gateway": closed}

    with open(f"/proc/{server.process.pid}/limits") as limits:
        nofile = next(line for line in limits if line.startswith("Max open files")).split()[3]
    before, during, outcome = under_attack(server, key, attack)
    report(
        "1,000 idle connections",
        gateway_fd_soft_limit=nofile,
        before=before,
        during=during,
        **outcome,
    )
    assert during["failures"] == 0
    assert int(nofile) >= 4096
    assert outcome["closed_by_gateway"] == 1000


def openai_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    return error


def test_a_body_just_over_the_limit_is_a_413(hostile):
    server, key = hostile
    limit = 10 * 1024 * 1024  # MAX_REQUEST_BYTES's default
    body = b'{"messages": "' + b"x" * (limit + 1 - 16) + b'"}'
    assert len(body) == limit + 1
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        sized = client.post("/v1/chat/completions", content=body, headers=headers)
        chunked = client.post(
            "/v1/chat/completions", content=iter([body[: limit // 2], body[limit // 2 :]]),
            headers=headers,
        )  # fmt: skip
        after = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    report(
        "body of MAX_REQUEST_BYTES + 1",
        content_length=sized.status_code,
        chunked=chunked.status_code,
    )
    assert sized.status_code == 413 and openai_error(sized)["code"] == "request_too_large"
    assert chunked.status_code == 413 and openai_error(chunked)["code"] == "request_too_large"
    assert after.status_code == 200


def test_an_endless_body_without_a_key_is_cut_off_at_the_limit(hostile):
    """Django reads a whole body before any view (and so before the key check) runs: a
    body of any size, chunked or announced, was read to the end (spooled to disk) first."""
    server, _key = hostile
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        chunk = b" " * 1024 * 1024
        for _ in range(200):  # 200 MB, or until the gateway stops reading
            sent += len(chunk)
            yield chunk

    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        status: object = httpx.post(
            f"{server.url}/v1/chat/completions", content=endless(), headers=headers, timeout=60
        ).status_code
    except httpx.HTTPError as exc:  # the gateway answered and closed while we were sending
        status = type(exc).__name__
    seconds = time.perf_counter() - started
    sock = connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 209715200\r\n\r\n{"
    )
    announced_status = status_of(read_answer(sock, timeout=5))
    sock.close()
    report(
        "200 MB body without a key",
        chunked=status,
        mb_sent_before_the_answer=sent // 2**20,
        seconds=round(seconds, 2),
        content_length_200_mb=announced_status,
    )
    assert sent <= 32 * 2**20  # cut off near MAX_REQUEST_BYTES (10 MB), not read to the end
    assert announced_status == 413


def test_deeply_nested_json_is_a_400(hostile):
    server, key = hostile
    depth = 100_000
    nested = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    statuses = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path in ("/v1/chat/completions", "/api/chat", "/v1/completions", "/v1/embeddings"):
            response = client.post(path, content=nested, headers=headers)
            statuses[path] = response.status_code
            assert response.status_code == 400, (path, response.text[:300])
            assert openai_error(response)["code"] == "invalid_json"
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    report(f"JSON nested {depth:,} levels", **statuses)


def test_invalid_utf8_in_the_body_is_a_400(hostile):
    server, key = hostile
    body = b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3("}]}'
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/v1/chat/completions", content=body, headers=headers)
        report("invalid UTF-8 in the body", status=response.status_code)
        assert response.status_code == 400
        assert openai_error(response)["code"] == "invalid_json"
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200


@pytest.mark.timeout(120)
def test_huge_messages_arrays(hostile):
    server, key = hostile
    messages = [{"role": "user", "content": "x"}] * 150_000  # ~4.5 MB, under the limit
    body = json.dumps({"messages": messages, "max_tokens": 1}).encode()
    statuses: list[int] = []

    def attack(stop: threading.Event) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(
                    client.post("/v1/chat/completions", content=body, headers=headers).status_code
                )
        return {"huge_requests": len(statuses), "their_statuses": sorted(set(statuses))}

    before, during, outcome = under_attack(server, key, attack)
    report(
        f"{len(messages):,} messages ({len(body) / 1e6:.1f} MB) in a loop",
        before=before,
        during=during,
        **outcome,
    )
    assert during["failures"] == 0
    assert statuses and all(status < 500 for status in statuses)


def test_a_1mb_authorization_header_is_refused_cleanly(hostile):
    server, key = hostile
    sock = connect(server)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nAuthorization: Bearer tt-" + b"a" * (1024 * 1024) + b"\r\n\r\n{}"
    )
    with contextlib.suppress(OSError):  # the gateway may close before it read everything
        sock.sendall(head)
    answer = read_answer(sock)
    sock.close()
    status = status_of(answer)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        after = client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
        )
    report("1 MB Authorization header", status=status, then_a_normal_request=after.status_code)
    assert status == 431
    assert after.status_code == 200


def auth_failures(server: GatewayProcess) -> tuple[float, str]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "talktuah_auth_failures"
        for sample in family.samples
        if sample.name == "talktuah_auth_failures_total"
    )
    return total, text


@pytest.mark.timeout(120)
def test_a_key_brute_force_is_constant_time_and_counted(hostile):
    server, key = hostile
    prefix, _, secret = key.partition(".")
    unknown = "tt-0badc0de"
    samples: dict[str, list[float]] = {"right_prefix": [], "unknown_prefix": [], "random": []}
    attempts = 400
    failures_before, _ = auth_failures(server)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(attempts):
            # Interleaved, so both see the same machine load; a fresh wrong secret each time.
            for kind, candidate in (
                ("right_prefix", f"{prefix}.{secret[:-6]}{i:06d}"),
                ("unknown_prefix", f"{unknown}.{secret[:-6]}{i:06d}"),
                # A new prefix each time: a database lookup each time (reported only).
                ("random", f"tt-{i:08x}.{secret}"),
            ):
                started = time.perf_counter()
                response = client.post(
                    "/v1/chat/completions",
                    json=CHAT,
                    headers={"Authorization": f"Bearer {candidate}"},
                )
                samples[kind].append(time.perf_counter() - started)
                assert response.status_code == 401
    failures_after, text = auth_failures(server)
    medians = {kind: statistics.median(values) * 1000 for kind, values in samples.items()}
    ratio = medians["right_prefix"] / medians["unknown_prefix"]
    report(
        f"key brute force, {3 * attempts} wrong keys",
        p50_right_prefix_ms=round(medians["right_prefix"], 2),
        p50_unknown_prefix_ms=round(medians["unknown_prefix"], 2),
        p50_random_prefix_ms=round(medians["random"], 2),
        ratio=round(ratio, 2),
        auth_failures_counted=int(failures_after - failures_before),
    )
    assert 0.67 < ratio < 1.5
    assert failures_after - failures_before == 3 * attempts
    assert secret[:8] not in text and unknown not in text and prefix not in text
