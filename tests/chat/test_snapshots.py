"""Screens compared with stored SVG screenshots (pytest-textual-snapshot's snap_compare,
stored by syrupy in tests/chat/__snapshots__/test_snapshots/). A missing snapshot fails;
after a deliberate change: `pytest tests/chat/test_snapshots.py --snapshot-update` (or
TALKTUAH_UPDATE_SNAPSHOTS=1), then look at the SVGs; a failed run writes
snapshot_report.html with both side by side."""

import pytest

from talktuah_chat.app import ChatApp, SetupScreen
from talktuah_chat.config import Config
from tests.chat.conftest import until


@pytest.fixture(autouse=True)
def _same_picture_everywhere(monkeypatch):
    # What a developer's environment could change in the picture: NO_COLOR (read when
    # an App is made) drops every colour. The theme is set on each app (TEXTUAL_THEME
    # would change the default one).
    monkeypatch.delenv("NO_COLOR", raising=False)


def pinned(app: ChatApp) -> ChatApp:
    app.theme = "textual-dark"
    return app


def test_the_first_run_screen(tmp_path, snap_compare):
    app = pinned(
        ChatApp(Config(), data_path=tmp_path / "data", config_path=tmp_path / "config.json")
    )

    async def first_run(pilot):
        await until(pilot, lambda: isinstance(pilot.app.screen, SetupScreen))

    assert snap_compare(app, terminal_size=(100, 30), run_before=first_run)
