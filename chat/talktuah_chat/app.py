"""The Textual application: a first-run screen (gateway URL and key, checked against
/v1/models), the chat screen (conversations on the left, the reply streamed as Markdown
into its own widget, figures under it, errors inline) and, for admin keys, the settings
screen (settings.py)."""

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TextualMessage
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

from talktuah_chat import config as configuration
from talktuah_chat.gateway import Comment, Delta, Figures, Gateway, GatewayError
from talktuah_chat.store import Conversation, Message, Store

# How long to wait before retrying while the gateway answers 503 (a model switch): its
# Retry-After, else the default, and never more than the maximum, so a finished switch is
# noticed soon.
SWITCH_RETRY_SECONDS = 3
MAX_SWITCH_RETRY_SECONDS = 10


def describe(error: GatewayError) -> str:
    """One plain line for an error, by what the user can do about it."""
    if error.status == 0:
        return f"Cannot reach the gateway: {error.message}"
    if error.status == 401:
        return f"401 — the gateway refused this key: {error.message}"
    if error.status == 403:
        return f"403 — not allowed: {error.message}"
    if error.status == 502:
        return f"502 — the model server is unreachable: {error.message}"
    if error.status == 504:
        return f"504 — the model server stopped answering: {error.message}"
    return f"{error.status} — {error.message}"


class ChatInput(TextArea):
    """Multi-line input: Enter sends, Shift+Enter or Ctrl+J starts a new line, Up on the
    first line and Down on the last walk through what was sent before."""

    class Submitted(TextualMessage):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)
        self.sent: list[str] = []
        self.sent_index: int | None = None

    def remember(self, text: str) -> None:
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self.sent_index = None

    def _recall(self, index: int | None) -> None:
        self.sent_index = index
        self.text = "" if index is None else self.sent[index]
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self.text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        row = self.cursor_location[0]
        if event.key == "up" and row == 0 and self.sent:
            event.stop()
            event.prevent_default()
            index = len(self.sent) if self.sent_index is None else self.sent_index
            self._recall(max(0, index - 1))
            return
        if (
            event.key == "down"
            and self.sent_index is not None
            and row == self.document.line_count - 1
        ):
            event.stop()
            event.prevent_default()
            following = self.sent_index + 1
            self._recall(following if following < len(self.sent) else None)
            return
        await super()._on_key(event)


class Reply(Vertical):
    """One assistant reply: its Markdown (streamed into, nothing else re-rendered), an
    inline error line and the figures line."""

    def __init__(self, text: str = "", figures: str = "") -> None:
        super().__init__(classes="reply")
        self.text = text
        self.figures_text = figures

    def compose(self) -> ComposeResult:
        yield Markdown(self.text, classes="reply-text")
        yield Static("", classes="reply-error", markup=False)
        yield Static(self.figures_text, classes="reply-figures", markup=False)

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    def show_error(self, text: str) -> None:
        error = self.query_one(".reply-error", Static)
        error.update(text)
        error.display = bool(text)

    def show_figures(self, text: str) -> None:
        self.query_one(".reply-figures", Static).update(text)


class SetupScreen(Screen[configuration.Config]):
    """First run: the gateway's URL and a key, checked against /v1/models."""

    def __init__(self, current: configuration.Config) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="setup"):
            yield Label("Connect to a TalkTuah gateway")
            yield Input(self.current.url or "http://127.0.0.1:8000", id="setup-url")
            yield Input(self.current.key, placeholder="tt-… key", password=True, id="setup-key")
            yield Button("Check and save", id="setup-check", variant="primary")
            yield Static("", id="setup-result", markup=False)

    @on(Button.Pressed, "#setup-check")
    @on(Input.Submitted)
    async def check(self) -> None:
        url = self.query_one("#setup-url", Input).value.strip().rstrip("/")
        key = self.query_one("#setup-key", Input).value.strip()
        result = self.query_one("#setup-result", Static)
        if not url or not key:
            result.update("Both the URL and the key are needed.")
            return
        result.update("Checking…")
        gateway = Gateway(url, key)
        try:
            models = await gateway.models()
        except GatewayError as error:
            result.update(describe(error))
            return
        finally:
            await gateway.aclose()
        result.update(f"OK: serving {', '.join(models) or 'no model yet'}")
        self.dismiss(configuration.Config(url=url, key=key))


class ConfirmScreen(ModalScreen[bool]):
    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, markup=False)
            with Horizontal():
                yield Button("Yes", id="yes", variant="warning")
                yield Button("No", id="no")

    @on(Button.Pressed)
    def answer(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


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
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new", "New chat"),
        Binding("f2", "options", "Chat options"),
        Binding("f3", "export", "Export"),
        Binding("f8", "delete", "Delete chat"),
        Binding("f9", "settings", "Settings"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.conversation: Conversation | None = None
        self.turns: list[Message] = []
        self.generation: Worker[None] | None = None
        self.countdown: Timer | None = None
        self.models: list[str] = []

    @property
    def chat_app(self) -> "ChatApp":
        app = self.app
        assert isinstance(app, ChatApp)
        return app

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
        store = self.chat_app.store
        conversations = store.conversations()
        await self.open(conversations[0] if conversations else store.create())
        self.query_one("#input").focus()
        self.run_worker(self.load_models(), group="models")

    async def load_models(self) -> None:
        try:
            models = await self.chat_app.gateway.models()
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
        for i, conversation in enumerate(self.chat_app.store.conversations()):
            item = ListItem(Label(conversation.title, markup=False), name=str(conversation.id))
            await view.append(item)
            if self.conversation and conversation.id == self.conversation.id:
                current = i
        view.index = current

    async def open(self, conversation: Conversation) -> None:
        self.action_stop()
        self.conversation = conversation
        self.turns = self.chat_app.store.messages(conversation.id)
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
            conversation = self.chat_app.store.get(int(name))
            if conversation:
                await self.open(conversation)

    @on(Select.Changed, "#model")
    def model_chosen(self, event: Select.Changed) -> None:
        if self.conversation is None:
            return
        value = event.value
        self.conversation.model = value if isinstance(value, str) else None
        self.chat_app.store.update(self.conversation)

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
        self.chat_app.store.add_message(self.conversation.id, prompt)
        if self.conversation.title == "New chat":
            self.conversation.title = event.text.strip().splitlines()[0][:40]
            self.chat_app.store.update(self.conversation)
            self.query_one("#title", Label).update(self.conversation.title)
            await self.refresh_list()
        reply = Reply()
        log = self.query_one("#log", VerticalScroll)
        await log.mount_all([Static(event.text, classes="prompt", markup=False), reply])
        reply.show_error("")
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
        """Stream one reply into its Markdown widget. Cancelling this worker (Esc) closes
        the stream, which makes the gateway abort the generation upstream."""
        assert self.conversation is not None
        conversation_id = self.conversation.id
        text: list[str] = []
        figures = Figures()
        log = self.query_one("#log", VerticalScroll)
        stream = Markdown.get_stream(reply.markdown)
        stopped = False
        try:
            while True:
                try:
                    self.set_status("Waiting for the first token…  (Esc stops)")
                    async for event in self.chat_app.gateway.chat(self.request_body(), figures):
                        if isinstance(event, Comment):
                            self.set_status(f"Gateway: {event.text}")
                            continue
                        assert isinstance(event, Delta)
                        if not text:
                            self.set_status("Streaming…  (Esc stops)")
                        text.append(event.text)
                        await stream.write(event.text)
                        log.scroll_end(animate=False)
                    break
                except GatewayError as error:
                    if error.status == 503 and not text:
                        # A model switch: the gateway asks to come back later; do so.
                        wait = min(
                            error.retry_after or SWITCH_RETRY_SECONDS, MAX_SWITCH_RETRY_SECONDS
                        )
                        for left in range(wait, 0, -1):
                            reply.show_error(
                                f"503 — the model is switching ({error.message}); "
                                f"retrying in {left} s"
                            )
                            await asyncio.sleep(1)
                        reply.show_error("")
                        continue
                    if error.status == 429:
                        self.start_countdown(reply, error)
                    else:
                        reply.show_error(describe(error))
                    break
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
                self.chat_app.store.add_message(
                    conversation_id, Message("assistant", content, line)
                )
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
        store = self.chat_app.store
        await self.open(store.unused() or store.create())

    def action_options(self) -> None:
        assert self.conversation is not None

        async def done(conversation: Conversation | None) -> None:
            if conversation is not None:
                self.chat_app.store.update(conversation)
                self.query_one("#title", Label).update(conversation.title)
                await self.refresh_list()

        self.app.push_screen(OptionsScreen(self.conversation), done)

    def action_export(self) -> None:
        assert self.conversation is not None
        path = self.chat_app.store.export_markdown(
            self.conversation.id, self.chat_app.data_path / "exports"
        )
        self.notify(f"Exported to {path}", markup=False)

    def action_delete(self) -> None:
        assert self.conversation is not None
        doomed = self.conversation

        async def done(yes: bool | None) -> None:
            if yes:
                self.chat_app.store.delete(doomed.id)
                remaining = self.chat_app.store.conversations()
                await self.open(remaining[0] if remaining else self.chat_app.store.create())

        self.app.push_screen(ConfirmScreen(f"Delete “{doomed.title}”?"), done)

    def action_settings(self) -> None:
        from talktuah_chat.settings import SettingsScreen

        self.app.push_screen(SettingsScreen())


class ChatApp(App[None]):
    TITLE = "TalkTuah"
    CSS = """
    #conversations { width: 28; border-right: solid $panel; }
    #topbar { height: auto; }
    #model { width: 40; }
    #title { padding: 1 2; }
    #log { height: 1fr; }
    .prompt { margin: 1 1 0 8; padding: 0 1; background: $boost; }
    .reply { height: auto; margin: 0 1; }
    .reply-error { color: $error; display: none; }
    .reply-figures { color: $text-muted; }
    #status { height: 1; color: $warning; }
    #input { height: 5; }
    #setup { width: 70; height: auto; margin: 2 4; }
    .dialog { width: 70; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    ModalScreen { align: center middle; }
    #opt-system { height: 6; }
    """

    def __init__(
        self,
        config: configuration.Config,
        *,
        data_path: Path | None = None,
        config_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.config_path = config_path
        self.data_path = data_path or configuration.data_dir()
        self.store = Store(self.data_path / "conversations.sqlite3")
        self.gateway = Gateway(config.url, config.key)

    def on_mount(self) -> None:
        self.sub_title = self.config.url
        if self.config.complete:
            self.push_screen(ChatScreen())
        else:
            self.push_screen(SetupScreen(self.config), self.configured)

    async def configured(self, config: configuration.Config | None) -> None:
        if config is None:
            self.exit()
            return
        self.config = config
        configuration.save(config, path=self.config_path)
        await self.gateway.aclose()
        self.gateway = Gateway(config.url, config.key)
        self.sub_title = config.url
        await self.push_screen(ChatScreen())

    async def on_unmount(self) -> None:
        await self.gateway.aclose()
        self.store.close()
