"""Issue 24 in the client, against the real gateway in front of a busy simulator (one
request at a time, the gateway's capacity one): a reply held in the gateway's admission
queue says so on the status line while it waits, the settings screen shows the queue
(capacity, running, waiting by tier) meanwhile, and the reply's figures say how long it
queued."""

import asyncio

import httpx
import pytest
from textual.widgets import Static

from modelmgr.models import Scope
from talktuah_chat.screens.chat import ChatScreen
from talktuah_chat.screens.settings import SettingsScreen
from talktuah_chat.screens.widgets import StatusLine
from tests.chat.conftest import (
    chat_screen,
    drive,
    last_reply,
    reply_figures,
    reply_text,
    send,
    text_of,
    until,
)
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def busy(settings):
    """A vLLM that runs one request at a time, and a gateway whose capacity says so."""
    settings.BACKEND_CAPACITY = 1
    settings.ADMISSION_HEADROOM = 0
    settings.ADMISSION_KEEPALIVE_SECONDS = 0.2
    with SimulatorProcess(max_num_seqs=1, tokens=4, token_delay=0.02) as sim:
        settings.VLLM_BASE_URL = sim.url
        yield sim


async def hold_the_slot(url: str, key: str, started: asyncio.Event) -> None:
    """Another client's long stream, holding the backend's one slot until cancelled."""
    body = {
        "messages": [{"role": "user", "content": "a long one"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(timeout=60, headers=headers) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                started.set()


def test_a_reply_held_in_the_queue_says_so_and_how_long(chat_app, gateway, busy, make_key):
    app = chat_app(make_key(scopes=(Scope.ADMIN, Scope.INFERENCE)))
    other = make_key(name="other")
    held: dict[str, object] = {}

    async def scenario(pilot):
        screen = chat_screen(pilot)
        started = asyncio.Event()
        holder = asyncio.ensure_future(hold_the_slot(gateway.url, other, started))
        try:
            await asyncio.wait_for(started.wait(), 20)
            await send(pilot, "my turn?")
            status = screen.query_one(StatusLine)
            held["status"] = await until(
                pilot,
                lambda: text_of(status).startswith("Queued") and text_of(status),
                what="the queued status",
            )
            # The settings screen shows the gateway's queue: the slot taken, one waiting.
            await pilot.press("f9")
            settings = await until(
                pilot, lambda: isinstance(pilot.app.screen, SettingsScreen) and pilot.app.screen
            )
            health = settings.query_one("#health", Static)
            held["health"] = await until(
                pilot,
                lambda: "1 waiting" in text_of(health) and text_of(health),
                what="the waiting request in the health panel",
            )
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen))
            await asyncio.sleep(0.5)  # queued a while longer
            assert not reply_text(last_reply(pilot))  # nothing of it yet
        finally:
            holder.cancel()  # the slot is free: the held reply goes through
        reply = last_reply(pilot)
        held["figures"] = await until(
            pilot, lambda: "tok/s" in reply_figures(reply) and reply_figures(reply), what="it"
        )
        assert reply_text(reply).startswith("Hello")
        await until(pilot, lambda: text_of(status) == "", what="the status to clear")

    drive(app, scenario)
    assert held["status"].startswith("Queued: the backend is full ("), held
    assert "Gateway queue: capacity 1, 1 running, 1 waiting (1 interactive)" in held["health"]
    figures = str(held["figures"])
    queued = float(figures.split("queued ")[1].split(" s")[0])
    assert queued >= 0.5, figures
