"""The streaming relay over real sockets: timing, framing, disconnects, broken and late
upstreams, timeouts."""

import itertools
import json
import time

import httpx
import pytest

from tests.net import free_port
from tests.sse import sse_data, sse_json

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}


def test_it_relays_chunks_as_they_arrive(gateway, simulator, make_key):
    simulator(tokens=5, token_delay=0.3)
    key = make_key()
    arrivals: list[float] = []
    raw = b""
    start = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for chunk in response.iter_raw():
            raw += chunk
            arrivals.append(time.monotonic() - start)
    assert raw.endswith(b"data: [DONE]\n\n")
    contents = sse_json(raw)
    assert contents[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in contents)
    # Each token arrives on its own, about token_delay apart: nothing buffers the stream.
    # (Measured from the first arrival: the session's first request may start slowly.)
    assert len(arrivals) >= 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if b - a > 0.15]
    assert len(gaps) >= 4
    assert arrivals[-1] - arrivals[0] > 1.0


def test_it_stops_generation_when_a_stream_client_leaves(gateway, simulator, make_key):
    sim = simulator(tokens=400, token_delay=0.01)
    key = make_key()
    body = {**CHAT, "stream": True, "max_tokens": 400, "ignore_eos": True}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        for seen, _line in enumerate(response.iter_lines(), start=1):
            if seen >= 5:
                break
    time.sleep(1.0)
    first = sim.metrics()
    time.sleep(0.5)
    second = sim.metrics()
    assert second["vllm:generation_tokens_total"] == first["vllm:generation_tokens_total"]
    assert first["vllm:generation_tokens_total"] < 200
    assert second["simulator_aborted_requests_total"] == 1
    assert second["vllm:num_requests_running"] == 0


def test_it_stops_generation_when_a_non_stream_client_leaves(gateway, simulator, make_key):
    sim = simulator(tokens=400, token_delay=0.01)
    key = make_key()
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(5, read=0.5),
        )
    time.sleep(1.0)
    first = sim.metrics()
    time.sleep(0.5)
    second = sim.metrics()
    assert second["vllm:generation_tokens_total"] == first["vllm:generation_tokens_total"]
    assert first["vllm:generation_tokens_total"] < 250
    assert second["simulator_aborted_requests_total"] == 1


def test_it_ends_a_stream_with_an_error_event_when_vllm_dies(gateway, simulator, make_key):
    sim = simulator(tokens=400, token_delay=0.02)
    key = make_key()
    lines: list[str] = []
    start = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={**CHAT, "stream": True, "max_tokens": 400, "ignore_eos": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                sim.kill()
    assert time.monotonic() - start < 8
    events = sse_data("\n\n".join(lines))  # iter_lines may drop the blank lines
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 502
    assert "vLLM" in error["message"]
    # No exception text (ClientPayloadError, TransferEncodingError, ...) for the client.
    assert "Error" not in error["message"] and "<" not in error["message"]
    assert "(request req_" in error["message"]


def test_it_retries_until_vllm_starts_listening(gateway, simulator, make_key, settings):
    settings.UPSTREAM_RETRY_SECONDS = 10
    key = make_key()
    simulator(wait=False, startup_delay=2.0)
    start = time.monotonic()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert time.monotonic() - start > 1.5


INTERNALS = ("127.0.0.1", "Error(", "ConnectionKey", "Connect call", "ssl=", "Refused")


def test_it_answers_502_when_vllm_is_unreachable(gateway, make_key, settings, caplog):
    port = free_port()
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{port}"
    settings.UPSTREAM_RETRY_SECONDS = 0.5
    key = make_key()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": "my-request-7"},
        timeout=10,
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_unreachable"
    # A short, stable message with the request id; where and why go to the log only.
    assert "my-request-7" in error["message"]
    assert response.headers["x-request-id"] == "my-request-7"
    assert str(port) not in response.text
    assert not [word for word in INTERNALS if word in response.text], response.text
    assert "detail" not in error
    logged = [r.getMessage() for r in caplog.records if "my-request-7" in r.getMessage()]
    assert any(str(port) in line for line in logged)
    # An admin-scope key gets the detail.
    admin = make_key(name="ops", scopes=("inference", "admin"))
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert str(port) in answer.json()["error"]["detail"]
    assert answer.headers["x-request-id"].startswith("req_")


def test_it_answers_504_when_vllm_is_too_slow(gateway, simulator, make_key, settings):
    simulator(tokens=50, token_delay=0.1)
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    key = make_key()
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"
