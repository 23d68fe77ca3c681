"""Logging never blocks the event loop: a gateway whose stderr nobody reads (a full pipe,
as when a container runtime falls behind) keeps answering, and every access-log line is
written once the pipe drains."""

import fcntl
import os
import threading

import httpx
import pytest

from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}
F_SETPIPE_SZ = 1031  # Linux fcntl: a pipe's capacity
REQUESTS = 200  # ~60 KiB of access log: far more than the pipe holds


def test_a_gateway_with_a_full_stderr_pipe_keeps_answering(simulator, make_key):
    sim = simulator(tokens=2, token_delay=0)
    key = make_key(rpm_limit=100_000)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # the smallest pipe: full after ~12 lines
    gateway = GatewayProcess(env={"VLLM_BASE_URL": sim.url, "LOG_LEVEL": "INFO"}, stderr=write_end)
    gateway.start()
    os.close(write_end)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=gateway.url, timeout=5) as client:
            statuses = [
                client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code
                for _ in range(REQUESTS)
            ]
        assert statuses == [200] * REQUESTS
        # Nothing lost: once someone reads the pipe, every request's line is written.
        written = bytearray()
        reader = threading.Thread(target=lambda: written.extend(_read_all(read_end)))
        reader.start()
    finally:
        gateway.stop()
    reader.join(10)
    lines = [
        line for line in written.decode().splitlines() if '"endpoint":"chat_completions"' in line
    ]
    assert len(lines) == REQUESTS


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_bad_host_headers_log_one_warning_a_minute_without_traceback(tmp_path):
    # Before: every request with a Host not in ALLOWED_HOSTS wrote an ERROR and its
    # traceback (~40 lines), so any client could flood the log.
    log = tmp_path / "gateway.log"
    with (
        GatewayProcess(env={"LOG_LEVEL": "INFO"}, log=log) as gateway,
        httpx.Client(base_url=gateway.url, timeout=5) as client,
    ):
        statuses = [
            client.get("/api/healthz", headers={"Host": f"evil{n}.example.com"}).status_code
            for n in range(30)
        ]
    assert statuses == [400] * 30
    text = log.read_text()
    lines = [line for line in text.splitlines() if "django.security.DisallowedHost" in line]
    assert len(lines) == 1, lines
    assert " WARNING " in lines[0] and "evil0.example.com" in lines[0]
    assert "Traceback" not in text
