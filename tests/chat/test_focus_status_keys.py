"""What issue 23 found trying the client in a terminal: closing a screen or a dialog gives
the message input its focus back with what was typed in it; the status line never keeps
a line about something that has ended (a stopped reply, an unreachable gateway that
answers again); and every key of the footer stays in sight and readable at 60 and 80
columns."""

import pytest
from textual.widgets import Input, ListView
from textual.widgets._footer import FooterKey

from talktuah_chat.screens import chat as chat_module
from talktuah_chat.screens.chat import ChatScreen, OptionsScreen
from talktuah_chat.screens.common import ConfirmScreen
from talktuah_chat.screens.settings import SettingsScreen
from talktuah_chat.screens.widgets import ChatInput, KeyBar, StatusLine
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
from tests.net import free_port
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

CHAT_KEYS = {"ctrl+n", "f2", "f3", "f4", "f5", "f8", "f9"}


async def shown_chat_screen(pilot) -> ChatScreen:
    """The chat screen, once the app shows it."""
    return await until(
        pilot, lambda: isinstance(pilot.app.screen, ChatScreen) and (pilot.app.screen)
    )


def status(pilot) -> str:
    return text_of(chat_screen(pilot).query_one(StatusLine))


def test_closing_any_screen_or_dialog_gives_the_input_back_with_its_text(
    chat_app, simulator, make_key
):
    simulator(tokens=3, token_delay=0.01)
    app = chat_app(make_key())

    async def scenario(pilot):
        screen = await shown_chat_screen(pilot)
        box = screen.query_one(ChatInput)
        await until(pilot, lambda: screen.focused is box, what="the input's first focus")
        await pilot.press(*"half a")
        opened = [("f9", SettingsScreen), ("f2", OptionsScreen), ("f8", ConfirmScreen)]
        for key, kind in opened:
            # Whatever had the focus before (here the conversation list), the input
            # has it once the screen closes: typing goes on where it was.
            screen.query_one("#conversations", ListView).focus()
            await pilot.press(key)
            await until(pilot, lambda kind=kind: isinstance(pilot.app.screen, kind), what=key)
            if kind is SettingsScreen:
                # Typing in the settings' own fields does not reach the chat's input.
                pilot.app.screen.query_one("#switch-id", Input).focus()
                await pilot.press(*"org/x")
            await pilot.press("escape")  # every one of them closes on Escape
            await until(pilot, lambda: pilot.app.screen is screen, what=f"{key} to close")
            await pilot.pause()
            assert screen.focused is box, (key, screen.focused)
            assert box.text == "half a", key
        await pilot.press(*" thought")
        assert box.text == "half a thought"
        # Escape on the delete dialog answered no: the conversation is still there.
        assert len(screen.store.conversations()) == 1

    drive(app, scenario, size=(100, 30))


def test_a_stopped_replys_status_goes_with_the_next_send(chat_app, simulator, make_key):
    simulator(tokens=400, token_delay=0.02)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "long")
        await until(pilot, lambda: len(reply_text(last_reply(pilot))) > 10, what="streaming")
        assert status(pilot) == "Streaming…"
        await pilot.press("escape")
        await until(pilot, lambda: status(pilot) == "Stopped.", what="the stop")
        chat_screen(pilot).conversation.max_tokens = 3
        await send(pilot, "short")
        # The new request's own line replaces it at once, and nothing stays once done.
        assert status(pilot) != "Stopped."
        await until(pilot, lambda: "tok/s" in reply_figures(last_reply(pilot)), what="a reply")
        await until(pilot, lambda: status(pilot) == "", what="the status to clear")
        await pilot.pause(0.3)
        assert status(pilot) == ""

    drive(app, scenario, size=(100, 30))


def test_the_unreachable_line_goes_once_the_model_server_answers(
    chat_app, make_key, settings, monkeypatch
):
    monkeypatch.setattr(chat_module, "RECONNECT_SECONDS", 0.3)
    sim = SimulatorProcess(port=free_port(), tokens=2, token_delay=0.01)
    settings.VLLM_BASE_URL = sim.url  # nothing listens there yet
    settings.UPSTREAM_RETRY_SECONDS = 0.2
    app = chat_app(make_key())

    async def scenario(pilot):
        line = await until(pilot, lambda: status(pilot), what="the unreachable line")
        assert line.startswith("503 — vLLM is unreachable"), line
        assert line.endswith("trying again every 0.3 s.")
        sim.start()
        await until(pilot, lambda: chat_screen(pilot).models, within=20, what="the models")
        assert chat_screen(pilot).models == ["demo-model"]
        assert status(pilot) == ""

    try:
        drive(app, scenario, size=(100, 30))
    finally:
        sim.stop()


def shown_keys(screen) -> dict[str, str]:
    """The footer's keys that are fully on screen and drawn in full: key -> label."""
    width = screen.app.size.width
    found = {}
    for key in screen.query(FooterKey):
        region = key.region
        drawn = str(key.render())
        whole = f"{key.key_display} {key.description}".strip()
        if region.width and region.x >= 0 and region.right <= width and whole in drawn:
            assert len(whole) <= region.width, (whole, region)
            found[key.key] = key.description
    return found


@pytest.mark.parametrize(("columns", "rows"), [(60, 2), (80, 1)])
def test_every_key_is_in_sight_at_60_and_80_columns(chat_app, simulator, make_key, columns, rows):
    simulator(tokens=600, token_delay=0.02)
    app = chat_app(make_key())

    async def scenario(pilot):
        screen = await shown_chat_screen(pilot)
        bar = screen.query_one(KeyBar)
        keys = await until(
            pilot,
            lambda: set(shown_keys(screen)) >= CHAT_KEYS and shown_keys(screen),
            what="every key of the chat screen in sight",
        )
        assert keys["f4"] == "Copy" and keys["f5"] == "Retry"
        assert "escape" not in keys  # Stop: only while a reply streams
        assert bar.region.height == rows
        # While a reply streams Stop joins them, and still every one fits.
        await send(pilot, "go on")
        await until(pilot, lambda: "escape" in shown_keys(screen), what="Stop in the footer")
        assert set(shown_keys(screen)) >= CHAT_KEYS
        await pilot.press("escape")
        await until(pilot, lambda: "escape" not in shown_keys(screen), what="Stop to go")
        # The settings screen's footer too.
        await pilot.press("f9")
        settings_screen = await until(
            pilot, lambda: isinstance(pilot.app.screen, SettingsScreen) and pilot.app.screen
        )
        await until(pilot, lambda: shown_keys(settings_screen).get("escape") == "Back")

    drive(app, scenario, size=(columns, 24))
