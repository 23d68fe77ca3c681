"""Private Redis and PostgreSQL servers for tests that take a service down: each runs on
a free port from a temporary directory, so stopping it disturbs nobody else (the shared
servers on 6379 and 5432 stay up). start() may be called again after stop(): same port,
same data directory, as a restarted server.

    with PrivateRedis() as redis_server:       # redis://127.0.0.1:<port>/0
        ...; redis_server.stop(); ...; redis_server.start()
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests.net import free_port, port_is_free

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while port_is_free(port):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


class PrivateRedis:
    """redis-server on a free port, no persistence (a restart comes back empty, as a
    Redis without a volume does)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        command = [
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _wait_listening(self.port, self.process, 10)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PrivatePostgres:
    """A PostgreSQL 15 cluster in a temporary directory, on a free port, trusting local
    connections. initdb refuses to run as root, so the cluster runs as the `postgres`
    user when the tests run as root."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="talktuah-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._initialised = False

    @staticmethod
    def available() -> bool:
        return (PG_BIN / "initdb").is_file()

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        subprocess.run(
            [*self._as_user, *command], check=True, stdout=subprocess.DEVNULL, cwd=self.dir
        )

    def start(self) -> Self:
        if not self._initialised:
            self._run(
                str(PG_BIN / "initdb"),
                *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
                *("--no-sync", "-E", "UTF8", "--locale=C"),
            )
            self._initialised = True
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"),
        )
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are ended, as when the server goes away."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
