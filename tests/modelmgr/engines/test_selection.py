"""The external engine's refusals, and get_engine() picking an engine by setting."""

import runpy
from pathlib import Path
from typing import Any

import pytest

from modelmgr.engines import (
    DockerEngine,
    ExternalEngine,
    KubernetesEngine,
    ProcessEngine,
    get_engine,
)
from plumbing.errors import EngineError, EngineReadOnly
from tests.private_dockerd import (
    docker_daemon_fixture,  # noqa: F401 (the `docker_daemon` fixture)
)


def test_the_external_engine_refuses_changes() -> None:
    engine = ExternalEngine()
    assert engine.read_only is True
    with pytest.raises(EngineReadOnly, match="TALKTUAH_ENGINE=external"):
        engine.serve(model="m", served_name="m")
    with pytest.raises(EngineReadOnly):
        engine.stop()
    assert "external" in engine.state().detail


@pytest.mark.parametrize(
    ("name", "engine_class"),
    [
        ("process", ProcessEngine),
        ("docker", DockerEngine),
        ("kubernetes", KubernetesEngine),
        ("external", ExternalEngine),
    ],
)
def test_get_engine_picks_by_setting(settings: Any, name: str, engine_class: type) -> None:
    settings.TALKTUAH_ENGINE = name
    engine = get_engine()
    assert isinstance(engine, engine_class)
    assert engine.name == name


def test_get_engine_defaults_to_process(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default lives in settings.py: read it as a fresh process would.
    monkeypatch.delenv("TALKTUAH_ENGINE", raising=False)
    defaults = runpy.run_path(str(Path(settings.BASE_DIR) / "talktuah_site" / "settings.py"))
    settings.TALKTUAH_ENGINE = defaults["TALKTUAH_ENGINE"]
    assert isinstance(get_engine(), ProcessEngine)


def test_get_engine_rejects_an_unknown_name(settings: Any) -> None:
    settings.TALKTUAH_ENGINE = "podman"
    with pytest.raises(EngineError, match="unknown TALKTUAH_ENGINE 'podman'"):
        get_engine()
