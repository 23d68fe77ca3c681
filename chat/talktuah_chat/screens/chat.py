"""The chat screen: conversations on the left, the reply streamed as Markdown into its
own widget, figures under it, errors inline; and the dialog of a conversation's options.
What the gateway reports (a retry while it switches models, a wait in its queue) is shown
as it comes: the deciding is the Gateway's. The last reply can be sent again (replacing
it) or copied to the clipboard. Whatever screen or dialog closes, the message input has
the focus again, with what was typed in it."""

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import (
    Button,
    Header,
    Input,
    Label,
    ListItem,
    ListView,
    Markdown,
    Select,
    Static,
    TextArea,
)
from textual.worker import Worker

from talktuah_chat.gateway import (
    Attempt,
    Comment,
    Figures,
    Gateway,
    GatewayError,
    Queued,
    Retrying,
)
from talktuah_chat.screens.common import ConfirmScreen, describe
from talktuah_chat.screens.settings import SettingsScreen
from talktuah_chat.screens.widgets import ChatInput, KeyBar, Reply, StatusLine
from talktuah_chat.store import Conversation, Message, Store

RECONNECT_SECONDS = 5  # how often the model list is asked again while it fails
# Errors that pass (the gateway or vLLM not reachable yet); others (a refused key) stay.
PASSING = (0, 502, 503, 504)


class OptionsScreen(ModalScreen[Conversation | None]):
    """A conversation's title, system prompt, temperature and max tokens."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, conversation: Conversation) -> None:
        super().__init__()
        self.conversation = conversation

    def compose(self) -> ComposeResult:
        c = self.conversation
        with Vertical(classes="dialog"):
            yield Label("Title")
            yield Input(c.title, id="opt-title")
            yield Label("System prompt")
            yield TextArea(c.system_prompt, id="opt-system")
            yield Label("Temperature (empty: the server's default)")
            yield Input("" if c.temperature is None else str(c.temperature), id="opt-temperature")
            yield Label("Max tokens (empty: no limit)")
            yield Input("" if c.max_tokens is None else str(c.max_tokens), id="opt-max-tokens")
            yield Static("", id="opt-error")
            with Horizontal():
                yield Button("Save", id="opt-save", variant="primary")
                yield Button("Cancel", id="opt-cancel")

    @on(Button.Pressed, "#opt-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#opt-save")
    def save(self) -> None:
        temperature = self.query_one("#opt-temperature", Input).value.strip()
        max_tokens = self.query_one("#opt-max-tokens", Input).value.strip()
        try:
            self.conversation.temperature = float(temperature) if temperature else None
            self.conversation.max_tokens = int(max_tokens) if max_tokens else None
        except ValueError:
            self.query_one("#opt-error", Static).update(
                "Temperature is a number, max tokens a whole number."
            )
            return
        self.conversation.title = self.query_one("#opt-title", Input).value.strip() or "Chat"
        self.conversation.system_prompt = self.query_one("#opt-system", TextArea).text
        self.dismiss(self.conversation)


class ChatScreen(Screen[None]):
    """Chats through `gateway`, kept in `store`; exports go to the `exports` directory."""

    # Short labels: the footer shows every one at 60 columns (Stop only while streaming).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new", "New"),
        Binding("f2", "options", "Options"),
        Binding("f3", "export", "Export"),
        Binding("f4", "copy_reply", "Copy"),
        Binding("f5", "retry", "Retry"),
        Binding("f8", "delete", "Delete"),
        Binding("f9", "settings", "Settings"),
    ]
    # Below 90 columns the conversation list narrows (the App's CSS), leaving the chat room.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (90, "-wide")]

    def __init__(self, gateway: Gateway, store: Store, *, exports: Path) -> None:
        super().__init__()
        self.gateway = gateway
        self.store = store
        self.exports = exports
        self.conversation: Conversation | None = None
        self.turns: list[Message] = []
        self.generation: Worker[None] | None = None
        self.countdown: Timer | None = None
        self.end_countdown_text = ""  # what the refused reply says once it stops counting
        self.counted: Reply | None = None  # the reply the countdown is shown in
        self.models: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield ListView(id="conversations")
            with Vertical(id="main"):
                with Horizontal(id="topbar"):
                    yield Select[str]([], prompt="model: served now", id="model")
                    yield Label("", id="title", markup=False)
                yield VerticalScroll(id="log")
                yield StatusLine(id="status")
                yield ChatInput(id="input")
        yield KeyBar()

    async def on_mount(self) -> None:
        conversations = self.store.conversations()
        await self.open(conversations[0] if conversations else self.store.create())
        self.query_one("#input").focus()
        self.run_worker(self.load_models(), group="models")

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def streaming(self) -> bool:
        """A reply is on its way (its worker not finished, also while it starts)."""
        return self.generation is not None and not self.generation.is_finished

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self.generation:
            self.refresh_bindings()  # Stop shows while a reply streams

    def on_screen_resume(self) -> None:
        # Back from settings or a dialog: typing goes on in the input, whatever had the
        # focus before (nothing, when that widget went meanwhile).
        for chat_input in self.query(ChatInput):
            chat_input.focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.streaming  # shown only while there is something to stop
        return True

    async def load_models(self) -> None:
        """The model picker's list. While the gateway cannot be reached the status line
        says so and it is asked again every RECONNECT_SECONDS; the line goes once it
        answers."""
        while True:
            try:
                models = await self.gateway.models()
                break
            except GatewayError as error:
                if error.status not in PASSING:
                    self.status.offer(describe(error), about="gateway")
                    return
                again = f"{describe(error)}; trying again every {RECONNECT_SECONDS} s."
                self.status.offer(again, about="gateway")
            await asyncio.sleep(RECONNECT_SECONDS)
        self.status.clear("gateway")
        self.models = models
        self.query_one("#model", Select).set_options([(m, m) for m in models])
        self.show_model_choice()

    def show_model_choice(self) -> None:
        """The conversation's model in the picker; blank: whatever vLLM serves now."""
        wanted = self.conversation.model if self.conversation else None
        select = self.query_one("#model", Select)
        with self.prevent(Select.Changed):
            if wanted and wanted not in self.models:
                self.models.append(wanted)
                select.set_options([(m, m) for m in self.models])
            if wanted:
                select.value = wanted
            else:
                select.clear()

    async def refresh_list(self) -> None:
        view = self.query_one("#conversations", ListView)
        await view.clear()
        current = 0
        for i, conversation in enumerate(self.store.conversations()):
            item = ListItem(Label(conversation.title, markup=False), name=str(conversation.id))
            await view.append(item)
            if self.conversation and conversation.id == self.conversation.id:
                current = i
        view.index = current

    async def open(self, conversation: Conversation) -> None:
        self.action_stop()
        self.status.clear("reply")  # what it said was about the other conversation's reply
        self.conversation = conversation
        self.turns = self.store.messages(conversation.id)
        self.query_one("#title", Label).update(conversation.title)
        log = self.query_one("#log", VerticalScroll)
        await log.remove_children()
        widgets = [
            Static(m.content, classes="prompt", markup=False)
            if m.role == "user"
            else Reply(m.content, m.figures)
            for m in self.turns
        ]
        await log.mount_all(widgets)
        log.scroll_end(animate=False)
        self.show_model_choice()
        await self.refresh_list()

    @on(ListView.Selected, "#conversations")
    async def selected(self, event: ListView.Selected) -> None:
        name = event.item.name
        if name and (not self.conversation or int(name) != self.conversation.id):
            conversation = self.store.get(int(name))
            if conversation:
                await self.open(conversation)

    @on(Select.Changed, "#model")
    def model_chosen(self, event: Select.Changed) -> None:
        if self.conversation is None:
            return
        value = event.value
        self.conversation.model = value if isinstance(value, str) else None
        self.store.update(self.conversation)

    @on(ChatInput.Submitted)
    async def send(self, event: ChatInput.Submitted) -> None:
        if self.streaming:
            self.status.show("A reply is still streaming: Esc stops it.", about="reply")
            return
        assert self.conversation is not None
        chat_input = self.query_one(ChatInput)
        chat_input.remember(event.text)
        chat_input.text = ""
        prompt = Message("user", event.text)
        self.turns.append(prompt)
        self.store.add_message(self.conversation.id, prompt)
        if self.conversation.title == "New chat":
            self.conversation.title = event.text.strip().splitlines()[0][:40]
            self.store.update(self.conversation)
            self.query_one("#title", Label).update(self.conversation.title)
            await self.refresh_list()
        log = self.query_one("#log", VerticalScroll)
        await log.mount(Static(event.text, classes="prompt", markup=False))
        await self.start_reply()

    async def start_reply(self) -> None:
        """A new reply to what the conversation holds, streamed into a new Reply."""
        # A new request: whatever the line said about the last one (stopped, refused,
        # counting down a rate limit the gateway will judge again) no longer holds.
        self.end_countdown()
        self.status.clear()
        reply = Reply()
        log = self.query_one("#log", VerticalScroll)
        await log.mount(reply)
        log.scroll_end(animate=False)
        self.generation = self.run_worker(
            self.generate(reply), group="chat", exclusive=True, exit_on_error=False
        )

    def request_body(self) -> dict[str, Any]:
        assert self.conversation is not None
        c = self.conversation
        messages = [{"role": "system", "content": c.system_prompt}] if c.system_prompt else []
        messages += [{"role": m.role, "content": m.content} for m in self.turns]
        body: dict[str, Any] = {"messages": messages}
        if c.model:
            body["model"] = c.model
        if c.temperature is not None:
            body["temperature"] = c.temperature
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        return body

    async def generate(self, reply: Reply) -> None:
        """Stream one reply into its Markdown widget, showing what the gateway reports on
        the way. Cancelling this worker (Esc) closes the stream, which makes the gateway
        abort the generation upstream."""
        assert self.conversation is not None
        conversation_id = self.conversation.id
        text: list[str] = []
        figures = Figures()
        log = self.query_one("#log", VerticalScroll)
        stream = Markdown.get_stream(reply.markdown)
        stopped = False
        status = self.status
        try:
            async for event in self.gateway.chat(self.request_body, figures):
                if isinstance(event, Attempt):
                    reply.show_error("")
                    status.show("Waiting for the first token…", about="reply")
                elif isinstance(event, Retrying):
                    reply.show_error(
                        f"503 — the model is switching ({event.error.message}); "
                        f"retrying in {event.seconds} s"
                    )
                    status.show(f"Model switching: retry in {event.seconds} s…", about="reply")
                elif isinstance(event, Queued):
                    status.show(
                        f"Queued: the backend is full ({event.seconds:.0f} s)…", about="reply"
                    )
                elif isinstance(event, Comment):
                    status.show(f"Gateway: {event.text}", about="reply")
                else:  # a Delta: the reply's text
                    if not text:
                        status.show("Streaming…", about="reply")
                    text.append(event.text)
                    await stream.write(event.text)
                    log.scroll_end(animate=False)
        except GatewayError as error:
            if error.status == 429:
                self.start_countdown(reply, error)
            else:
                reply.show_error(describe(error))
        except asyncio.CancelledError:
            stopped = True
            raise
        except Exception as exc:  # a bug of ours: say so in the reply, never a traceback
            reply.show_error(f"Unexpected error in the client: {exc!r}")
        finally:
            # Keep what arrived first (also when stopped, or when the user has moved to
            # another conversation and this reply's widgets are gone), then show it.
            content = "".join(text)
            line = " · ".join(part for part in (figures.line(), "stopped" * stopped) if part)
            if content:
                self.store.add_message(conversation_id, Message("assistant", content, line))
                if self.conversation and self.conversation.id == conversation_id:
                    self.turns.append(Message("assistant", content))
            await stream.stop()
            if reply.is_attached:
                reply.show_figures(line)
                if stopped:
                    reply.show_error("Stopped.")
            if stopped and reply.is_attached:
                status.show("Stopped.", about="reply")
            else:  # done, or stopped because another conversation was opened
                status.clear("reply")

    def start_countdown(self, reply: Reply, error: GatewayError) -> None:
        """429: show when sending works again, counting down from Retry-After."""
        deadline = time.monotonic() + max(1, error.retry_after)

        def tick() -> None:
            # The limit is the key's: the status line counts down in any conversation; the
            # reply that was refused only while it is on screen.
            left = round(deadline - time.monotonic())
            if left > 0:
                text = f"429 — rate limited: {error.message} Send again in {left} s."
                if reply.is_attached:
                    reply.show_error(text)
                self.status.show(text, about="limit")
            else:
                self.end_countdown_text = (
                    f"429 — rate limited: {error.message} You can send again now."
                )
                self.end_countdown()

        self.end_countdown()
        self.counted = reply
        self.end_countdown_text = f"429 — rate limited: {error.message}"
        self.countdown = self.set_interval(1, tick)
        tick()

    def end_countdown(self) -> None:
        """Stop counting (the time is up, or a new request lets the gateway judge again):
        the refused reply keeps the refusal without a count that would stand still."""
        if self.countdown is None:
            return
        self.countdown.stop()
        self.countdown = None
        if self.counted is not None and self.counted.is_attached:
            self.counted.show_error(self.end_countdown_text)
        self.counted = None
        self.status.clear("limit")

    def action_stop(self) -> None:
        if self.generation is not None and self.generation.is_running:
            self.generation.cancel()

    async def action_retry(self) -> None:
        """Send the last prompt again, in place of what answered it (an error, a stopped
        or an unwanted reply): that reply leaves the screen, the history and the store."""
        assert self.conversation is not None
        if self.streaming:
            self.status.show("A reply is still streaming: Esc stops it, then F5.", about="reply")
            return
        prompts = [i for i, turn in enumerate(self.turns) if turn.role == "user"]
        if not prompts:
            self.notify("Nothing to send again yet.", severity="warning")
            return
        self.turns = self.turns[: prompts[-1] + 1]
        self.store.drop_last_reply(self.conversation.id)
        log = self.query_one("#log", VerticalScroll)
        shown = list(log.children)
        last_prompt = max(i for i, widget in enumerate(shown) if widget.has_class("prompt"))
        await log.remove_children(shown[last_prompt + 1 :])
        await self.start_reply()

    def action_copy_reply(self) -> None:
        """The last finished reply to the clipboard (OSC 52: the terminal's, also over
        SSH; tmux keeps it as a buffer with `set-clipboard on`)."""
        if self.streaming:
            self.notify("A reply is still streaming: copy it once it is done.")
            return
        reply = next((turn for turn in reversed(self.turns) if turn.role == "assistant"), None)
        if reply is None:
            self.notify("No reply to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(reply.content)
        self.notify(f"Copied the last reply ({len(reply.content)} characters).")

    async def action_new(self) -> None:
        await self.open(self.store.unused() or self.store.create())

    def action_options(self) -> None:
        assert self.conversation is not None

        async def done(conversation: Conversation | None) -> None:
            if conversation is not None:
                self.store.update(conversation)
                self.query_one("#title", Label).update(conversation.title)
                await self.refresh_list()

        self.app.push_screen(OptionsScreen(self.conversation), done)

    def action_export(self) -> None:
        assert self.conversation is not None
        path = self.store.export_markdown(self.conversation.id, self.exports)
        self.notify(f"Exported to {path}", markup=False)

    def action_delete(self) -> None:
        assert self.conversation is not None
        doomed = self.conversation

        async def done(yes: bool | None) -> None:
            if yes:
                self.store.delete(doomed.id)
                remaining = self.store.conversations()
                await self.open(remaining[0] if remaining else self.store.create())

        self.app.push_screen(ConfirmScreen(f"Delete “{doomed.title}”?"), done)

    def action_settings(self) -> None:
        self.app.push_screen(SettingsScreen(self.gateway))
