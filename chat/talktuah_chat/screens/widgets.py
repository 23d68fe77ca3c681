"""The screens' widgets: the chat's input box, one assistant reply and the status line,
and the key bar (a footer that keeps every key readable in a narrow terminal)."""

from math import ceil
from typing import Any, Literal

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Footer, Markdown, Static, TextArea
from textual.widgets._footer import FooterKey  # not exported by textual.widgets (8.2)


class ChatInput(TextArea):
    """Multi-line input: Enter sends, Shift+Enter or Ctrl+J starts a new line, Up on the
    first line and Down on the last walk through what was sent before."""

    class Submitted(Message):
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


# What a status line is about; each is cleared by what ends it (see ChatScreen).
About = Literal["reply", "limit", "gateway"]


class StatusLine(Static):
    """The one line above the input: what is going on now. Each text is about something
    (the reply on its way, a rate limit's countdown, the gateway being unreachable), so
    that what ends it clears it, and only it: no line outlives what it described."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", markup=False, **kwargs)
        self.about: About | None = None
        self.text = ""

    def show(self, text: str, *, about: About) -> None:
        self.about, self.text = (about if text else None), text
        self.update(text)

    def offer(self, text: str, *, about: About) -> None:
        """Show `text` unless the line says something else meanwhile (a reply's progress
        matters more than a background check)."""
        if self.about in (None, about):
            self.show(text, about=about)

    def clear(self, *about: About) -> None:
        """Clear the line if it is about one of `about` (any, given none)."""
        if not about or self.about in about:
            self.show("", about="reply")


class KeyBar(Footer):
    """Textual's footer in one row where its keys fit, else in two rows of columns: at 60
    columns every key stays in sight and readable (the footer alone would scroll the last
    ones off the edge). It is compact: one space between a key and the next."""

    DEFAULT_CSS = """
    KeyBar.-two-rows { layout: grid; height: 2; }
    KeyBar.-two-rows FooterKey.-command-palette { dock: none; border-left: none; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(compact=True, **kwargs)

    def compose(self) -> ComposeResult:
        yield from super().compose()
        self.call_after_refresh(self.arrange_keys)

    def on_resize(self) -> None:
        self.arrange_keys()

    def arrange_keys(self) -> None:
        keys = list(self.query(FooterKey))
        # A compact key takes its key, a space, its description and a space after it.
        wanted = sum(len(key.key_display) + len(key.description) + 2 for key in keys)
        two_rows = bool(keys) and wanted > self.size.width > 0
        self.set_class(two_rows, "-two-rows")
        if two_rows:
            self.styles.grid_size_columns = ceil(len(keys) / 2)
