"""The benchmark's server processes: start one (pinned to a core, its output to a log),
wait until it answers its health check, read its memory, stop it."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cpu import count_as_ours


class BenchError(Exception):
    """The benchmark cannot go on (a process did not start, a tool is missing)."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchError(f"no VmRSS for {self.name} (pid {self.pid})")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 15 s; then SIGKILL to what is left of its process group
        (start_service gives it one of its own): children it started and did not stop,
        as vLLM's engine core when its server is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def start_service(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    health: str,
    core: int | None,
    logs: Path,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
) -> Service:
    """Starts `command` and returns once `health` answers on `port`; raises BenchError
    (with the log's tail) when it exits or does not answer within `timeout` seconds."""
    log = logs / f"{name.lower()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    if core is not None:
        # At once, before the program starts its threads: they inherit the mask.
        os.sched_setaffinity(process.pid, {core})
    service = Service(name, process, log, port)
    count_as_ours(process.pid)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"{name} exited at start-up ({log}):\n{service.log_tail()}")
            with contextlib.suppress(OSError):
                http_get(service.base + health, timeout=2)
                return service
            time.sleep(0.2)
    except BaseException:
        service.stop()  # Ctrl-C while it starts: the caller never got it to stop
        raise
    service.stop()
    raise BenchError(f"{name} did not answer {health} within {timeout:.0f} s ({log})")
