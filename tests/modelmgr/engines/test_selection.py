"""The external engine's refusals, and engine_for() picking a backend's engine by its
kind (TALKTUAH_ENGINE for VLLM_BASE_URL's `default`)."""

import runpy
from pathlib import Path
from typing import Any

import pytest

from backends.spec import EngineConfig, default_spec
from modelmgr.engines import (
    DockerEngine,
    ExternalEngine,
    KubernetesEngine,
    ProcessEngine,
    engine_for,
    engine_of,
)
from plumbing.errors import EngineError, EngineReadOnly
from tests.private_dockerd import (
    docker_daemon_fixture,  # noqa: F401 (the `docker_daemon` fixture)
)


def test_the_external_engine_refuses_changes() -> None:
    engine = ExternalEngine(EngineConfig.from_settings(kind="external"))
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
def test_engine_for_picks_by_setting(settings: Any, name: str, engine_class: type) -> None:
    settings.TALKTUAH_ENGINE = name
    engine = engine_for(default_spec())
    assert isinstance(engine, engine_class)
    assert engine.name == name


def test_engine_for_defaults_to_process(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default lives in settings.py: read it as a fresh process would.
    monkeypatch.delenv("TALKTUAH_ENGINE", raising=False)
    defaults = runpy.run_path(str(Path(settings.BASE_DIR) / "talktuah_site" / "settings.py"))
    settings.TALKTUAH_ENGINE = defaults["TALKTUAH_ENGINE"]
    assert isinstance(engine_for(default_spec()), ProcessEngine)


def test_engine_of_rejects_an_unknown_name(settings: Any) -> None:
    settings.TALKTUAH_ENGINE = "podman"
    with pytest.raises(EngineError, match="unknown engine 'podman': use one of docker, external"):
        engine_of(EngineConfig.from_settings())
