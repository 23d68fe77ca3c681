"""Configuration (flags, environment, the config file) and the first-run screen against
the real gateway; conversations kept locally: options, rename, open, delete, export."""

import json
import stat

import pytest
from textual.widgets import Input, ListView, Static, TextArea

from talktuah_chat import config as configuration
from talktuah_chat.app import ChatApp
from talktuah_chat.config import Config
from talktuah_chat.screens.chat import ChatScreen
from talktuah_chat.screens.setup import SetupScreen
from talktuah_chat.store import Store
from tests.chat.conftest import (
    chat_screen,
    drive,
    last_reply,
    reply_figures,
    send,
    text_of,
    until,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_flags_beat_the_environment_which_beats_the_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    configuration.save(Config(url="http://file:1", key="tt-file"), path=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds a key
    monkeypatch.delenv("TALKTUAH_URL", raising=False)
    monkeypatch.delenv("TALKTUAH_KEY", raising=False)
    assert configuration.load(path=path) == Config("http://file:1", "tt-file")
    monkeypatch.setenv("TALKTUAH_URL", "http://env:2/")
    monkeypatch.setenv("TALKTUAH_KEY", "tt-env")
    assert configuration.load(path=path) == Config("http://env:2", "tt-env")
    assert configuration.load(url="http://flag:3", key="tt-flag", path=path) == Config(
        "http://flag:3", "tt-flag"
    )
    path.write_text("{not json")
    monkeypatch.delenv("TALKTUAH_KEY")
    assert configuration.load(path=path) == Config("http://env:2", "")


def test_the_first_run_screen_checks_the_key(gateway, simulator, make_key, tmp_path):
    simulator()
    good = make_key()
    config_path = tmp_path / "config.json"
    app = ChatApp(Config(url="", key=""), data_path=tmp_path / "data", config_path=config_path)

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, SetupScreen))
        screen = pilot.app.screen
        screen.query_one("#setup-url", Input).value = gateway.url
        screen.query_one("#setup-key", Input).value = "tt-wrong.key"
        await pilot.click("#setup-check")
        result = screen.query_one("#setup-result", Static)
        await until(pilot, lambda: text_of(result).startswith("401"), what="the 401")
        assert "refused this key" in text_of(result)
        assert not config_path.exists()
        key_box = screen.query_one("#setup-key", Input)
        key_box.value = good
        key_box.focus()
        await pilot.press("enter")  # Enter in the form checks too
        await until(
            pilot,
            lambda: isinstance(pilot.app.screen, ChatScreen),
            what=f"the chat (the check said: {text_of(result)!r})",
        )

    drive(app, scenario)
    assert json.loads(config_path.read_text()) == {"url": gateway.url, "key": good}


def test_conversations_are_kept_renamed_opened_deleted_and_exported(
    chat_app, simulator, make_key, tmp_path
):
    simulator(tokens=4, token_delay=0.01)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "first question")
        await until(pilot, lambda: "tok/s" in reply_figures(last_reply(pilot)), what="a reply")
        screen = chat_screen(pilot)
        first = screen.conversation
        # Options: rename, system prompt, temperature, max tokens.
        await pilot.press("f2")
        await until(pilot, lambda: pilot.app.screen.query("#opt-title"))
        options = pilot.app.screen
        options.query_one("#opt-title", Input).value = "Renamed"
        options.query_one("#opt-system", TextArea).text = "Answer briefly."
        options.query_one("#opt-temperature", Input).value = "0.2"
        options.query_one("#opt-max-tokens", Input).value = "3"
        await pilot.click("#opt-save")
        await until(pilot, lambda: pilot.app.screen is screen)
        body = screen.request_body()
        assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
        assert body["temperature"] == 0.2 and body["max_tokens"] == 3
        await send(pilot, "second")
        await until(pilot, lambda: "completion 3 tok" in reply_figures(last_reply(pilot)))
        # A new conversation, then back to the first from the list.
        await pilot.press("ctrl+n")
        await until(pilot, lambda: screen.conversation.id != first.id)
        assert not list(screen.query("Reply"))
        listing = screen.query_one("#conversations", ListView)
        assert len(listing.children) == 2
        names = [item.name for item in listing.children]
        listing.focus()
        listing.index = names.index(str(first.id))
        await pilot.press("enter")
        await until(pilot, lambda: screen.conversation.id == first.id, what="the reopened chat")
        assert len(list(screen.query("Reply"))) == 2
        # Export to Markdown, from the input box as one would.
        screen.query_one("#input").focus()
        await pilot.press("f3")
        await pilot.pause()
        # Delete the other conversation (confirmed).
        await pilot.press("ctrl+n")
        await until(pilot, lambda: screen.conversation.id != first.id)
        await pilot.press("f8")
        await until(pilot, lambda: pilot.app.screen.query("#yes"))
        await pilot.click("#yes")
        await until(pilot, lambda: pilot.app.screen is screen)

    drive(app, scenario)
    store = Store(app.data_path / "conversations.sqlite3")
    conversations = store.conversations()
    assert [c.title for c in conversations] == ["Renamed"]
    assert conversations[0].temperature == 0.2 and conversations[0].max_tokens == 3
    exported = list((app.data_path / "exports").glob("*.md"))
    assert len(exported) == 1
    text = exported[0].read_text()
    assert text.startswith("# Renamed\n")
    assert "> System: Answer briefly." in text
    assert "## User\n\nfirst question" in text
    assert "## Assistant\n\nHello, this is" in text
    assert "completion 3 tok" in text
