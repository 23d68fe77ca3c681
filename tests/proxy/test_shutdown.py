"""Graceful shutdown over real sockets: SIGTERM turns /readyz 503 first, then no new
connections are accepted, streams in flight finish within the grace period, and the
rest end with an SSE error event and [DONE]."""

import json
import signal
import threading
import time

import httpx
import pytest

from tests.gateway_process import GatewayProcess
from tests.sse import sse_data

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def read_stream(url, key, body, into):
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            into["status"] = response.status_code
            into["events"] = sse_data(response.read())
    except httpx.HTTPError as exc:
        into["error"] = repr(exc)


def test_sigterm_drains_then_finishes_or_ends_streams(simulator, make_key, tmp_path):
    sim = simulator(token_delay=0.02)
    key = make_key(rpm_limit=10_000)
    env = {
        "VLLM_BASE_URL": sim.url,
        "TALKTUAH_VAR_DIR": str(tmp_path),
        "SHUTDOWN_DRAIN_SECONDS": "1.5",
        "SHUTDOWN_GRACE_SECONDS": "2",
    }
    server = GatewayProcess(env=env).start()
    url = server.url
    try:
        short, long = {}, {}
        # ~1.5 s of tokens: ends within the grace period.
        short_body = {**CHAT, "max_tokens": 75, "ignore_eos": True}
        # ~8 s of tokens: still running when the grace period ends.
        long_body = {**CHAT, "max_tokens": 400, "ignore_eos": True}
        clients = [
            threading.Thread(target=read_stream, args=(url, key, short_body, short)),
            threading.Thread(target=read_stream, args=(url, key, long_body, long)),
        ]
        for client in clients:
            client.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: still answering, but not ready.
        assert httpx.get(f"{url}/readyz", timeout=2).status_code == 503
        time.sleep(2.0)
        # Past the drain delay the listener is closed: no new requests.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/livez", timeout=2)
        for client in clients:
            client.join(20)
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert server.process.wait(20) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert short.get("status") == 200, short
    assert short["events"][-1] == "[DONE]"
    assert all("error" not in event for event in short["events"])
    assert long.get("status") == 200, long
    assert long["events"][-1] == "[DONE]"
    error = json.loads(long["events"][-2])["error"]
    assert error["code"] == 503 and "shutting down" in error["message"]
    assert len(long["events"]) > 50  # it streamed until the grace period ended
