"""The chat screen's widgets: the input box, and one assistant reply."""

from typing import Any

from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea


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
