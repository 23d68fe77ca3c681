"""Shared fixtures: the gateway on a real socket (uvicorn in a thread of the test
process, so settings overrides and the test database apply), keys, the vLLM simulator
and the fake Hub (both from devtools), and a clean in-process state between tests."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from django.core.cache import cache
from django.db import connection

from backends.pool import pool
from devtools.fakehub import FakeHub
from modelmgr import auth
from modelmgr.models import Scope
from modelmgr.services import api_key_create
from plumbing import counters
from tests.net import free_port
from tests.scripted_vllm import ScriptedVllm
from tests.simulator_process import SimulatorProcess


class ThreadedServer:
    """An ASGI app under uvicorn on 127.0.0.1:<free port>, in a background thread."""

    def __init__(self, app: Any, port: int | None = None, http: str = "auto") -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", http=http
        )
        config.access_log = False
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def gateway() -> Iterator[ThreadedServer]:
    from proxy.http import PROTOCOL
    from talktuah_site.asgi import application

    # The protocol `manage.py serve` runs the gateway with (its guards included).
    server = ThreadedServer(application, http=PROTOCOL).start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    # The gateway's threads and subprocess workers keep PostgreSQL connections to the
    # test database; end them so it can be dropped at the end of the session.
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _clean_process_state(settings: Any) -> Iterator[None]:
    # The gateway runs in this process: its caches must not leak between tests.
    settings.USAGE_FLUSH_SECONDS = 0
    settings.UPSTREAM_RETRY_SECONDS = 2.0
    cache.clear()
    counters.forget()
    auth.forget_cached_keys()
    pool.forget()
    yield
    cache.clear()
    counters.forget()
    auth.forget_cached_keys()
    pool.forget()


@pytest.fixture
def make_key(db: None) -> Callable[..., str]:
    def make(name: str = "tester", scopes: tuple[str, ...] = (Scope.INFERENCE,), **kw: Any) -> str:
        _key, plaintext = api_key_create(name=name, scopes=scopes, **kw)
        return plaintext

    return make


@pytest.fixture
def simulator(settings: Any) -> Iterator[Callable[..., SimulatorProcess]]:
    """Start a simulator (options as keyword arguments); the gateway is pointed at it."""
    started: list[SimulatorProcess] = []

    def start(wait: bool = True, **options: Any) -> SimulatorProcess:
        sim = SimulatorProcess(**options)
        sim.start(wait=wait)
        started.append(sim)
        settings.VLLM_BASE_URL = sim.url
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def scripted(settings: Any) -> Iterator[ScriptedVllm]:
    """A scripted vLLM (tests/scripted_vllm.py) the gateway is pointed at: it records the
    bodies that reach it."""
    vllm = ScriptedVllm()
    server = ThreadedServer(vllm).start()
    settings.VLLM_BASE_URL = server.url
    yield vllm
    server.stop()


@pytest.fixture
def fake_hub(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub; settings.HF_ENDPOINT points at it and the HF cache is per test."""
    cache_dir = tmp_path / "hf" / "hub"
    with FakeHub() as hub:
        settings.HF_ENDPOINT = hub.url
        settings.HF_CACHE_DIR = cache_dir
        settings.HF_TOKEN = None
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield hub
