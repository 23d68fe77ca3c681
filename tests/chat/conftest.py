"""The chat client under Textual's headless pilot, against the real gateway (on a real
socket, in a thread) and real simulator processes: no HTTP is mocked."""

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import pytest_textual_snapshot
from django.db import close_old_connections, connection
from django.utils import timezone
from textual.pilot import Pilot
from textual.widgets import Markdown, Static

from backends.discovery import backend_get
from backends.services import backend_create
from modelmgr import services
from talktuah_chat.app import ChatApp
from talktuah_chat.config import Config
from talktuah_chat.screens.chat import ChatScreen
from talktuah_chat.screens.widgets import Reply
from tests.modelmgr.test_lifecycle import download
from tests.process_engine import use_process_engine
from tests.simulator_process import SimulatorProcess

# pytest-textual-snapshot 1.0.0 names its extension's suffix `_file_extension`, which
# syrupy 5 renamed `file_extension`: without this its snapshots are stored as .raw.
pytest_textual_snapshot.SVGImageExtension.file_extension = "svg"


def pytest_configure(config: pytest.Config) -> None:
    # Snapshots are written only when asked: syrupy's --snapshot-update, or this
    # variable. A missing one fails (a fresh checkout must not pass by writing them).
    if os.environ.get("TALKTUAH_UPDATE_SNAPSHOTS") == "1":
        config.option.update_snapshots = True


@pytest.fixture
def chat_app(gateway, tmp_path) -> Callable[..., ChatApp]:
    """A ChatApp on the test gateway with the given key; its conversations in tmp_path."""

    def make(key: str, url: str | None = None) -> ChatApp:
        return ChatApp(
            Config(url=url or gateway.url, key=key),
            data_path=tmp_path / "data",
            config_path=tmp_path / "config.json",
        )

    return make


def drive(
    app: ChatApp,
    scenario: Callable[[Pilot[None]], Coroutine[Any, Any, None]],
    *,
    size: tuple[int, int] = (120, 40),
) -> None:
    """Run the app headless (a terminal of size columns x rows) and play `scenario`
    against it."""

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def until(
    pilot: Pilot[None], predicate: Callable[[], Any], within: float = 15.0, what: str = "it"
) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await pilot.pause(0.05)


def text_of(widget: Static) -> str:
    return str(widget.render())


def chat_screen(pilot: Pilot[None]) -> ChatScreen:
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen), screen
    return screen


def last_reply(pilot: Pilot[None]) -> Reply:
    return list(chat_screen(pilot).query(Reply))[-1]


def reply_text(reply: Reply) -> str:
    return reply.query_one(Markdown).source


def reply_error(reply: Reply) -> str:
    return text_of(reply.query_one(".reply-error", Static))


def reply_figures(reply: Reply) -> str:
    return text_of(reply.query_one(".reply-figures", Static))


async def send(pilot: Pilot[None], text: str) -> None:
    screen = chat_screen(pilot)
    screen.query_one("#input").focus()
    await pilot.press(*text)
    await pilot.press("enter")
    await pilot.pause()


@pytest.fixture
def process_engine(settings, tmp_path):
    engine = use_process_engine(settings, tmp_path, startup_delay=1.0)
    yield engine
    engine.stop()


def in_thread(work) -> threading.Thread:
    """Run worker-side work (a switch, a download) as the worker would, off the UI loop."""

    def run():
        try:
            work()
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def two_backends(simulator, fake_hub):
    """`default` (VLLM_BASE_URL) serving org/old, downloaded here, and `gpu-2` (another
    host: its own simulator, its worker's heartbeat listing that host's cache) serving
    org/other, with org/new downloaded there too."""
    simulator(model="org/old")
    download(fake_hub, "org/old")
    second = SimulatorProcess(model="org/other").start()
    backend_create(name="gpu-2", base_url=second.url, engine="process")
    services.worker_beat(
        name="gpu-2-host:7",
        started_at=timezone.now(),
        backend=backend_get("gpu-2"),
        inventory=[
            {"repo_id": "org/other", "commit": "abc", "size_bytes": 3 * 1024**3, "path": "/x"},
            {"repo_id": "org/new", "commit": "def", "size_bytes": 512 * 1024**2, "path": "/y"},
        ],
    )
    yield second
    second.stop()
