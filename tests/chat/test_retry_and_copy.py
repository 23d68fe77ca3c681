"""Retry (F5) sends the last prompt again in place of what answered it, a failed reply or
an unwanted one, on screen, in the history sent and in the store; Copy (F4) puts the
last reply on the clipboard."""

import pytest

from talktuah_chat.store import Store
from tests.chat.conftest import (
    chat_screen,
    drive,
    last_reply,
    reply_error,
    reply_figures,
    reply_text,
    send,
    until,
)
from tests.net import free_port
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)


def stored(app) -> list[tuple[str, str]]:
    store = Store(app.data_path / "conversations.sqlite3")
    try:
        [conversation] = store.conversations()
        return [(m.role, m.figures) for m in store.messages(conversation.id)]
    finally:
        store.close()


def test_retry_replaces_a_failed_reply(chat_app, make_key, settings):
    sim = SimulatorProcess(port=free_port(), tokens=3, token_delay=0.01)
    settings.VLLM_BASE_URL = sim.url  # nothing listens there yet: the reply fails
    settings.UPSTREAM_RETRY_SECONDS = 0.2
    app = chat_app(make_key())

    async def scenario(pilot):
        screen = chat_screen(pilot)
        await send(pilot, "are you there?")
        failed = last_reply(pilot)
        error = await until(pilot, lambda: reply_error(failed), what="the failure")
        assert error.startswith("502"), error
        sim.start()
        await pilot.press("f5")
        await until(pilot, lambda: last_reply(pilot) is not failed, what="a new reply")
        reply = last_reply(pilot)
        await until(pilot, lambda: "tok/s" in reply_figures(reply), within=20, what="a reply")
        # The failed reply left the screen; one prompt, one reply.
        assert not failed.is_attached
        assert len(list(screen.query("Reply"))) == 1
        assert len(list(screen.query(".prompt"))) == 1
        assert reply_error(reply) == ""
        assert reply_text(reply).startswith("Hello")
        assert [turn.role for turn in screen.turns] == ["user", "assistant"]

    try:
        drive(app, scenario)
    finally:
        sim.stop()
    assert [role for role, _ in stored(app)] == ["user", "assistant"]


def test_retry_replaces_an_unwanted_reply_everywhere(chat_app, simulator, make_key):
    sim = simulator(tokens=6, token_delay=0.01)
    app = chat_app(make_key())
    sent: list[dict] = []

    async def scenario(pilot):
        screen = chat_screen(pilot)
        await send(pilot, "tell me")
        first = last_reply(pilot)
        await until(pilot, lambda: "completion 6 tok" in reply_figures(first), what="a reply")
        screen.conversation.max_tokens = 2  # the next answer is told apart by its length
        await pilot.press("f5")
        await until(pilot, lambda: last_reply(pilot) is not first, what="the new reply")
        second = last_reply(pilot)
        await until(pilot, lambda: "completion 2 tok" in reply_figures(second), what="it")
        assert len(list(screen.query("Reply"))) == 1 and not first.is_attached
        # What goes to the gateway next holds the prompt once and only the new reply.
        sent.append(screen.request_body())

    drive(app, scenario)
    [body] = sent
    assert [(m["role"], m["content"][:5]) for m in body["messages"]] == [
        ("user", "tell "),
        ("assistant", "Hello"),
    ]
    kept = stored(app)
    assert [role for role, _ in kept] == ["user", "assistant"]
    assert "completion 2 tok" in kept[1][1]
    assert sim.metric("vllm:request_success_total") == 2


def test_retry_and_copy_with_nothing_to_act_on(chat_app, simulator, make_key):
    sim = simulator(tokens=2, token_delay=0.01)
    app = chat_app(make_key())

    async def scenario(pilot):
        screen = chat_screen(pilot)
        await pilot.press("f5", "f4")
        await pilot.pause(0.3)
        assert not list(screen.query("Reply"))  # nothing was sent
        assert pilot.app.clipboard == ""
        messages = [n.message for n in pilot.app._notifications]
        assert "Nothing to send again yet." in messages
        assert "No reply to copy yet." in messages

    drive(app, scenario)
    assert sim.metric("vllm:request_success_total") == 0


def test_copy_puts_the_last_reply_on_the_clipboard(chat_app, simulator, make_key):
    simulator(tokens=5, token_delay=0.01)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "one")
        first = last_reply(pilot)
        await until(pilot, lambda: "tok/s" in reply_figures(first), what="a reply")
        chat_screen(pilot).conversation.max_tokens = 2
        await send(pilot, "two")
        reply = last_reply(pilot)
        await until(pilot, lambda: "completion 2 tok" in reply_figures(reply), what="reply 2")
        assert reply_text(reply) != reply_text(first)
        await pilot.press("f4")
        # The last reply's text as it came (Markdown source), not the first one's.
        assert pilot.app.clipboard == reply_text(reply)
        assert pilot.app.clipboard == chat_screen(pilot).turns[-1].content

    drive(app, scenario)
