"""Where the client finds the gateway and the key: `--url`/`--key` flags first, then the
TALKTUAH_URL / TALKTUAH_KEY environment variables, then the config file in the user's
config directory (written by the first-run screen). Conversations live in the user's
data directory."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_config_path, user_data_path

APP_NAME = "talktuah-chat"


def config_file() -> Path:
    return user_config_path(APP_NAME) / "config.json"


def data_dir() -> Path:
    return user_data_path(APP_NAME)


@dataclass
class Config:
    url: str = ""
    key: str = ""

    @property
    def complete(self) -> bool:
        return bool(self.url and self.key)


def load(*, url: str | None = None, key: str | None = None, path: Path | None = None) -> Config:
    """The configuration from flags, environment and file, in that order of precedence."""
    stored: dict[str, str] = {}
    path = path or config_file()
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}  # an unreadable file is as good as none: the first-run screen asks
        if isinstance(loaded, dict):
            stored = {k: str(v) for k, v in loaded.items() if isinstance(v, str)}
    return Config(
        url=(url or os.environ.get("TALKTUAH_URL") or stored.get("url", "")).rstrip("/"),
        key=key or os.environ.get("TALKTUAH_KEY") or stored.get("key", ""),
    )


def save(config: Config, *, path: Path | None = None) -> Path:
    """Write the file readable by its owner only: it holds a secret."""
    path = path or config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": config.url, "key": config.key}, handle)
    return path
