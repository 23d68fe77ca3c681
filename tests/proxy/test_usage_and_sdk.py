"""Clients as users run them: the official OpenAI SDK, the /api/chat route, the
include_usage chunk injected and stripped, usage recorded per key, model and day."""

import time

import httpx
import openai
import pytest
from django.utils import timezone

from modelmgr.models import UsageDaily
from tests.sse import sse_json

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Hello there"}]


def wait_for_usage(prefix, requests):
    deadline = time.monotonic() + 5
    while True:
        rows = list(UsageDaily.objects.filter(key_prefix=prefix))
        if sum(r.requests for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_the_openai_sdk_streams_and_not(gateway, simulator, make_key):
    simulator(model="demo-model", tokens=6)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=make_key(), max_retries=0)
    reply = client.chat.completions.create(model="demo-model", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    stream = client.chat.completions.create(model="demo-model", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    # The client did not ask for usage: the chunk the gateway asked for is stripped.
    assert all(c.usage is None for c in chunks)
    assert [m.id for m in client.models.list()] == ["demo-model"]
    completion = client.completions.create(model="demo-model", prompt="Once", max_tokens=3)
    assert completion.choices[0].text


def test_the_openai_sdk_sees_gateway_errors_and_revoked_keys(gateway, simulator, make_key):
    simulator(model="demo-model")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tt-00000000.wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="demo-model", messages=MESSAGES)
    limited = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=make_key(allowed_models=["x"]), max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError):
        limited.chat.completions.create(model="demo-model", messages=MESSAGES)


def test_it_keeps_the_usage_chunk_when_asked_and_records_usage(gateway, simulator, make_key):
    simulator(model="demo-model", tokens=4)
    key = make_key()
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="demo-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    prompt_tokens = chunks[-1].usage.prompt_tokens
    client.chat.completions.create(model="demo-model", messages=MESSAGES)

    rows = wait_for_usage(key.split(".")[0], 2)
    assert len(rows) == 1
    row = rows[0]
    assert (row.model, row.day, row.key_name) == ("demo-model", timezone.now().date(), "tester")
    assert row.requests == 2
    assert row.completion_tokens == 8
    assert row.prompt_tokens == 2 * prompt_tokens
    assert row.errors == 0


def test_the_api_chat_route_streams_by_default_and_fills_in_the_model(gateway, simulator, make_key):
    simulator(model="demo-model", tokens=3)
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.post(
        f"{gateway.url}/api/chat", json={"messages": MESSAGES}, headers=headers, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(response.content)  # ends with [DONE]
    assert {c["model"] for c in chunks} == {"demo-model"}
    assert all(c["choices"] for c in chunks), "usage chunk must be stripped"
    whole = httpx.post(
        f"{gateway.url}/api/chat",
        json={"messages": MESSAGES, "stream": False},
        headers=headers,
        timeout=10,
    )
    assert whole.json()["object"] == "chat.completion"
    rows = wait_for_usage(key.split(".")[0], 2)
    assert sum(r.completion_tokens for r in rows) == 6


def test_it_counts_failed_requests_as_errors(gateway, simulator, make_key):
    simulator(model="demo-model")
    key = make_key()
    httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "demo-model", "messages": MESSAGES, "temperature": 9},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    rows = wait_for_usage(key.split(".")[0], 1)
    assert [(r.requests, r.errors) for r in rows] == [(1, 1)]


def test_it_passes_unknown_fields_through_unchanged(gateway, simulator, make_key):
    simulator(model="demo-model")
    key = make_key()
    # vLLM-specific sampling fields must reach vLLM: the simulator honours ignore_eos.
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "demo-model", "messages": MESSAGES, "max_tokens": 30, "ignore_eos": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.json()["usage"]["completion_tokens"] == 30


def test_it_records_usage_of_a_model_nobody_serves_under_other(gateway, simulator, make_key):
    simulator(model="demo-model")
    key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    # Longer than the usage table's column and with a NUL byte, which PostgreSQL refuses:
    # written as is, it failed every later usage write of the process (found by fuzzing).
    made_up = "x" * 300 + "\x00"
    url = f"{gateway.url}/v1/chat/completions"
    refused = httpx.post(url, json={"model": made_up, "messages": MESSAGES}, headers=headers)
    assert refused.status_code == 404
    served = httpx.post(url, json={"model": "demo-model", "messages": MESSAGES}, headers=headers)
    assert served.status_code == 200

    rows = wait_for_usage(key.split(".")[0], 2)
    assert sorted((r.model, r.requests, r.errors) for r in rows) == [
        ("demo-model", 1, 0),
        ("other", 1, 1),
    ]


def test_it_takes_a_null_stream_as_the_routes_default(gateway, simulator, make_key):
    # OpenAI documents `stream` as "boolean or null"; null was refused with a 400 (found
    # by the body property tests).
    simulator(model="demo-model", tokens=3)
    headers = {"Authorization": f"Bearer {make_key()}"}
    body = {"model": "demo-model", "messages": MESSAGES, "stream": None}
    whole = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["usage"]["completion_tokens"] == 3
    streamed = httpx.post(f"{gateway.url}/api/chat", json=body, headers=headers)  # streams
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = sse_json(streamed.content)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert all(c.get("usage") is None for c in chunks)  # not asked for: stripped


def test_it_takes_a_null_stream_options_on_a_stream(gateway, simulator, make_key):
    # The gateway adds include_usage to the client's stream_options: a null one was a 500
    # (seen while fixing a null `stream`; tests/faults/test_proxy_properties.py finds it).
    simulator(model="demo-model", tokens=3)
    headers = {"Authorization": f"Bearer {make_key()}"}
    body = {"model": "demo-model", "messages": MESSAGES, "stream": True, "stream_options": None}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200
    chunks = sse_json(response.content)
    assert chunks and all(c["choices"] and c.get("usage") is None for c in chunks)
