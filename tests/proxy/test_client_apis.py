"""The APIs teams' tools speak, through the gateway: Anthropic's Messages API (the
anthropic SDK, as Claude Code uses it), OpenAI's Responses API (the openai SDK), vLLM's
tokenize/detokenize, rerank, score and audio transcriptions; the prefix-cache salt per
key; and the allowlist of vLLM's routes. Over real sockets, against the simulator (or a
scripted vLLM where a test needs to see the bodies that reach it)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.allowlist import BLOCKED, FORWARDED, unclassified
from proxy.salt import salt_of
from tests.conftest import ThreadedServer
from tests.scripted_vllm import ScriptedVllm, read_body
from tests.simulator_process import assert_generation_stopped

pytestmark = pytest.mark.django_db(transaction=True)

ROUTES_TXT = Path(__file__).resolve().parents[1] / "wire" / "vllm-0.32" / "routes.txt"
HELLO = [{"role": "user", "content": "Hello there"}]


# --- the prefix-cache salt --------------------------------------------------------------


def test_each_key_gets_its_own_cache_salt_whatever_the_client_sent(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str], settings: Any
) -> None:
    alice, bob = make_key(name="alice"), make_key(name="bob")
    routes: dict[str, dict[str, Any]] = {
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
    expected = [salt_of(key.split(".")[0]) for key in (alice, bob, alice)] * len(routes)
    assert salts == expected
    assert salt_of(alice.split(".")[0]) != salt_of(bob.split(".")[0])
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


# --- the SDKs against the gateway and its simulator -------------------------------------------


def test_the_anthropic_sdk_creates_streams_and_counts_messages(
    gateway: Any, simulator: Any, make_key: Callable[..., str]
) -> None:
    simulator(model="demo-model", tokens=6)
    key = make_key()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    message = client.messages.create(model="demo-model", max_tokens=6, messages=HELLO)  # type: ignore[arg-type]
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text
    assert message.usage.output_tokens == 6
    with client.messages.stream(model="demo-model", max_tokens=6, messages=HELLO) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.usage.output_tokens == 6
    assert final.usage.input_tokens == message.usage.input_tokens > 0
    counted = client.messages.count_tokens(model="demo-model", messages=HELLO)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens
    # ANTHROPIC_AUTH_TOKEN (Claude Code's way) sends the key as a bearer token.
    bearer = anthropic.Anthropic(base_url=gateway.url, auth_token=key, max_retries=0)
    assert bearer.messages.create(model="demo-model", max_tokens=2, messages=HELLO).content  # type: ignore[arg-type]
    rows = wait_for_usage(key.split(".")[0], 4)
    assert sum(row.completion_tokens for row in rows) == 6 + 6 + 2
    assert sum(row.prompt_tokens for row in rows) == 3 * message.usage.input_tokens


def test_the_openai_sdk_creates_streams_and_fetches_its_own_responses(
    gateway: Any, simulator: Any, make_key: Callable[..., str]
) -> None:
    simulator(model="demo-model", tokens=5)
    key = make_key()
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    response = client.responses.create(model="demo-model", input="Hello", max_output_tokens=5)
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens == 5
    events = list(
        client.responses.create(model="demo-model", input="Hello", max_output_tokens=5, stream=True)
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == response.output_text
    streamed_id = events[0].response.id

    assert client.responses.retrieve(response.id).id == response.id
    assert client.responses.retrieve(streamed_id).id == streamed_id
    follow = client.responses.create(
        model="demo-model", input="And then?", previous_response_id=response.id
    )
    assert follow.id != response.id

    # Another key may not read, cancel or continue them: as if they did not exist.
    other = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=make_key(name="other"), max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="demo-model", input="x", previous_response_id=response.id)
    rows = wait_for_usage(key.split(".")[0], 3)
    # A response fetched again is not counted again.
    assert sum(row.completion_tokens for row in rows) == 5 + 5 + follow.usage.output_tokens  # type: ignore[union-attr]


def test_tokenize_and_detokenize_go_through(
    gateway: Any, simulator: Any, make_key: Callable[..., str]
) -> None:
    simulator(model="demo-model")
    headers = {"Authorization": f"Bearer {make_key()}"}
    tokens = httpx.post(gateway.url + "/tokenize", json={"prompt": "Hello there"}, headers=headers)
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["count"] == len(tokens.json()["tokens"]) > 0
    chat = httpx.post(gateway.url + "/tokenize", json={"messages": HELLO}, headers=headers)
    assert chat.status_code == 200 and chat.json()["count"] > 0
    text = httpx.post(
        gateway.url + "/detokenize", json={"tokens": tokens.json()["tokens"]}, headers=headers
    )
    assert text.status_code == 200 and isinstance(text.json()["prompt"], str)
    missing = httpx.post(gateway.url + "/tokenize", json={}, headers=headers)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_field"


def test_rerank_and_score_pass_vllms_answer_through(
    gateway: Any, simulator: Any, make_key: Callable[..., str]
) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    rerank = {"model": "demo-model", "query": "cats", "documents": ["a cat", "a car"]}
    score = {"model": "demo-model", "text_1": "cats", "text_2": ["a cat", "a car"]}
    generative = simulator(model="demo-model")
    # A generate-only model: vLLM has no such route, its 404 comes back as an error.
    refused = httpx.post(gateway.url + "/v1/rerank", json=rerank, headers=headers)
    assert refused.status_code == 404
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    generative.stop()
    simulator(model="demo-model", pooling=True)
    ranked = httpx.post(gateway.url + "/v1/rerank", json=rerank, headers=headers)
    assert ranked.status_code == 200, ranked.text
    assert len(ranked.json()["results"]) == 2
    scored = httpx.post(gateway.url + "/v1/score", json=score, headers=headers)
    assert scored.status_code == 200, scored.text
    assert len(scored.json()["data"]) == 2


class FormRecorder:
    """A vLLM stand-in for the audio route: keeps each request's Content-Type and raw
    body, answers like vLLM's transcription (`text`, `usage`)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["method"] == "GET":
            models = {"object": "list", "data": [{"id": "demo-model", "object": "model"}]}
            content = json.dumps(models if scope["path"] == "/v1/models" else {}).encode()
        else:
            headers = dict(scope["headers"])
            self.received.append((headers.get(b"content-type", b"").decode(), body))
            content = b'{"text":"hello","usage":{"type":"duration","seconds":1}}'
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": content})


def test_an_audio_upload_is_relayed_whole_without_a_client_priority(
    gateway: Any, make_key: Callable[..., str], settings: Any
) -> None:
    recorder = FormRecorder()
    server = ThreadedServer(recorder).start()
    settings.VLLM_BASE_URL = server.url
    try:
        headers = {"Authorization": f"Bearer {make_key()}"}
        url = gateway.url + "/v1/audio/transcriptions"
        audio = b"RIFF" + bytes(range(256)) * 8
        upload = {"file": ("hello.wav", audio, "audio/wav")}
        sent = httpx.Request("POST", url, files=upload, data={"model": "demo-model"})
        sent.headers.update(headers)
        sent.read()
        with httpx.Client() as http:
            plain = http.send(sent)
        assert (plain.status_code, plain.json()["text"]) == (200, "hello"), plain.text
        # As sent: the same bytes, the client's boundary.
        assert recorder.received[-1] == (sent.headers["content-type"], sent.content)

        changed = httpx.post(url, files=upload, data={"priority": "-5"}, headers=headers)
        assert changed.status_code == 200, changed.text
        content_type, body = recorder.received[-1]
        assert content_type.startswith("multipart/form-data; boundary=talktuah-")
        assert audio in body and b'filename="hello.wav"' in body
        assert b'name="model"\r\n\r\ndemo-model' in body  # the served model filled in
        assert b"priority" not in body  # the gateway's to set, never the client's

        misnamed = {"audio": ("hello.wav", audio, "audio/wav")}
        no_file = httpx.post(url, files=misnamed, data={"model": "demo-model"}, headers=headers)
        assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
        for wrong in ({"json": {"file": "x"}}, {"data": {"model": "demo-model"}}):
            assert httpx.post(url, headers=headers, **wrong).status_code == 415  # type: ignore[arg-type]
        settings.MAX_REQUEST_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
        big = httpx.post(url, files=upload, headers=headers)
        assert big.status_code == 413
        assert len(recorder.received) == 2  # nothing refused reached vLLM
    finally:
        server.stop()


def wait_for_usage(prefix: str, requests: int) -> list[Any]:
    import time

    from modelmgr.models import UsageDaily

    deadline = time.monotonic() + 5
    while True:
        rows = list(UsageDaily.objects.filter(key_prefix=prefix))
        if sum(r.requests for r in rows) >= requests or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


LONG = {
    "/v1/messages": {"model": "demo-model", "messages": HELLO, "max_tokens": 400},
    "/v1/responses": {"model": "demo-model", "input": "Hello", "max_output_tokens": 400},
}


@pytest.mark.parametrize("path", list(LONG))
def test_a_client_leaving_a_stream_stops_the_generation(
    gateway: Any, simulator: Any, make_key: Callable[..., str], path: str
) -> None:
    sim = simulator(tokens=400, token_delay=0.01)
    before = sim.metrics()
    headers = {"x-api-key": make_key()}
    with httpx.stream(
        "POST", gateway.url + path, json={**LONG[path], "stream": True}, headers=headers
    ) as response:
        assert response.status_code == 200
        for seen, _line in enumerate(response.iter_lines(), start=1):
            if seen >= 12:
                break
    assert_generation_stopped(sim, before)


@pytest.mark.parametrize("path", list(LONG))
def test_a_client_leaving_before_the_whole_answer_stops_the_generation(
    gateway: Any, simulator: Any, make_key: Callable[..., str], path: str
) -> None:
    sim = simulator(tokens=400, token_delay=0.01)
    before = sim.metrics()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + path, json=LONG[path], headers={"x-api-key": make_key()}, timeout=0.5
        )
    assert_generation_stopped(sim, before)


def test_a_broken_stream_ends_in_each_apis_own_error_event(
    gateway: Any, scripted: ScriptedVllm, make_key: Callable[..., str]
) -> None:
    headers = {"x-api-key": make_key()}
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":'
        b'{"input_tokens":7,"output_tokens":0}}}\n\n'
    )
    scripted.stream_chunks = [start]  # then vLLM goes away, without message_stop
    body = {"model": "demo-model", "messages": HELLO, "max_tokens": 5, "stream": True}
    raw = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers).content
    assert raw.startswith(start)
    name, data = raw[len(start) :].split(b"\n", 1)
    assert name == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["code"] == "upstream_error"
    assert b"[DONE]" not in raw

    created = (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
        b'"response":{"id":"resp_0123456789abcdef","status":"in_progress"}}\n\n'
    )
    scripted.stream_chunks = [created]
    body = {"model": "demo-model", "input": "Hello", "stream": True}
    raw = httpx.post(gateway.url + "/v1/responses", json=body, headers=headers).content
    name, data = raw[len(created) :].split(b"\n", 1)
    assert name == b"event: error"
    assert json.loads(data.removeprefix(b"data: "))["code"] == "upstream_error"
    # Its id was seen in the stream: it is this key's now (and no one else's).
    other = {"Authorization": f"Bearer {make_key(name='other')}"}
    assert (
        httpx.get(gateway.url + "/v1/responses/resp_0123456789abcdef", headers=other).status_code
        == 404
    )
