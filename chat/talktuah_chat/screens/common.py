"""What more than one screen uses: an error in one plain line, and a yes/no dialog."""

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from talktuah_chat.gateway import GatewayError


def describe(error: GatewayError) -> str:
    """One plain line for an error, by what the user can do about it."""
    if error.status == 0:  # "cannot reach <url> (<what failed>)"
        return error.message[:1].upper() + error.message[1:]
    if error.status == 401:
        return f"401 — the gateway refused this key: {error.message}"
    if error.status == 403:
        return f"403 — not allowed: {error.message}"
    if error.status == 502:
        return f"502 — the model server is unreachable: {error.message}"
    if error.status == 504:
        return f"504 — the model server stopped answering: {error.message}"
    return f"{error.status} — {error.message}"


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "no", "No")]

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

    def action_no(self) -> None:
        self.dismiss(False)
