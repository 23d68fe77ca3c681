"""Screens compared with a stored SVG screenshot (what pytest-textual-snapshot does; that
plugin pins syrupy 4.8, which requires pytest < 9, so the comparison is done here). Only
screens whose content does not depend on ports or timings. After a deliberate change:
TALKTUAH_UPDATE_SNAPSHOTS=1 pytest tests/chat/test_snapshots.py, and look at the SVGs."""

import asyncio
import os
from pathlib import Path

from talktuah_chat.app import ChatApp, SetupScreen
from talktuah_chat.config import Config
from tests.chat.conftest import until

SNAPSHOTS = Path(__file__).parent / "snapshots"


def matches_snapshot(name: str, svg: str) -> bool:
    stored = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("TALKTUAH_UPDATE_SNAPSHOTS") == "1" or not stored.exists():
        stored.write_text(svg)
        return True
    if stored.read_text() == svg:
        return True
    (SNAPSHOTS / f"{name}.actual.svg").write_text(svg)  # for a look side by side
    return False


def test_the_first_run_screen_looks_as_stored(tmp_path):
    app = ChatApp(Config(), data_path=tmp_path / "data", config_path=tmp_path / "config.json")

    async def main() -> str:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: isinstance(pilot.app.screen, SetupScreen))
            await pilot.pause()
            return app.export_screenshot(title="first run")

    assert matches_snapshot("first-run", asyncio.run(main())), (
        "the first-run screen changed: compare tests/chat/snapshots/first-run.svg with "
        "first-run.actual.svg"
    )
