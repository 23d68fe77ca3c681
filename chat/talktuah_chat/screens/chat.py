"""The chat screen: conversations on the left, the reply streamed as Markdown into its
own widget, figures under it, errors inline; and the dialog of a conversation's options.
What the gateway reports (a retry while it switches models, say) is shown as it comes:
the deciding is the Gateway's."""

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
    Footer,
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
    Retrying,
)
from talktuah_chat.screens.common import ConfirmScreen, describe
from talktuah_chat.screens.settings import SettingsScreen
from talktuah_chat.screens.widgets import ChatInput, Reply
from talktuah_chat.store import Conversation, Message, Store


class OptionsScreen(ModalScreen[Conversation | None]):
    """A conversation's title, system prompt, temperature and max tokens."""

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
    def cancel(self) -> None:
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

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new", "New chat"),
        Binding("f2", "options", "Chat options"),
        Binding("f3", "export", "Export"),
        Binding("f8", "delete", "Delete chat"),
        Binding("f9", "settings", "Settings"),
    ]

    def __init__(self, gateway: Gateway, store: Store, *, exports: Path) -> None:
        super().__init__()
        self.gateway = gateway
        self.store = store
        self.exports = exports
        self.conversation: Conversation | None = None
        self.turns: list[Message] = []
        self.generation: Worker[None] | None = None
        self.countdown: Timer | None = None
        self.models: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            yield ListView(id="conversations")
            with Vertical(id="main"):
                with Horizontal(id="topbar"):
                    yield Select[str]([], prompt="model: the one served now", id="model")
                    yield Label("", id="title", markup=False)
                yield VerticalScroll(id="log")
                yield Static("", id="status", markup=False)
                yield ChatInput(id="input")
        yield Footer()

    async def on_mount(self) -> None:
        conversations = self.store.conversations()
        await self.open(conversations[0] if conversations else self.store.create())
        self.query_one("#input").focus()
        self.run_worker(self.load_models(), group="models")

    async def load_models(self) -> None:
        try:
            models = await self.gateway.models()
        except GatewayError as error:
            self.set_status(describe(error))
            return
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

    def set_status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

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
        if self.generation is not None and self.generation.is_running:
            self.set_status("A reply is still streaming: Esc stops it.")
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
        reply = Reply()
        log = self.query_one("#log", VerticalScroll)
        await log.mount_all([Static(event.text, classes="prompt", markup=False), reply])
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
        try:
            async for event in self.gateway.chat(self.request_body, figures):
                if isinstance(event, Attempt):
                    reply.show_error("")
                    self.set_status("Waiting for the first token…  (Esc stops)")
                elif isinstance(event, Retrying):
                    reply.show_error(
                        f"503 — the model is switching ({event.error.message}); "
                        f"retrying in {event.seconds} s"
                    )
                elif isinstance(event, Comment):
                    self.set_status(f"Gateway: {event.text}")
                else:  # a Delta: the reply's text
                    if not text:
                        self.set_status("Streaming…  (Esc stops)")
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
            if stopped:
                self.set_status("Stopped.")
            elif self.countdown is None:
                self.set_status("")

    def start_countdown(self, reply: Reply, error: GatewayError) -> None:
        """429: show when sending works again, counting down from Retry-After."""
        deadline = time.monotonic() + max(1, error.retry_after)

        def tick() -> None:
            # The limit is the key's: the status line counts down in any conversation; the
            # reply that was refused only while it is on screen.
            left = round(deadline - time.monotonic())
            if left > 0:
                text = f"429 — rate limited: {error.message} Send again in {left} s."
            else:
                text = f"429 — rate limited: {error.message} You can send again now."
            if reply.is_attached:
                reply.show_error(text)
            self.set_status(text if left > 0 else "")
            if left <= 0 and self.countdown is not None:
                self.countdown.stop()
                self.countdown = None

        if self.countdown is not None:
            self.countdown.stop()
        self.countdown = self.set_interval(1, tick)
        tick()

    def action_stop(self) -> None:
        if self.generation is not None and self.generation.is_running:
            self.generation.cancel()

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
