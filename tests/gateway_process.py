"""The gateway as a real process (`manage.py serve`), for tests about several uvicorn
workers and signals, sharing the test database of the session."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx
from django.db import connection

from tests.net import free_port

REPO = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """DATABASE_URL of the test database, for processes the tests start."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    return (
        f"postgres://{s['USER'] or ''}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    )


class GatewayProcess:
    """`manage.py serve --workers N` on a free port, with the test database."""

    def __init__(
        self,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stderr: int | None = None,
    ) -> None:
        self.port = free_port()
        self.workers = workers
        self.env = {**os.environ, "DATABASE_URL": database_url(), **(env or {})}
        self.log = log  # its stdout and stderr go there (else to the test's)
        self.stderr = stderr  # else a file descriptor for its stderr alone
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        command = ["manage.py", "serve", "--port", str(self.port), "--workers", str(self.workers)]
        output = self.log.open("ab") if self.log is not None else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                cwd=REPO,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT if output else self.stderr,
            )
        finally:
            if output is not None:
                output.close()  # the child has its own copy
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start (exit {self.process.poll()})")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
