"""First run: the gateway's URL and a key, checked against /v1/models; the screen's
result is the Config to save (the App saves it)."""

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Static

from talktuah_chat import config as configuration
from talktuah_chat.gateway import Gateway, GatewayError
from talktuah_chat.screens.common import describe


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
