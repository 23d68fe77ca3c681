"""The process engine (modelmgr.engines.process), for real with the simulator."""

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from backends.spec import EngineConfig
from modelmgr.engines import ProcessEngine
from modelmgr.engines import process as process_module
from plumbing.errors import EngineError
from tests.net import free_port, port_is_free
from tests.private_dockerd import (
    docker_daemon_fixture,  # noqa: F401 (the `docker_daemon` fixture)
)

# A child that ignores SIGTERM, says so in the log, and would sleep for a minute.
STUBBORN_COMMAND = (
    '{python} -c "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
    "print('ignoring SIGTERM', flush=True); time.sleep(60)\""
)


def process_engine() -> ProcessEngine:
    """The process engine of the settings as they are now (its config is read once)."""
    return ProcessEngine(EngineConfig.from_settings())


def served_models(port: int) -> list[str] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0)
    except httpx.TransportError:
        return None
    return [model["id"] for model in response.json()["data"]]


def wait_until_served(port: int, model: str, timeout: float = 20.0) -> None:
    """Poll /v1/models as the switch does; fail early (with vLLM's log) if it died."""
    engine = process_engine()
    deadline = time.monotonic() + timeout
    while served_models(port) != [model]:
        state = engine.state()
        assert state.running, f"vLLM died before serving {model}: {state.detail}"
        assert time.monotonic() < deadline, f"{model} not served on :{port}: {state.detail}"
        time.sleep(0.05)


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        # Still a zombie of this test process? Then it has exited too.
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def recorded_pid(settings: Any) -> int:
    return int(json.loads((Path(settings.VAR_DIR) / "engine.json").read_text())["pid"])


@pytest.fixture
def process_settings(settings: Any, tmp_path: Path) -> Iterator[Any]:
    """VAR_DIR in tmp_path, vLLM on a free port; whatever the test started is stopped."""
    port = free_port()
    settings.VAR_DIR = tmp_path
    settings.ENGINE_STATE_FILE = tmp_path / "engine.json"
    settings.ENGINE_LOG_FILE = tmp_path / "engine.log"
    settings.VLLM_PORT = port
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{port}"
    settings.ENGINE_STOP_GRACE_SECONDS = 5
    settings.TALKTUAH_ENGINE = "process"
    yield settings
    process_engine().stop()


# --- the process engine -----------------------------------------------------------


def test_it_serves_switches_and_stops_the_simulator(process_settings: Any) -> None:
    port = process_settings.VLLM_PORT
    engine = process_engine()
    assert engine.state().running is False

    engine.serve(model="/snapshots/org--model-a", served_name="model-a")
    wait_until_served(port, "model-a")
    first_pid = recorded_pid(process_settings)
    state = engine.state()
    assert (state.running, state.model, state.served_name) == (
        True,
        "/snapshots/org--model-a",
        "model-a",
    )

    engine.serve(model="org/model-b", served_name="model-b")
    # serve() returned only once the old process was gone, port and all.
    assert pid_gone(first_pid)
    wait_until_served(port, "model-b")
    assert engine.state().served_name == "model-b"
    assert recorded_pid(process_settings) != first_pid

    engine.stop()
    assert port_is_free(port)
    assert engine.state().running is False
    assert not (Path(process_settings.VAR_DIR) / "engine.json").exists()
    log = (Path(process_settings.VAR_DIR) / "engine.log").read_text()
    assert "--served-model-name model-a" in log
    assert "--served-model-name model-b" in log


def test_it_stops_the_orphan_of_a_crashed_worker(process_settings: Any) -> None:
    port = process_settings.VLLM_PORT
    process_engine().serve(model="model-a", served_name="model-a")
    wait_until_served(port, "model-a")
    orphan_pid = recorded_pid(process_settings)

    # A restarted worker knows nothing but the state file.
    restarted = process_engine()
    assert restarted.state().running is True
    assert restarted.state().model == "model-a"
    restarted.serve(model="model-b", served_name="model-b")
    assert pid_gone(orphan_pid)
    wait_until_served(port, "model-b")


def test_it_leaves_alone_a_process_that_reused_the_recorded_pid(process_settings: Any) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {
            "pid": stranger.pid,
            "model": "model-a",
            "served_name": "model-a",
            "started_at": "2026-01-01T00:00:00+00:00",
            "port": process_settings.VLLM_PORT,
            "command": ["vllm", "serve", "model-a"],
            "create_time": 1.0,
        }
        (Path(process_settings.VAR_DIR) / "engine.json").write_text(json.dumps(record))
        engine = process_engine()
        assert engine.state().running is False
        engine.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_it_kills_a_child_that_ignores_sigterm(process_settings: Any) -> None:
    process_settings.ENGINE_PROCESS_COMMAND = STUBBORN_COMMAND
    process_settings.ENGINE_STOP_GRACE_SECONDS = 1
    log = Path(process_settings.VAR_DIR) / "engine.log"
    engine = process_engine()
    engine.serve(model="model-a", served_name="model-a")
    pid = recorded_pid(process_settings)
    # (The log's header line holds the command, hence a whole line.)
    wait_for(lambda: log.exists() and "ignoring SIGTERM" in log.read_text().splitlines())

    started = time.monotonic()
    engine.stop()
    elapsed = time.monotonic() - started
    assert pid_gone(pid)
    assert 1.0 <= elapsed < 4.0
    assert engine.state().running is False


def test_it_reports_a_crashed_vllm_with_its_last_words(process_settings: Any) -> None:
    process_settings.ENGINE_PROCESS_COMMAND = (
        "{python} -c \"import sys; print('CUDA out of memory'); sys.exit(3)\""
    )
    engine = process_engine()
    engine.serve(model="model-a", served_name="model-a")
    wait_for(lambda: not engine.state().running)
    state = engine.state()
    assert state.model == "model-a"
    assert "exited with code 3" in state.detail
    assert "CUDA out of memory" in state.detail


def test_it_keeps_a_value_with_spaces_one_argument(process_settings: Any) -> None:
    process_settings.ENGINE_PROCESS_COMMAND = "vllm serve {model} --served-model-name {served_name}"
    command = process_engine().command(model="/models/my model; rm -rf /", served_name="m")
    assert command == ["vllm", "serve", "/models/my model; rm -rf /", "--served-model-name", "m"]


def test_it_rejects_an_unknown_placeholder(process_settings: Any) -> None:
    process_settings.ENGINE_PROCESS_COMMAND = "vllm serve {modle}"
    with pytest.raises(EngineError, match=r"ENGINE_PROCESS_COMMAND.*\{model\}"):
        process_engine().serve(model="m", served_name="m")


def test_it_refuses_a_port_held_by_another_program(
    process_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_module, "PORT_RELEASE_SECONDS", 0.2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", process_settings.VLLM_PORT))
        squatter.listen()
        with pytest.raises(EngineError, match=f"port {process_settings.VLLM_PORT} is in use"):
            process_engine().serve(model="m", served_name="m")


def test_it_explains_a_missing_program(process_settings: Any) -> None:
    process_settings.ENGINE_PROCESS_COMMAND = "/nonexistent/vllm serve {model}"
    with pytest.raises(EngineError, match="could not start vLLM"):
        process_engine().serve(model="m", served_name="m")
