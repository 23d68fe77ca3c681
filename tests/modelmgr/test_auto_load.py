"""Loading on demand (MODEL_AUTO_LOAD) with the process engine: a request for a model
that is downloaded but not served switches the backend to it and succeeds; streams of the
old model running at that moment are drained first, not cut."""

import asyncio
import threading
import time

import httpx
import pytest
from django.db import close_old_connections, connection

from backends.spec import BackendSpec, default_spec
from modelmgr import engines, services
from modelmgr.models import ModelSwitch, SwitchPhase
from tests.modelmgr.test_lifecycle import run_download, tiny_model_files
from tests.process_engine import use_process_engine

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_engine(settings, tmp_path, fake_hub):
    """The process engine running the simulator (30 tokens, 50 ms apart) on org/model-a,
    with org/model-a and org/model-b downloaded."""
    engine = use_process_engine(
        settings, tmp_path, startup_delay=0.5, simulator_args="--tokens 30 --token-delay 0.05"
    )
    settings.SWITCH_KEEPALIVE_SECONDS = 0.5
    settings.UPSTREAM_RETRY_SECONDS = 1.0
    for repo in ("org/model-a", "org/model-b"):
        fake_hub.add_repo(repo, tiny_model_files())
        run_download(repo)
    engine.serve(model="org/model-a", served_name="org/model-a")
    assert services.wait_until_serving("org/model-a", backend=default_spec(), timeout=20) is None
    yield engine
    engine.stop()


class SwitchWorker:
    """The worker's switch loop for one backend and its engine, in a thread of the test
    process."""

    def __init__(self, backend: BackendSpec, engine: engines.Engine) -> None:
        self.backend = backend
        self.engine = engine
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                switch = services.model_switch_claim(worker="auto-load-test", backend=self.backend)
                if switch is not None:
                    services.model_switch_run(
                        switch=switch, backend=self.backend, engine=self.engine
                    )
                self.stop.wait(0.1)
        finally:
            close_old_connections()
            connection.close()

    def __enter__(self) -> "SwitchWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(30)


def chat(model: str, *, stream: bool) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def post_chat(gateway, key: str, model: str, *, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat(model, stream=stream),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_without_auto_load_an_unserved_model_is_404(slow_engine, gateway, make_key):
    response = post_chat(gateway, make_key(), "org/model-b")
    assert response.status_code == 404
    assert not ModelSwitch.objects.exists()


def test_a_request_loads_its_model_after_the_old_ones_drain(
    slow_engine, gateway, make_key, settings
):
    settings.MODEL_AUTO_LOAD = True
    headers = {"Authorization": f"Bearer {make_key()}"}
    url = f"{gateway.url}/v1/chat/completions"

    async def scenario() -> tuple[list[bytes], httpx.Response, bytes]:
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:

            async def old_stream() -> bytes:
                async with client.stream("POST", url, json=chat("org/model-a", stream=True)) as r:
                    assert r.status_code == 200
                    return await r.aread()

            async def new_stream() -> bytes:
                async with client.stream("POST", url, json=chat("org/model-b", stream=True)) as r:
                    assert r.status_code == 200  # at once: it waits inside the stream
                    return await r.aread()

            olds = [asyncio.create_task(old_stream()) for _ in range(3)]
            await asyncio.sleep(0.4)  # the old model's streams are running
            waiting_stream = asyncio.create_task(new_stream())
            plain = await client.post(url, json=chat("org/model-b", stream=False))
            return await asyncio.gather(*olds), plain, await waiting_stream

    with SwitchWorker(default_spec(), slow_engine):
        started = time.monotonic()
        old_bodies, plain, streamed = asyncio.run(scenario())
        elapsed = time.monotonic() - started

    # The old model's streams were drained, not cut: all 30 tokens and [DONE], no error.
    for body in old_bodies:
        assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
        assert body.count(b'"content":') >= 30
    assert plain.status_code == 200, plain.text
    assert plain.json()["model"] == "org/model-b"
    assert streamed.startswith(b": loading org/model-b"), streamed[:200]
    assert b'"model":"org/model-b"' in streamed and streamed.endswith(b"data: [DONE]\n\n")
    switch = ModelSwitch.objects.get()
    assert (switch.from_model, switch.to_model, switch.phase) == (
        "org/model-a",
        "org/model-b",
        SwitchPhase.READY,
    )
    assert switch.requested_by == "auto-load"
    assert elapsed < 30


def test_auto_load_gives_up_with_503_and_retry_after(slow_engine, gateway, make_key, settings):
    settings.MODEL_AUTO_LOAD = True
    settings.SWITCH_WAIT_SECONDS = 0.5  # no worker runs: the switch never starts
    response = post_chat(gateway, make_key(), "org/model-b")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    assert response.json()["error"]["code"] == "model_switching"
    assert ModelSwitch.objects.get().phase == SwitchPhase.REQUESTED


def test_a_model_downloaded_nowhere_is_still_404(slow_engine, gateway, make_key, settings):
    settings.MODEL_AUTO_LOAD = True
    response = post_chat(gateway, make_key(), "org/never-downloaded", stream=True)
    assert response.status_code == 404
    assert not ModelSwitch.objects.exists()
