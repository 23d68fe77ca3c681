"""Chatting through the gateway: a streamed reply with its figures, Esc stopping the
generation upstream, a refused key and a rate limit shown inline, the history kept."""

import time

import pytest
from textual.widgets import Select

from backends.spec import default_spec
from modelmgr import services
from talktuah_chat.gateway import RetryPolicy
from talktuah_chat.store import Store
from tests.chat.conftest import (
    chat_screen,
    drive,
    in_thread,
    last_reply,
    reply_error,
    reply_figures,
    reply_text,
    send,
    text_of,
    until,
)
from tests.modelmgr.test_lifecycle import download
from tests.net import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_streams_a_reply_with_its_figures(chat_app, simulator, make_key):
    simulator(tokens=12, token_delay=0.05)
    app = chat_app(make_key())
    seen: list[str] = []

    async def scenario(pilot):
        await send(pilot, "Hello there")
        await until(pilot, lambda: list(chat_screen(pilot).query("Reply")), what="a reply")
        reply = last_reply(pilot)
        # The text grows while the reply streams, then the figures appear under it.
        await until(pilot, lambda: seen.append(reply_text(reply)) or "vLLM" in seen[-1])
        await until(pilot, lambda: "tok/s" in reply_figures(reply), what="the figures")
        assert reply_text(reply).startswith("Hello, this is the vLLM simulator")
        figures = reply_figures(reply)
        assert "first token" in figures
        assert "completion 12 tok" in figures
        assert "prompt " in figures
        assert "demo-model" in figures
        # The model picker offers what /v1/models lists (an unknown value would raise),
        # and the choice goes into the next request and the conversation.
        screen = chat_screen(pilot)
        await until(pilot, lambda: screen.models, what="the model list")
        assert screen.models == ["demo-model"]
        screen.query_one("#model", Select).value = "demo-model"
        await pilot.pause()
        assert screen.request_body()["model"] == "demo-model"
        assert screen.conversation.model == "demo-model"

    drive(app, scenario)
    partial = [text for text in seen if text and not text.endswith("!")]
    assert partial, "the reply never showed partly written: it did not stream"
    # The conversation is kept: both turns are in the local store, titled by the prompt.
    store = Store(app.data_path / "conversations.sqlite3")
    conversation = store.conversations()[0]
    assert conversation.title == "Hello there"
    assert [m.role for m in store.messages(conversation.id)] == ["user", "assistant"]


def test_escape_stops_the_generation(chat_app, simulator, make_key):
    sim = simulator(tokens=2000, token_delay=0.02)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "Tell me everything")
        await until(pilot, lambda: len(reply_text(last_reply(pilot))) > 20, what="streaming")
        await pilot.press("escape")
        await until(pilot, lambda: "Stopped" in text_of(chat_screen(pilot).query_one("#status")))
        await pilot.pause(0.5)
        stopped_at = sim.metric("vllm:generation_tokens_total")
        await pilot.pause(1.0)
        # vLLM was told: its token counter no longer grows.
        assert sim.metric("vllm:generation_tokens_total") == stopped_at
        assert stopped_at < 1000
        assert sim.metric("vllm:num_requests_running") == 0

    drive(app, scenario)


def test_it_shows_a_refused_key_inline(chat_app, simulator):
    simulator()
    app = chat_app("tt-nothere.notasecret")

    async def scenario(pilot):
        await send(pilot, "hi")
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the error")
        assert error.startswith("401")
        assert "refused this key" in error

    drive(app, scenario)


def test_it_counts_down_a_rate_limit(chat_app, simulator, make_key):
    simulator(tokens=3, token_delay=0.01)
    app = chat_app(make_key(rpm_limit=1))

    async def scenario(pilot):
        await send(pilot, "one")
        await until(pilot, lambda: "tok/s" in reply_figures(last_reply(pilot)), what="a reply")
        await send(pilot, "two")
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the 429")
        assert error.startswith("429")
        first = int(error.split("Send again in ")[1].split()[0])
        assert 0 < first <= 60
        start = time.monotonic()

        # The countdown moves by itself. The limit's minute ends at a moment fixed per key, so
        # the gateway may say 1 or 2 s: then the next tick already says sending works again.
        def moved() -> bool:
            error = reply_error(last_reply(pilot))
            return (
                f"in {first - 1} s" in error
                or f"in {first - 2} s" in error
                or (first <= 2 and "You can send again now." in error)
            )

        await until(pilot, moved, within=4, what="the countdown to move")
        assert time.monotonic() - start >= 0.5

    drive(app, scenario)


def test_input_history_and_newlines(chat_app, simulator, make_key):
    simulator(tokens=2, token_delay=0.01)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "first")
        await until(pilot, lambda: "tok/s" in reply_figures(last_reply(pilot)), what="a reply")
        box = chat_screen(pilot).query_one("#input")
        await pilot.press("a", "ctrl+j", "b")
        assert box.text == "a\nb"
        box.text = ""
        await pilot.press("up")
        assert box.text == "first"
        await pilot.press("down")
        assert box.text == ""
        # What the user types is shown as typed, never read as Textual markup.
        box.text = "[/bold] is [red]not[/red] markup"
        await pilot.press("enter")
        await until(pilot, lambda: len(list(chat_screen(pilot).query(".prompt"))) == 2)
        shown = text_of(list(chat_screen(pilot).query(".prompt"))[-1])
        assert shown == "[/bold] is [red]not[/red] markup"

    drive(app, scenario)


def test_a_stream_broken_midway_ends_with_its_error_inline(chat_app, simulator, make_key):
    sim = simulator(tokens=2000, token_delay=0.02)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "go on")
        await until(pilot, lambda: len(reply_text(last_reply(pilot))) > 20, what="streaming")
        sim.kill()  # vLLM dies mid-stream: the gateway ends it with an error event
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the error")
        assert error.startswith("502"), error
        # What arrived before the break stays on screen.
        assert reply_text(last_reply(pilot)).startswith("Hello, this is")

    drive(app, scenario)


def test_an_unreachable_model_server_is_a_502_inline(chat_app, make_key, settings):
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{free_port()}"
    settings.UPSTREAM_RETRY_SECONDS = 0.5
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "anyone?")
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the error")
        assert error.startswith("502 — the model server is unreachable"), error

    drive(app, scenario)


def test_it_waits_through_a_model_switch(chat_app, fake_hub, process_engine, make_key, settings):
    settings.SWITCH_WAIT_SECONDS = 0.5  # no worker yet: the gateway answers 503 soon
    download(fake_hub, "org/model-a")
    download(fake_hub, "org/model-b")
    process_engine.serve(model="org/model-a", served_name="org/model-a")
    backend = default_spec()
    assert services.wait_until_serving("org/model-a", backend=backend, timeout=20) is None
    services.model_switch_request(repo_id="org/model-b", backend=backend, requested_by="tester")
    app = chat_app(make_key())
    app.gateway.retry = RetryPolicy(max_seconds=2)
    threads = []

    def run_the_switch():
        services.model_switch_run(
            switch=services.model_switch_claim(worker="test", backend=backend),
            backend=backend,
            engine=process_engine,
        )

    async def scenario(pilot):
        chat_screen(pilot).conversation.model = "org/model-b"
        await send(pilot, "hello b")
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the 503")
        assert error.startswith("503 — the model is switching"), error
        assert "retrying in" in error
        status = chat_screen(pilot).query_one("#status")
        await until(pilot, lambda: text_of(status).startswith("Model switching: retry in"))
        threads.append(in_thread(run_the_switch))
        # The client retries by itself and the reply comes from the new model.
        reply = last_reply(pilot)
        await until(pilot, lambda: "tok/s" in reply_figures(reply), within=40, what="a reply")
        assert "org/model-b" in reply_figures(reply)
        assert reply_error(reply) == ""
        # No retry notice is left once the reply is in.
        await until(pilot, lambda: text_of(status) == "", what="the status to clear")

    try:
        drive(app, scenario)
    finally:
        for thread in threads:
            thread.join(60)


def test_moving_to_another_chat_mid_stream_keeps_what_arrived(chat_app, simulator, make_key):
    simulator(tokens=2000, token_delay=0.02)
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "a long one")
        await until(pilot, lambda: len(reply_text(last_reply(pilot))) > 20, what="streaming")
        await pilot.press("ctrl+n")
        screen = chat_screen(pilot)
        await until(pilot, lambda: not list(screen.query("Reply")), what="the new chat")
        assert screen.generation is not None
        await until(pilot, lambda: screen.generation.is_finished, what="the stream to close")
        # "Stopped." was about the other conversation's reply: this one's line is empty.
        await pilot.pause()
        assert text_of(screen.query_one("#status")) == ""

    drive(app, scenario)
    store = Store(app.data_path / "conversations.sqlite3")
    [talked] = [c for c in store.conversations() if c.title == "a long one"]
    kept = store.messages(talked.id)
    assert [m.role for m in kept] == ["user", "assistant"]
    assert kept[1].content.startswith("Hello, this is")
    assert kept[1].figures.endswith("stopped")


def test_a_silent_model_server_is_a_504_inline(chat_app, simulator, make_key, settings):
    simulator(tokens=5, token_delay=1.5)
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    app = chat_app(make_key())

    async def scenario(pilot):
        await send(pilot, "slowly")
        error = await until(pilot, lambda: reply_error(last_reply(pilot)), what="the error")
        assert error.startswith("504 — the model server stopped answering"), error

    drive(app, scenario)
