"""Errors reach clients in OpenAI's shape: vLLM's own passed through with their status,
bad input refused with a clear 4xx, vLLM's private routes never forwarded."""

import json

import httpx
import pytest

from plumbing.errors import normalise_upstream_error
from tests.wire import WIRE

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def key(make_key):
    return make_key()


def post(gateway, key, path="/v1/chat/completions", **kw):
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.post(f"{gateway.url}{path}", headers=headers, timeout=10, **kw)


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_it_passes_an_unknown_model_404_through(gateway, simulator, key):
    simulator(model="demo-model")
    response = post(gateway, key, json={**CHAT, "model": "nope"})
    assert response.status_code == 404
    error = error_of(response)
    assert "does not exist" in error["message"]
    assert error["param"] == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_it_passes_a_bad_parameter_400_through(gateway, simulator, key, stream):
    simulator()
    response = post(gateway, key, json={**CHAT, "temperature": 9, "stream": stream})
    assert response.status_code == 400
    assert error_of(response)["param"] == "temperature"


def test_it_passes_an_over_long_prompt_400_through_before_streaming(gateway, simulator, key):
    simulator(max_model_len=64)
    long = {"model": "demo-model", "messages": [{"role": "user", "content": "word " * 200}]}
    response = post(gateway, key, json={**long, "stream": True})
    assert response.status_code == 400
    assert "maximum context length" in error_of(response)["message"]


def test_it_normalises_a_fastapi_detail_404(gateway, simulator, key):
    simulator()
    response = post(gateway, key, "/v1/embeddings", json={"model": "demo-model", "input": "x"})
    assert response.status_code == 404
    assert "Not Found" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("content", "expected_message"),
    [
        ((WIRE / "err-unknown-model.json").read_bytes(), "does not exist"),
        (b'{"error": "Unauthorized"}', "Unauthorized"),
        (b'{"message": "flat old shape", "type": "BadRequestError", "code": 400}', "flat old"),
        (b"<html>bad gateway</html>", "bad gateway"),
        (b"", "HTTP 400"),
    ],
)
def test_it_normalises_every_upstream_error_shape(content, expected_message):
    error = json.loads(normalise_upstream_error(400, content))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert expected_message in error["message"]


def test_it_rejects_malformed_json(gateway, simulator, key):
    simulator()
    response = post(
        gateway, key, content=b'{"messages": [', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


def test_it_rejects_a_wrong_content_type(gateway, simulator, key):
    simulator()
    response = post(gateway, key, content=json.dumps(CHAT), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in error_of(response)["message"]


@pytest.mark.parametrize("body", [{"model": "demo-model"}, {"model": "demo-model", "messages": []}])
def test_it_rejects_a_chat_without_messages(gateway, simulator, key, body):
    simulator()
    response = post(gateway, key, json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({**CHAT, "model": 5}, "model"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "stream": True, "stream_options": "usage"}, "stream_options"),
    ],
)
def test_it_rejects_ill_typed_bodies(gateway, simulator, key, body, param):
    simulator()
    response = post(gateway, key, json=body)
    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_it_rejects_a_body_over_the_limit_with_413(gateway, simulator, key, settings):
    simulator()
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = post(gateway, key, json=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tokenize",
        "/v1/pause",
        "/pause",
        "/invocations",
        "/v1/abort_requests",
        "/abort_requests",
    ],
)
def test_it_never_forwards_vllm_private_routes(gateway, simulator, key, path):
    simulator()
    response = post(gateway, key, path, json={"prompt": "x"})
    assert response.status_code == 404


def test_the_index_lists_the_endpoints(gateway):
    body = httpx.get(f"{gateway.url}/").json()
    assert body["name"] == "TalkTuah"
    assert body["endpoints"]["chat"] == "POST /api/chat"
    assert body["docs"].endswith("/api/docs")
    assert httpx.get(f"{gateway.url}/api/docs").status_code == 200


@pytest.mark.parametrize("path", ["/api/healthz", "/api/model-status", "/metrics", "/"])
@pytest.mark.parametrize("host", ["evil.example.com", "bad host!"])
def test_it_refuses_a_host_it_does_not_serve_in_openai_shape(gateway, key, path, host):
    # Django checks the Host on every full-stack route; its 400 was an HTML page (found
    # by fuzzing the OpenAPI schema).
    headers = {"Host": host, "Authorization": f"Bearer {key}"}
    response = httpx.get(f"{gateway.url}{path}", headers=headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_host"


def test_the_admin_keeps_its_html_400_for_a_host_it_does_not_serve(gateway):
    response = httpx.get(f"{gateway.url}/admin/", headers={"Host": "evil.example.com"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
