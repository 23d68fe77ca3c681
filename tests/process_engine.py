"""The process engine running devtools' simulator as "vLLM" on a free port, with its
state and log in a test's own folder (the engine's paths are settings, worked out once
at start-up, so a test must set them all)."""

from pathlib import Path
from typing import Any

from backends.spec import default_spec
from modelmgr import engines
from tests.net import free_port


def use_process_engine(
    settings: Any, folder: Path, *, startup_delay: float, simulator_args: str = ""
) -> engines.Engine:
    port = free_port()
    settings.TALKTUAH_ENGINE = "process"
    settings.VAR_DIR = folder / "var"
    settings.VAR_DIR.mkdir()
    settings.ENGINE_STATE_FILE = settings.VAR_DIR / "engine.json"
    settings.ENGINE_LOG_FILE = settings.VAR_DIR / "engine.log"
    settings.VLLM_BASE_URL = f"http://127.0.0.1:{port}"
    settings.VLLM_PORT = port
    settings.ENGINE_PROCESS_COMMAND = (
        "{python} {manage} vllm_simulator --model {served_name} --port {port} "
        f"--startup-delay {startup_delay} {simulator_args}"
    ).strip()
    settings.ENGINE_STOP_GRACE_SECONDS = 5
    settings.SWITCH_TIMEOUT_SECONDS = 30
    return engines.engine_for(default_spec())
