"""Screens compared with stored SVG screenshots (pytest-textual-snapshot's snap_compare,
stored by syrupy in tests/chat/__snapshots__/test_snapshots/). A missing snapshot fails;
after a deliberate change: `pytest tests/chat/test_snapshots.py --snapshot-update` (or
TALKTUAH_UPDATE_SNAPSHOTS=1), then look at the SVGs; a failed run writes
snapshot_report.html with both side by side.

The chat and settings screens are driven against the real gateway and simulator
processes. What differs from run to run is masked on screen before the screenshot
(`steady`): the gateway's port in the header, and a reply's time to first token and
tokens/s (shown as ##); no field has the focus (a blinking cursor). Everything else is
stable: the simulator's reply, token counts and queue figures, the models' sizes (fixed
files and inventories), no dates or clocks."""

import re

import pytest
from textual.widgets import DataTable, Static

from modelmgr.models import Scope
from talktuah_chat.app import ChatApp
from talktuah_chat.config import Config
from talktuah_chat.screens.settings import SettingsScreen
from talktuah_chat.screens.setup import SetupScreen
from tests.chat.conftest import (
    chat_screen,
    last_reply,
    reply_figures,
    reply_text,
    send,
    text_of,
    until,
)

REPLY = """Here is **FizzBuzz** in Python:

```python
for n in range(1, 16):
    print("Fizz" * (n % 3 == 0) + "Buzz" * (n % 5 == 0) or n)
```

- `range(1, 16)` counts to *15*
- an empty string is false, so `or n` prints the number
"""


@pytest.fixture(autouse=True)
def _same_picture_everywhere(monkeypatch):
    # What a developer's environment could change in the picture: NO_COLOR (read when
    # an App is made) drops every colour. The theme is set on each app (TEXTUAL_THEME
    # would change the default one).
    monkeypatch.delenv("NO_COLOR", raising=False)


def pinned(app: ChatApp) -> ChatApp:
    app.theme = "textual-dark"
    return app


def test_the_first_run_screen(tmp_path, snap_compare):
    app = pinned(
        ChatApp(Config(), data_path=tmp_path / "data", config_path=tmp_path / "config.json")
    )

    async def first_run(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, SetupScreen))
        steady(pilot.app)

    assert snap_compare(app, terminal_size=(100, 30), run_before=first_run)


def steady(app: ChatApp, gateway_url: str | None = None) -> None:
    """Mask what differs between runs (see the module's docstring), and take the focus
    off the input fields: whether the screenshot catches a blinking cursor on or off
    varies (and TextArea caches a line drawn either way)."""
    app.screen.set_focus(None)
    if gateway_url is None:
        return
    app.sub_title = app.sub_title.replace(gateway_url, "http://127.0.0.1:PORT")
    for figures in app.screen.query(".reply-figures").results(Static):
        line = text_of(figures)
        line = re.sub(r"first token \d+ ms", "first token ## ms", line)
        figures.update(re.sub(r"[\d.]+ tok/s", "##.# tok/s", line))


@pytest.mark.django_db(transaction=True)
def test_the_chat_screen_with_a_streamed_markdown_reply(
    chat_app, gateway, simulator, make_key, snap_compare
):
    simulator(model="demo-model", reply=REPLY, token_delay=0.005)
    app = pinned(chat_app(make_key()))

    async def a_reply(pilot):
        await until(pilot, lambda: chat_screen(pilot))
        await send(pilot, "FizzBuzz in Python?")
        await until(pilot, lambda: "completion" in reply_figures(last_reply(pilot)), what="figures")
        assert reply_text(last_reply(pilot)) == REPLY
        figures = reply_figures(last_reply(pilot))
        assert figures.startswith("demo-model · first token ") and "tok/s" in figures, figures
        steady(pilot.app, gateway.url)

    assert snap_compare(app, terminal_size=(110, 36), run_before=a_reply)


@pytest.mark.django_db(transaction=True)
def test_the_chat_screen_at_60_columns(chat_app, gateway, simulator, make_key, snap_compare):
    # Issue 23: at 60 columns the list narrows and the footer takes two rows, every key
    # in sight.
    simulator(model="demo-model", tokens=8, token_delay=0.005)
    app = pinned(chat_app(make_key()))

    async def a_reply(pilot):
        await until(pilot, lambda: chat_screen(pilot))
        await send(pilot, "Hello?")
        await until(pilot, lambda: "completion" in reply_figures(last_reply(pilot)), what="figures")
        steady(pilot.app, gateway.url)

    assert snap_compare(app, terminal_size=(60, 24), run_before=a_reply)


@pytest.mark.django_db(transaction=True)
def test_the_settings_screen_with_two_backends(
    chat_app, gateway, two_backends, make_key, snap_compare
):
    app = pinned(chat_app(make_key(scopes=(Scope.ADMIN, Scope.INFERENCE))))

    async def settings(pilot):
        await until(pilot, lambda: chat_screen(pilot))
        await pilot.press("f9")
        screen = await until(
            pilot, lambda: isinstance(pilot.app.screen, SettingsScreen) and pilot.app.screen
        )
        await until(pilot, lambda: screen.query_one("#models", DataTable).row_count == 3)
        health = screen.query_one("#health", Static)
        await until(
            pilot,
            lambda: text_of(health).count(": ok, serving") == 2,
            what="both backends in the health panel",
        )
        steady(pilot.app, gateway.url)

    assert snap_compare(app, terminal_size=(110, 40), run_before=settings)
