"""The Textual application: the wiring. It holds the configuration, the Gateway and the
Store, and the look (CSS), and opens the first-run screen or the chat screen (both in
screens/), handing them what they work with; the screens never reach back into it."""

from pathlib import Path

from textual.app import App

from talktuah_chat import config as configuration
from talktuah_chat.gateway import Gateway
from talktuah_chat.screens.chat import ChatScreen
from talktuah_chat.screens.setup import SetupScreen
from talktuah_chat.store import Store


class ChatApp(App[None]):
    TITLE = "TalkTuah"
    CSS = """
    #conversations { width: 28; border-right: solid $panel; }
    ChatScreen.-narrow #conversations { width: 16; }
    ChatScreen.-narrow #model { width: 26; }
    #topbar { height: auto; }
    #model { width: 40; }
    #title { padding: 1 2; }
    #log { height: 1fr; }
    .prompt { margin: 1 1 0 8; padding: 0 1; background: $boost; }
    .reply { height: auto; margin: 0 1; }
    .reply-error { color: $error; display: none; }
    .reply-figures { color: $text-muted; }
    #status { height: auto; min-height: 1; max-height: 2; color: $warning; }
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

    def chat_screen(self) -> ChatScreen:
        return ChatScreen(self.gateway, self.store, exports=self.data_path / "exports")

    def on_mount(self) -> None:
        self.sub_title = self.config.url
        if self.config.complete:
            self.push_screen(self.chat_screen())
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
        await self.push_screen(self.chat_screen())

    async def on_unmount(self) -> None:
        await self.gateway.aclose()
        self.store.close()
