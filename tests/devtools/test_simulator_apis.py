"""The simulator's Anthropic Messages, OpenAI Responses, tokenize and pooling routes
against real vLLM 0.32 captures (tests/wire/vllm-0.32: messages*, responses*,
tokenize.json, routes.txt): keys in the same order, events in the same order, the same
status codes and error bodies; generation in the batch, counted in the metrics, and
stopped at once when the client leaves, as chat.

The simulator runs as a real subprocess serving `tiny` with --max-model-len 512, like the
captured server.
"""

import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from devtools.simulator import generated_text
from tests.devtools.conftest import MODEL
from tests.devtools.test_simulator import (
    HELLO,
    HELLO_PROMPT_TOKENS,
    assert_headers_like,
    capture_json,
    shape,
    wait_for,
)
from tests.simulator_process import SimulatorProcess, assert_generation_stopped
from tests.wire import WIRE


def capture_status(name: str) -> int:
    """The status of a capture: its .status file holds `HTTP 404` or just `404`."""
    match = re.search(r"\b(\d{3})\b", (WIRE / f"{name}.status").read_text())
    assert match
    return int(match.group(1))


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of an SSE body with `event:` lines, checking the framing:
    re-framing gives back the exact bytes, and there is no `data: [DONE]`."""
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), block
        events.append((event_line.removeprefix("event: "), orjson.loads(data_line[6:])))
    framed = b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )
    assert framed == raw, raw[-300:]
    return events


def capture_events(name: str) -> list[tuple[str, dict[str, Any]]]:
    return sse_events((WIRE / name).read_bytes())


def collapsed(names: list[str]) -> list[str]:
    """Event names with runs of one name as one: the capture's tiny model sent several
    tokens in a delta where the simulator sends one a token."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


def assert_events_like(events: list[tuple[str, Any]], capture: str) -> None:
    expected = capture_events(capture)
    assert collapsed([n for n, _ in events]) == collapsed([n for n, _ in expected])
    shapes = {name: shape(data) for name, data in expected}
    for name, data in events:
        assert shape(data) == shapes[name], name


def messages(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/messages", json={"model": MODEL, "messages": HELLO, **body})


def responses(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/responses", json={"model": MODEL, "input": "Say hello", **body})


# -- Anthropic Messages --------------------------------------------------------------------


def test_messages_json_matches_vllm(client: httpx.Client) -> None:
    response = messages(client, max_tokens=5)
    assert response.status_code == 200
    assert_headers_like(response, "messages.headers")
    data = response.json()
    assert shape(data) == shape(capture_json("messages.json"))
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", data["id"])
    assert data["content"] == [{"type": "text", "text": generated_text(5)}]
    assert data["stop_reason"] == "max_tokens"
    assert data["usage"] == {"input_tokens": HELLO_PROMPT_TOKENS, "output_tokens": 5}


def test_messages_end_their_turn_below_max_tokens(client: httpx.Client) -> None:
    data = messages(client, max_tokens=100).json()
    assert data["stop_reason"] == "end_turn"
    assert data["usage"]["output_tokens"] == 16


def test_messages_stream_matches_vllm(client: httpx.Client) -> None:
    response = messages(client, max_tokens=5, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(response.content)
    assert_events_like(events, "messages-stream.sse")
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert deltas == [generated_text(i + 1)[len(generated_text(i)) :] for i in range(5)]
    start, final = events[0][1]["message"], events[-2][1]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", start["id"])
    assert start["usage"] == {"input_tokens": HELLO_PROMPT_TOKENS, "output_tokens": 0}
    assert final["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": HELLO_PROMPT_TOKENS, "output_tokens": 5}


def test_messages_count_the_system_prompt_as_chat_counts_a_system_message(
    client: httpx.Client,
) -> None:
    system = "You are terse"  # 3 words + one more message's overhead
    data = messages(client, max_tokens=1, system=system).json()
    assert data["usage"]["input_tokens"] == HELLO_PROMPT_TOKENS + 3 + 4
    chat = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "system", "content": system}, *HELLO], "max_tokens": 1},
    ).json()
    assert chat["usage"]["prompt_tokens"] == data["usage"]["input_tokens"]


def test_messages_unknown_model_is_anthropics_404_as_vllm_sends_it(client: httpx.Client) -> None:
    response = client.post(
        "/v1/messages", json={"model": "nope", "messages": HELLO, "max_tokens": 5}
    )
    assert response.status_code == capture_status("err-messages-unknown-model")
    assert response.content == (WIRE / "err-messages-unknown-model.json").read_bytes()


def test_messages_without_messages_or_max_tokens_is_fastapis_400(client: httpx.Client) -> None:
    response = client.post("/v1/messages", json={"model": MODEL})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "body.messages", 400)
    assert error["message"].startswith("2 validation errors:\n")
    assert "'loc': 'body.messages'" in error["message"]
    assert "'loc': 'body.max_tokens'" in error["message"]
    zero = messages(client, max_tokens=0).json()["error"]
    assert "max_tokens must be positive" in zero["message"]


def test_messages_count_tokens_matches_vllm(client: httpx.Client) -> None:
    response = client.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": HELLO})
    assert response.status_code == 200
    data = response.json()
    assert shape(data) == shape(capture_json("messages-count-tokens.json"))
    assert data == {
        "input_tokens": HELLO_PROMPT_TOKENS,
        "context_management": {"original_input_tokens": HELLO_PROMPT_TOKENS},
    }
    unknown = client.post("/v1/messages/count_tokens", json={"model": "nope", "messages": HELLO})
    assert unknown.content == (WIRE / "err-messages-unknown-model.json").read_bytes()


# -- OpenAI Responses ----------------------------------------------------------------------


def test_responses_json_matches_vllm(client: httpx.Client) -> None:
    response = responses(client, max_output_tokens=5)
    assert response.status_code == 200
    data = response.json()
    expected = capture_json("responses.json")
    assert shape(data) == shape(expected)
    assert re.fullmatch(r"resp_[0-9a-f]{16}", data["id"])
    assert re.fullmatch(r"msg_[0-9a-f]{16}", data["output"][0]["id"])
    assert data["output"][0]["content"][0]["text"] == generated_text(5)
    assert (data["status"], data["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    usage = data["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (
        HELLO_PROMPT_TOKENS,
        5,
        HELLO_PROMPT_TOKENS + 5,
    )

    def normalized(body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "id": "", "created_at": 0, "output": [], "usage": None}
        return body

    # Everything else the response object echoes is what vLLM answered.
    assert normalized(data) == normalized(expected)


def test_responses_complete_below_max_output_tokens(client: httpx.Client) -> None:
    data = responses(client).json()
    assert (data["status"], data["incomplete_details"]) == ("completed", None)
    assert data["usage"]["output_tokens"] == 16
    assert data["max_output_tokens"] == 512 - HELLO_PROMPT_TOKENS  # vLLM's default


def test_responses_stream_matches_vllm(client: httpx.Client) -> None:
    response = responses(client, max_output_tokens=5, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(response.content)
    assert_events_like(events, "responses-stream.sse")
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [data["type"] for _, data in events] == [name for name, _ in events]
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert "".join(deltas) == generated_text(5) and len(deltas) == 5
    completed = events[-1][1]["response"]
    assert completed["status"] == "incomplete"
    # Stored: GET gives back what response.completed carried.
    assert client.get(f"/v1/responses/{completed['id']}").json() == completed


def test_responses_take_a_list_of_messages_and_instructions(client: httpx.Client) -> None:
    data = client.post(
        "/v1/responses",
        json={"input": HELLO, "instructions": "Be brief", "max_output_tokens": 1},
    ).json()
    assert data["instructions"] == "Be brief"
    assert data["usage"]["input_tokens"] == HELLO_PROMPT_TOKENS + 2 + 4  # a system message


def test_responses_unknown_model_matches_vllm(client: httpx.Client) -> None:
    response = client.post("/v1/responses", json={"model": "nope", "input": "hi"})
    assert response.status_code == capture_status("err-responses-unknown-model")
    assert response.content == (WIRE / "err-responses-unknown-model.json").read_bytes()


def test_stored_responses_get_and_continue(client: httpx.Client) -> None:
    first = responses(client, max_output_tokens=3).json()
    assert client.get(f"/v1/responses/{first['id']}").json() == first
    follow = responses(client, previous_response_id=first["id"], max_output_tokens=1).json()
    assert follow["previous_response_id"] == first["id"]
    # The previous input and output come first: two more messages' worth of tokens.
    previous_output_words = len(generated_text(3).split())
    assert follow["usage"]["input_tokens"] == (
        HELLO_PROMPT_TOKENS + previous_output_words + 4 + 2 + 4
    )


def test_unknown_or_unstored_response_ids_are_vllms_404(client: httpx.Client) -> None:
    expected = {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    missing = client.get("/v1/responses/resp_nope")
    assert (missing.status_code, missing.json()) == (404, {"error": expected})
    unstored = responses(client, store=False, max_output_tokens=1).json()
    assert client.get(f"/v1/responses/{unstored['id']}").status_code == 404
    follow = responses(client, previous_response_id="resp_nope")
    assert (follow.status_code, follow.json()) == (404, {"error": expected})
    assert client.post("/v1/responses/resp_nope/cancel").status_code == 404
    wrong = client.get("/v1/responses/resp_nope/cancel")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


def test_cancelling_a_synchronous_response_is_refused(client: httpx.Client) -> None:
    done = responses(client, max_output_tokens=1).json()
    response = client.post(f"/v1/responses/{done['id']}/cancel")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Cannot cancel a synchronous response.",
            "type": "invalid_request_error",
            "param": None,
            "code": 400,
        }
    }


def test_a_background_response_runs_without_its_client_and_can_be_cancelled(
    sim: SimulatorProcess, client: httpx.Client
) -> None:
    quick = responses(client, background=True, max_output_tokens=3).json()
    assert (quick["status"], quick["output"], quick["usage"]) == ("queued", [], None)
    wait_for(
        lambda: client.get(f"/v1/responses/{quick['id']}").json()["status"] == "incomplete",
        timeout=5.0,
    )

    before = sim.metrics()
    long = client.post(
        "/v1/responses", json={"input": "Say hello", "background": True, "max_output_tokens": 400}
    ).json()
    wait_for(lambda: sim.metric("vllm:num_requests_running") == 1, timeout=5.0)
    assert client.get(f"/v1/responses/{long['id']}").json()["status"] == "in_progress"
    cancelled = client.post(f"/v1/responses/{long['id']}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert_generation_stopped(sim, before)
    assert client.get(f"/v1/responses/{long['id']}").json()["status"] == "cancelled"


# -- tokenize ------------------------------------------------------------------------------


def test_tokenize_matches_vllm_and_counts_as_the_generation_routes(client: httpx.Client) -> None:
    response = client.post("/tokenize", json={"model": MODEL, "prompt": "Once upon a"})
    assert response.status_code == 200
    data = response.json()
    assert shape(data) == shape(capture_json("tokenize.json"))
    assert (data["count"], data["max_model_len"], data["token_strs"]) == (3, 512, None)
    assert len(data["tokens"]) == 3
    chat = client.post("/tokenize", json={"messages": HELLO, "return_token_strs": True}).json()
    assert chat["count"] == len(chat["tokens"]) == len(chat["token_strs"]) == HELLO_PROMPT_TOKENS


def test_detokenize_gives_back_the_words(client: httpx.Client) -> None:
    tokens = client.post("/tokenize", json={"prompt": "round trip words"}).json()["tokens"]
    response = client.post("/detokenize", json={"model": MODEL, "tokens": tokens})
    assert (response.status_code, response.json()) == (200, {"prompt": "round trip words"})
    unknown = client.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.content == (WIRE / "err-unknown-model.json").read_bytes()


# -- the routes, and pooling ---------------------------------------------------------------


def test_the_captured_servers_client_routes_are_served(client: httpx.Client) -> None:
    routes = (WIRE / "routes.txt").read_text().split()
    for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/tokenize"):
        assert path in routes
        assert client.post(path, json={}).status_code == 400, path
    assert "/detokenize" in routes and "/v1/responses/{response_id}/cancel" in routes


@pytest.mark.parametrize(
    "path", ["/v1/rerank", "/v1/score", "/v1/audio/transcriptions", "/v1/embeddings"]
)
def test_pooling_and_audio_routes_are_404_on_a_generate_model(
    client: httpx.Client, path: str
) -> None:
    response = client.post(path, json={"model": MODEL})
    assert response.status_code == capture_status("err-embeddings-generate-model")
    assert response.content == (WIRE / "err-embeddings-generate-model.json").read_bytes()


class PoolingSimulator(SimulatorProcess):
    """The simulator started with --pooling."""

    @property
    def args(self) -> list[str]:
        return [*super().args, "--pooling"]


def test_pooling_serves_rerank_and_score_in_vllms_shapes() -> None:
    with PoolingSimulator(model=MODEL) as sim, httpx.Client(base_url=sim.url) as http:
        documents = ["cats sleep", "the weather today", "weather today is sunny"]
        rerank = http.post(
            "/v1/rerank", json={"model": MODEL, "query": "weather today", "documents": documents}
        ).json()
        assert list(rerank) == ["id", "model", "usage", "results"]
        assert re.fullmatch(r"rerank-[0-9a-f]{16}", rerank["id"])
        assert list(rerank["usage"]) == ["prompt_tokens", "total_tokens"]
        assert [r["index"] for r in rerank["results"]] == [1, 2, 0]
        first = rerank["results"][0]
        assert list(first) == ["index", "document", "relevance_score"]
        assert first["document"] == {"text": "the weather today", "multi_modal": None}
        scores = [r["relevance_score"] for r in rerank["results"]]
        assert scores == sorted(scores, reverse=True)
        top = http.post(
            "/v1/rerank", json={"query": "weather", "documents": documents, "top_n": 1}
        ).json()
        assert len(top["results"]) == 1

        score = http.post(
            "/v1/score", json={"model": MODEL, "text_1": "weather today", "text_2": documents}
        ).json()
        assert list(score) == ["id", "object", "created", "model", "data", "usage"]
        assert [d["index"] for d in score["data"]] == [0, 1, 2]
        assert score["data"][1] == {
            "index": 1,
            "object": "score",
            "score": rerank["results"][0]["relevance_score"],
        }
        assert (
            http.post("/v1/score", json={"model": "nope", "text_1": "a", "text_2": "b"}).status_code
            == 404
        )


# -- the batch and client disconnects ------------------------------------------------------


@pytest.mark.parametrize("route", ["messages", "responses"])
def test_generation_is_counted_in_vllms_metrics(
    sim: SimulatorProcess, client: httpx.Client, route: str
) -> None:
    before = sim.metrics()
    if route == "messages":
        messages(client, max_tokens=5)
    else:
        responses(client, max_output_tokens=5)
    after = sim.metrics()
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 5
    prompt = after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert prompt == HELLO_PROMPT_TOKENS
    for name in ("vllm:request_success_total", "simulator_requests_total"):
        assert after[name] - before[name] == 1, name


@pytest.fixture(scope="module")
def long_sim() -> Iterator[SimulatorProcess]:
    """A simulator whose "EOS" comes after 400 tokens (these APIs have no ignore_eos)."""
    with SimulatorProcess(model=MODEL, token_delay=0.02, tokens=400) as process:
        yield process


def long_request(route: str, stream: bool) -> tuple[str, dict[str, Any]]:
    if route == "messages":
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 400, "stream": stream}
        return "/v1/messages", body
    return "/v1/responses", {"input": "Say hello", "max_output_tokens": 400, "stream": stream}


@pytest.mark.parametrize("route", ["messages", "responses"])
def test_client_leaving_a_stream_stops_generation(long_sim: SimulatorProcess, route: str) -> None:
    before = long_sim.metrics()
    path, body = long_request(route, stream=True)
    with (
        httpx.Client(base_url=long_sim.url, timeout=10.0) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        deltas = 0
        for line in response.iter_lines():
            if line.startswith("event: ") and line.endswith("delta"):
                deltas += 1
            if deltas == 4:
                break
    assert_generation_stopped(long_sim, before)


@pytest.mark.parametrize("route", ["messages", "responses"])
def test_client_leaving_a_non_stream_request_stops_generation(
    long_sim: SimulatorProcess, route: str
) -> None:
    before = long_sim.metrics()
    path, body = long_request(route, stream=False)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{long_sim.url}{path}", json=body, timeout=httpx.Timeout(10.0, read=0.3))
    assert_generation_stopped(long_sim, before)
