"""The worker supervises the engine it runs, for real: the worker as a process, its process
engine running the simulator, which the test kills (SIGKILL) or hangs (SIGSTOP). The
crash is reaped (no zombie), recorded in the switch history and the heartbeat at once,
the gateway's health answer says the backend is down, and the simulator is restarted
under ENGINE_RESTART_POLICY; /metrics counts both. POST /api/restart-engine restarts it
on request."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from backends.spec import default_spec
from modelmgr import engines
from modelmgr.models import ModelSwitch, Scope, SwitchKind, SwitchPhase, WorkerHeartbeat
from tests.gateway_process import database_url
from tests.net import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]
MODEL = "demo-model"


class Worker:
    """`manage.py run_worker` with the process engine on a free port, in tmp_path."""

    def __init__(self, tmp_path: Path, settings: Any, **env: str) -> None:
        self.port = free_port()
        self.var = tmp_path / "var"
        self.var.mkdir()
        # The test process reads the same engine (its state file) and vLLM.
        settings.TALKTUAH_ENGINE = "process"
        settings.VAR_DIR = self.var
        settings.ENGINE_STATE_FILE = self.var / "engine.json"
        settings.ENGINE_LOG_FILE = self.var / "engine.log"
        settings.VLLM_BASE_URL = f"http://127.0.0.1:{self.port}"
        settings.VLLM_PORT = self.port
        settings.METRICS_PUBLIC = True
        settings.METRICS_TOKEN = ""
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "TALKTUAH_VAR_DIR": str(self.var),
            "TALKTUAH_ENGINE": "process",
            "VLLM_BASE_URL": settings.VLLM_BASE_URL,
            "VLLM_MODEL": MODEL,
            "ENGINE_PROCESS_COMMAND": "{python} {manage} vllm_simulator --model {served_name} "
            "--port {port}",
            "ENGINE_STOP_GRACE_SECONDS": "1",
            "ENGINE_CHECK_SECONDS": "0.2",
            "WORKER_HEARTBEAT_SECONDS": "0.5",
            "BACKEND_POLL_TIMEOUT": "1",
            **env,
        }
        self.log = tmp_path / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Worker":
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "run_worker", "--poll", "0.1"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.serves(MODEL), timeout=60, message=f"vLLM to serve {MODEL}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # The worker leaves vLLM running on purpose (a restarted worker adopts it).
        engines.engine_for(default_spec()).stop()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def vllm_pid(self) -> int:
        return int(json.loads((self.var / "engine.json").read_text())["pid"])

    def serves(self, model: str) -> bool:
        try:
            listed = httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=1).json()
        except (httpx.TransportError, ValueError):
            return False
        return [entry["id"] for entry in listed["data"]] == [model]


@pytest.fixture
def start_worker(tmp_path: Path, settings: Any) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker(tmp_path, settings, **env)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def rows(kind: str) -> list[ModelSwitch]:
    return list(ModelSwitch.objects.filter(kind=kind).order_by("created_at"))


def reaped(pid: int) -> bool:
    """No process has the pid any more, not even a zombie waiting for its parent."""
    return not psutil.pid_exists(pid)


def backend_status(gateway: Any) -> tuple[int, str]:
    response = httpx.get(f"{gateway.url}/api/healthz", timeout=10)
    return response.status_code, response.json()["backends"][0]["status"]


def metric(gateway: Any, name: str) -> float | None:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{backend="default"}} '):
            return float(line.split()[-1])
    return None


def test_a_killed_vllm_is_reaped_marked_down_recorded_and_restarted(
    start_worker: Callable[..., Worker], gateway: Any
) -> None:
    # A backoff long enough to see the backend down before the restart.
    worker = start_worker(ENGINE_RESTART_POLICY="on-failure", ENGINE_RESTART_BACKOFF_SECONDS="3")
    assert backend_status(gateway) == (200, "ok")
    pid = worker.vllm_pid()
    os.kill(pid, signal.SIGKILL)

    [crash] = wait_for(lambda: rows(SwitchKind.CRASH), timeout=10, message="the crash row")
    assert crash.phase == SwitchPhase.FAILED and crash.to_model == MODEL
    assert f"vLLM (pid {pid}) exited with code -9" in crash.error, crash.error
    assert "restart in 3.0 s" in crash.error
    # Reaped at once by the worker, its parent: no zombie.
    wait_for(lambda: reaped(pid), timeout=2, message=f"pid {pid} to be reaped")
    # The heartbeat says so right after the crash row is written (CI once read it between).
    wait_for(
        lambda: WorkerHeartbeat.objects.get().current.startswith("engine down: vLLM (pid"),
        timeout=2,
        message="the heartbeat to say the engine is down",
    )
    # (The health answer is cached for a second.)
    wait_for(lambda: backend_status(gateway) == (503, "down"), timeout=2, message="down")

    [restart] = wait_for(
        lambda: [r for r in rows(SwitchKind.RESTART) if r.phase == SwitchPhase.READY],
        timeout=30,
        message="the restart to be ready",
    )
    assert restart.requested_by == "supervisor (attempt 1)"
    assert worker.serves(MODEL) and worker.vllm_pid() != pid
    wait_for(lambda: backend_status(gateway) == (200, "ok"), timeout=10, message="ok again")
    assert metric(gateway, "talktuah_engine_crashes_total") == 1.0
    assert metric(gateway, "talktuah_engine_restarts_total") == 1.0
    wait_for(lambda: "engine down" not in WorkerHeartbeat.objects.get().current, timeout=5)


def test_a_hung_vllm_fails_its_health_check_and_is_restarted(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(
        ENGINE_UNHEALTHY_SECONDS="1",
        ENGINE_RESTART_BACKOFF_SECONDS="0.2",
        # A vLLM not yet seen healthy is loading, for at most this long.
        SWITCH_TIMEOUT_SECONDS="5",
    )
    time.sleep(1)  # the worker sees it healthy first (it looks every 0.2 s)
    pid = worker.vllm_pid()
    os.kill(pid, signal.SIGSTOP)  # alive, its port open, answering nothing
    try:
        [crash] = wait_for(lambda: rows(SwitchKind.CRASH), timeout=20, message="the crash row")
        assert "failed its health check" in crash.error, crash.error
        wait_for(
            lambda: [r for r in rows(SwitchKind.RESTART) if r.phase == SwitchPhase.READY],
            timeout=30,
            message="the restart to be ready",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert worker.vllm_pid() != pid and worker.serves(MODEL)
    assert reaped(pid), "the hung vLLM was left running"


def test_policy_never_records_the_crash_and_leaves_it_down(
    start_worker: Callable[..., Worker],
) -> None:
    worker = start_worker(ENGINE_RESTART_POLICY="never")
    os.kill(worker.vllm_pid(), signal.SIGKILL)
    [crash] = wait_for(lambda: rows(SwitchKind.CRASH), timeout=10, message="the crash row")
    assert "not restarted (ENGINE_RESTART_POLICY=never)" in crash.error
    wait_for(lambda: "engine down" in WorkerHeartbeat.objects.get().current, timeout=5)
    with pytest.raises(AssertionError):
        wait_for(lambda: worker.serves(MODEL), timeout=3)
    assert rows(SwitchKind.RESTART) == []


def test_the_api_restarts_the_engine_on_request(
    start_worker: Callable[..., Worker], gateway: Any, make_key: Callable[..., str]
) -> None:
    worker = start_worker(ENGINE_RESTART_POLICY="never")
    pid = worker.vllm_pid()
    admin = make_key(scopes=(Scope.ADMIN,))
    response = httpx.post(
        f"{gateway.url}/api/restart-engine",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["to_model"], body["phase"], body["backend"]) == (MODEL, "requested", "default")
    wait_for(
        lambda: ModelSwitch.objects.get(pk=body["id"]).phase == SwitchPhase.READY,
        timeout=30,
        message="the requested restart",
    )
    restart = ModelSwitch.objects.get(pk=body["id"])
    assert restart.kind == SwitchKind.RESTART and restart.requested_by.startswith("key:")
    assert worker.vllm_pid() != pid and worker.serves(MODEL)
    # An inference key may not.
    inference = make_key()
    refused = httpx.post(
        f"{gateway.url}/api/restart-engine",
        headers={"Authorization": f"Bearer {inference}"},
        timeout=10,
    )
    assert refused.status_code == 403
