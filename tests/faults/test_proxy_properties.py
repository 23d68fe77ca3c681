"""The body checks and the streaming relay under hypothesis, through the gateway on real
sockets, in front of a scripted vLLM that records what reaches it (tests/scripted_vllm.py):

- any JSON body on any proxied route gets an answer below 500, refusals in OpenAI's
  shape; a body that passes reaches vLLM with every field as sent, but for what the
  gateway documents adding (the served model when none is named; on streams
  `stream: true` and `stream_options.include_usage`; the key's `cache_salt`, and no
  client `priority`);
- vLLM's stream, cut at random places, reaches the client byte for byte, less the usage
  chunk exactly when the client did not ask for it.

Their pure cores are property-tested without sockets in tests/proxy (test_body_properties,
test_sse_relay_properties, a few seconds); these check the wiring around them, with more
examples than the default run should pay for (150 each, about 30 s on 2 cores)."""

import copy
import itertools
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.bodies import API_CHAT, CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, wants_stream
from proxy.salt import salt_of
from tests.conftest import ThreadedServer
from tests.faults.conftest import report
from tests.proxy.test_body_properties import json_objects, json_values, valid_bodies
from tests.proxy.test_sse_relay_properties import streams
from tests.scripted_vllm import ScriptedVllm

pytestmark = pytest.mark.django_db(transaction=True)

ROUTES = {"/v1/chat/completions": CHAT, "/api/chat": API_CHAT, "/v1/completions": COMPLETIONS}
ROUTES["/v1/embeddings"] = EMBEDDINGS
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def vllm(settings):
    upstream = ScriptedVllm(model="demo-model")
    server = ThreadedServer(upstream).start()
    settings.VLLM_BASE_URL = server.url
    yield upstream
    server.stop()


@pytest.fixture
def client(gateway, make_key):
    key = make_key(rpm_limit=10**6)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as http:
        http.salt = salt_of(key.split(".")[0])
        yield http


def as_forwarded(
    sent: dict[str, Any], endpoint: Endpoint, served: str, salt: str
) -> dict[str, Any]:
    """What vLLM must receive for `sent`, per the README: the body as is, with the served
    model when it names none, the key's cache salt, no priority, and on a stream
    `stream: true` and include_usage."""
    expected = copy.deepcopy(sent)
    if not expected.get("model"):
        expected["model"] = served
    expected.pop("priority", None)
    if endpoint.salted:
        expected["cache_salt"] = salt
    if wants_stream(sent, endpoint):
        options = expected.get("stream_options") or {}
        if not options.get("include_usage") or sent.get("stream") is not True:
            options["include_usage"] = True
        expected["stream_options"] = options
        expected["stream"] = True
    return expected


def is_openai_error(response: httpx.Response) -> bool:
    error = response.json().get("error")
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


@pytest.mark.timeout(600)
def test_any_json_body_gets_a_4xx_or_reaches_vllm_with_its_fields_intact(vllm, client):
    figures = {"requests": 0, "forwarded": 0, "refused": 0}
    bodies = valid_bodies_any_route() | st.tuples(st.sampled_from(list(ROUTES)), json_objects)
    bodies |= st.tuples(st.sampled_from(list(ROUTES)), json_values)

    @PROPERTY_SETTINGS
    @given(case=bodies)
    def check(case: tuple[str, Any]) -> None:
        path, sent = case
        before = len(vllm.received)
        response = client.post(path, json=sent)
        figures["requests"] += 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            figures["refused"] += 1
            assert is_openai_error(response), response.text
            assert len(vllm.received) == before  # refused by the gateway itself
            return
        figures["forwarded"] += 1
        expected = as_forwarded(sent, ROUTES[path], vllm.model, client.salt)
        assert vllm.received[before:] == [expected]

    check()
    report("JSON bodies through the gateway", **figures)
    assert figures["forwarded"] and figures["refused"]  # both branches were exercised


def valid_bodies_any_route() -> st.SearchStrategy[tuple[str, Any]]:
    return st.sampled_from(list(ROUTES)).flatmap(
        lambda path: st.tuples(st.just(path), valid_bodies(ROUTES[path]))
    )


@pytest.mark.timeout(600)
def test_a_stream_cut_anywhere_reaches_the_client_byte_for_byte(vllm, client):
    figures = {"streams": 0, "usage_kept": 0, "usage_stripped": 0}

    @PROPERTY_SETTINGS
    @given(stream=streams(), include_usage=st.booleans(), data=st.data())
    def check(stream, include_usage: bool, data: st.DataObject) -> None:
        events, usage_chunk, _figures = stream
        whole = b"".join(events)
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(whole) - 1), max_size=12))))
        bounds = [0, *cuts, len(whole)]
        vllm.stream_chunks = [whole[start:end] for start, end in itertools.pairwise(bounds)]
        body = {
            "model": "demo-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": include_usage},
        }
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        expected = [e for e in events if include_usage or e is not usage_chunk]
        assert response.content == b"".join(expected)
        assert vllm.received[-1]["stream_options"]["include_usage"] is True  # always asked
        figures["streams"] += 1
        if usage_chunk is not None:
            figures["usage_kept" if include_usage else "usage_stripped"] += 1

    check()
    report("SSE relay, random cuts, real sockets", **figures)
    assert figures["usage_kept"] and figures["usage_stripped"]
