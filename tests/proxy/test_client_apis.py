"""The APIs teams' tools speak, through the gateway: Anthropic's Messages API (the
anthropic SDK, as Claude Code uses it), OpenAI's Responses API (the openai SDK), vLLM's
tokenize/detokenize, rerank, score and audio transcriptions; the prefix-cache salt per
key; and the allowlist of vLLM's routes. Over real sockets, against the simulator (or a
scripted vLLM where a test needs to see the bodies that reach it)."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from modelmgr.models import split_prefix
from proxy.allowlist import BLOCKED, FORWARDED, unclassified
from proxy.salt import salt_of
from tests.conftest import ThreadedServer
from tests.scripted_vllm import ScriptedVllm

pytestmark = pytest.mark.django_db(transaction=True)

ROUTES_TXT = Path(__file__).resolve().parents[1] / "wire" / "vllm-0.32" / "routes.txt"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def scripted(settings: Any) -> Iterator[ScriptedVllm]:
    vllm = ScriptedVllm()
    server = ThreadedServer(vllm).start()
    settings.VLLM_BASE_URL = server.url
    yield vllm
    server.stop()


# --- the prefix-cache salt --------------------------------------------------------------


def test_each_key_gets_its_own_cache_salt_whatever_the_client_sent(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str], settings: Any
) -> None:
    alice, bob = make_key(name="alice"), make_key(name="bob")
    routes = {
        "/v1/chat/completions": {"messages": HELLO},
        "/v1/completions": {"prompt": "Once"},
        "/v1/messages": {"messages": HELLO, "max_tokens": 5},
        "/v1/responses": {"input": "Hello"},
        "/v1/embeddings": {"input": "Hello"},
    }
    for path, body in routes.items():
        for key in (alice, bob, alice):
            sent = {"model": "demo-model", "cache_salt": "a guess", **body}
            answer = httpx.post(
                gateway.url + path, json=sent, headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200, (path, answer.text)
    salts = [received["cache_salt"] for received in scripted.received]
    expected = [salt_of(split_prefix(key)) for key in (alice, bob, alice)] * len(routes)
    assert salts == expected
    assert salt_of(split_prefix(alice)) != salt_of(split_prefix(bob))
    assert len(salts[0]) == 43  # 256 bits, as vLLM advises
    # Tokenize takes no salt; with isolation off, the client's own passes.
    settings.PREFIX_CACHE_ISOLATION = "none"
    httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "demo-model", "cache_salt": "shared", "messages": HELLO},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert scripted.received[-1]["cache_salt"] == "shared"


# --- Anthropic's error shape on its route -------------------------------------------------


def anthropic_error(answer: httpx.Response) -> dict[str, Any]:
    body = answer.json()
    assert body["type"] == "error", body
    assert set(body["error"]) >= {"type", "message"}, body
    return body["error"]


def test_the_messages_route_answers_the_gateways_own_refusals_in_anthropics_shape(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str], settings: Any
) -> None:
    url = gateway.url + "/v1/messages"
    body = {"model": "demo-model", "messages": HELLO, "max_tokens": 5}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401
    assert anthropic_error(missing)["type"] == "authentication_error"
    wrong = httpx.post(url, json=body, headers={"x-api-key": "tt-00000000.wrong"})
    assert (wrong.status_code, anthropic_error(wrong)["type"]) == (401, "authentication_error")

    limited = make_key(allowed_models=["another"])
    refused = httpx.post(url, json=body, headers={"x-api-key": limited})
    assert (refused.status_code, anthropic_error(refused)["type"]) == (403, "permission_error")
    assert anthropic_error(refused)["code"] == "model_not_allowed"

    key = make_key(rpm_limit=1)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    bad = httpx.post(
        url, content=b"{not json", headers=headers | {"content-type": "application/json"}
    )
    assert (bad.status_code, anthropic_error(bad)["type"]) == (400, "invalid_request_error")
    assert httpx.post(url, json=body, headers=headers).status_code == 200
    limited_rate = httpx.post(url, json=body, headers=headers)
    assert limited_rate.status_code == 429
    assert anthropic_error(limited_rate)["type"] == "rate_limit_error"
    assert limited_rate.headers["retry-after"]

    settings.MAX_REQUEST_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = httpx.post(
        url,
        json={**body, "messages": [{"role": "user", "content": "x" * 5000}]},
        headers={"x-api-key": make_key()},
    )
    assert (big.status_code, anthropic_error(big)["type"]) == (413, "request_too_large")
    # The OpenAI routes keep OpenAI's shape.
    openai_shape = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": HELLO})
    assert set(openai_shape.json()["error"]) == {"message", "type", "param", "code"}


def test_the_anthropic_sdk_raises_its_own_errors_for_the_gateways_refusals(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str]
) -> None:
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="tt-00000000.wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        bad.messages.create(model="demo-model", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]
    assert refused.value.status_code == 401
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    limited = anthropic.Anthropic(
        base_url=gateway.url, api_key=make_key(allowed_models=["another"]), max_retries=0
    )
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.create(model="demo-model", max_tokens=5, messages=HELLO)  # type: ignore[arg-type]


# --- the allowlist of vLLM's routes ---------------------------------------------------------


def test_every_route_vllm_has_is_either_forwarded_or_blocked_on_purpose() -> None:
    routes = ROUTES_TXT.read_text().split()
    assert "/v1/chat/completions" in routes  # the file is vLLM's list
    assert unclassified(routes) == [], "a vLLM route in neither proxy/allowlist.py list"
    assert not FORWARDED.keys() & BLOCKED.keys()


def test_a_blocked_route_never_reaches_vllm(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str]
) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    for path in BLOCKED:
        concrete = path.replace("{request_id}", "abc")
        if concrete in ("/health", "/metrics", "/v1/models"):
            continue  # the gateway's own answer, not vLLM's
        for method in ("GET", "POST"):
            answer = httpx.request(method, gateway.url + concrete, headers=headers, json={})
            assert answer.status_code in (404, 405), (method, concrete, answer.status_code)
    assert scripted.received == []  # no POST of any of them reached vLLM


def test_every_forwarded_route_has_a_view(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str]
) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    for path, route in FORWARDED.items():
        method = route.split()[0]
        concrete = path.replace("{response_id}", "resp_0123456789abcdef")
        answer = httpx.request(method, gateway.url + concrete, headers=headers, content=b"{}")
        # Refused for its body (400), or an unknown response (404 of the gateway's own,
        # naming the response), never "No route".
        assert "No route" not in answer.text, (method, concrete, answer.text)
        assert answer.status_code < 500, (method, concrete, answer.text)


def test_the_openapi_document_lists_every_route() -> None:
    from talktuah_site.api import api

    paths = api.get_openapi_schema()["paths"]
    for route in ("/v1/messages", "/v1/responses", "/v1/responses/{response_id}", "/tokenize"):
        assert route in paths, route
    body = paths["/v1/messages"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["messages"]
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert json.dumps(paths["/tokenize"]["post"]["requestBody"]).count("messages") >= 1
