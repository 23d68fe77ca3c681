"""The `fake_hub` fixture: a local fake Hugging Face Hub (modelmgr.fakehub) with Django
settings and the environment pointed at it, and a cache dir of the test's own."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmgr.fakehub import FakeHub


@pytest.fixture
def fake_hub(settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub; settings.HF_ENDPOINT points at it and the HF cache is per test."""
    cache_dir = tmp_path / "hf" / "hub"
    with FakeHub() as hub:
        settings.HF_ENDPOINT = hub.url
        settings.HF_CACHE_DIR = cache_dir
        settings.HF_TOKEN = None
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield hub
