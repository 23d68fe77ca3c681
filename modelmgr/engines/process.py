"""The process engine: vLLM (by default the in-repo simulator) as a child process of
this host, found again through a state file; the processes are inspected with psutil."""

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
from django.conf import settings

from backends.spec import EngineConfig
from modelmgr.engines.base import EngineState
from plumbing.errors import EngineError

logger = logging.getLogger(__name__)

# After the old vLLM has exited, how long its port may stay bound (children that were
# killed a moment later) before we blame another program.
PORT_RELEASE_SECONDS = 5.0
# After SIGKILL, how long a process may take to disappear before we give up.
KILL_WAIT_SECONDS = 5.0


# Two reads of a process's create time may differ by the boot time's rounding (psutil
# adds the boot time, which the kernel reports in whole seconds and NTP can shift).
CREATE_TIME_TOLERANCE = 1.0


@dataclass(frozen=True)
class _ProcessRecord:
    """The state file: what ProcessEngine started, for whichever process reads it next."""

    pid: int
    model: str
    served_name: str
    started_at: str
    port: int
    command: list[str]
    # The process's create time (psutil, seconds since the epoch): with the pid, it
    # identifies the process even if it renames itself (vLLM sets process titles).
    # None in state files of older versions (which kept clock ticks): then the command
    # line identifies it.
    create_time: float | None = None


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def _pid_alive(pid: int) -> bool:
    # Our own child stays a zombie until it is reaped.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _reap_when_it_exits(child: "subprocess.Popen[bytes]") -> None:
    """Collect the child's exit status the moment it exits, so it is never left a
    zombie however long the worker takes to look (a killed vLLM stayed one for 70 s)."""
    # WNOWAIT waits without reaping, and holds no lock of Popen's (a blocking
    # child.wait() would, and make poll() in other threads say "running"); poll() then
    # reaps and keeps the exit code. Another thread reaping first ends the wait too.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    child.poll()


def _signal_group(pid: int, signum: int) -> None:
    """Signal the process group that pid leads (vLLM and its workers), else pid alone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    except PermissionError as exc:
        raise EngineError(f"not allowed to stop vLLM (pid {pid}): {exc.strerror}") from exc


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, like the servers themselves: sockets in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _log_tail(path: Path, lines: int = 3, limit: int = 500) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-limit:]


class ProcessEngine:
    """vLLM as a child process of this host (what tests and the demo use).

    Keep one instance for the worker's lifetime: it then also knows the exit code of
    the vLLM it started. A new instance (a restarted worker) finds the running vLLM
    through the state file and stops it before starting another.
    """

    name = "process"
    read_only = False

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        return Path(self.config.state_file)

    @property
    def log_file(self) -> Path:
        return Path(self.config.log_file)

    @property
    def port(self) -> int:
        return self.config.port

    def command(self, *, model: str, served_name: str) -> list[str]:
        """ENGINE_PROCESS_COMMAND with its placeholders filled in, as an argv."""
        template = self.config.process_command
        values = {
            "model": model,
            "served_name": served_name,
            "port": str(self.port),
            "python": sys.executable,
            "manage": str(Path(settings.BASE_DIR) / "manage.py"),
        }
        # Split first, then fill in: a value with spaces (a snapshot path) stays one
        # argument and cannot inject options.
        try:
            return [part.format(**values) for part in shlex.split(template)]
        except (KeyError, IndexError, ValueError) as exc:
            placeholders = ", ".join("{" + name + "}" for name in values)
            raise EngineError(
                f"ENGINE_PROCESS_COMMAND {template!r} is not a valid command template "
                f"({exc!r}); its placeholders are {placeholders}"
            ) from exc

    def serve(self, *, model: str, served_name: str) -> None:
        command = self.command(model=model, served_name=served_name)
        with self._locked():
            self._stop_locked()
            if "{port}" in self.config.process_command:
                self._wait_for_free_port(self.port)
            self._start(command, model=model, served_name=served_name)

    def stop(self) -> None:
        with self._locked():
            self._stop_locked()

    def state(self) -> EngineState:
        record = self._read_record()
        if record is None:
            return EngineState(False, None, None, "vLLM is not running (TalkTuah started none)")
        incarnation = f"{record.pid}@{record.create_time or record.started_at}"
        if self._is_running(record):
            return EngineState(
                True,
                record.model,
                record.served_name,
                f"vLLM runs as pid {record.pid} on port {record.port} since "
                f"{record.started_at}; log: {self.log_file}",
                incarnation=incarnation,
            )
        # Only the worker that started it (its parent) learns how it ended.
        exit_code = None
        if self._child is not None and self._child.pid == record.pid:
            exit_code = self._child.poll()
        code = "" if exit_code is None else f" with code {exit_code}"
        tail = _log_tail(self.log_file)
        return EngineState(
            False,
            record.model,
            record.served_name,
            f"vLLM (pid {record.pid}) exited{code}; see {self.log_file}"
            + (f": {tail}" if tail else ""),
            exit_code=exit_code,
            incarnation=incarnation,
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One change at a time, across processes (two workers, a shell...).
        lock_path = self.state_file.with_name(self.state_file.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _start(self, command: list[str], *, model: str, served_name: str) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {started_at} TalkTuah starts: {shlex.join(command)}\n".encode())
            log.flush()
            try:
                # A session of its own: vLLM outlives a worker restart (the state file
                # lets the next worker find it), ignores the worker's Ctrl-C, and its
                # workers can be stopped as one process group.
                child = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            except OSError as exc:
                raise EngineError(
                    f"could not start vLLM ({command[0]}): {exc.strerror or exc}"
                ) from exc
        self._child = child
        threading.Thread(
            target=_reap_when_it_exits, args=(child,), name=f"reap-vllm-{child.pid}", daemon=True
        ).start()
        self._write_record(
            _ProcessRecord(
                pid=child.pid,
                model=model,
                served_name=served_name,
                started_at=started_at,
                port=self.port,
                command=command,
                create_time=_create_time(child.pid),
            )
        )
        logger.info("vLLM started as pid %s on model %s (%s)", child.pid, model, served_name)

    def _stop_locked(self) -> None:
        record = self._read_record()
        pids = []
        if record is not None and self._is_running(record):
            pids.append(record.pid)
        if self._child is not None and self._child.poll() is None and self._child.pid not in pids:
            pids.append(self._child.pid)
        for pid in pids:
            self._terminate(pid)
        self._child = None
        self.state_file.unlink(missing_ok=True)

    def _terminate(self, pid: int) -> None:
        """SIGTERM, SIGKILL after the grace period; returns once the process is gone."""
        grace = self.config.stop_grace_seconds
        logger.info("stopping vLLM (pid %s), SIGKILL after %s s", pid, grace)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._alive(pid):
            if time.monotonic() > deadline:
                logger.warning("vLLM (pid %s) ignored SIGTERM for %s s: SIGKILL", pid, grace)
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT_SECONDS
                while self._alive(pid):
                    if time.monotonic() > deadline:
                        raise EngineError(f"vLLM (pid {pid}) survived SIGKILL; stop it by hand")
                    time.sleep(0.05)
                break
            time.sleep(0.05)
        # The leader is gone; its workers must not keep the port or the GPU memory.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is None
        return _pid_alive(pid)

    def _is_running(self, record: _ProcessRecord) -> bool:
        """Whether the recorded vLLM still runs (and its pid was not reused since)."""
        if not self._alive(record.pid):
            return False
        created = _create_time(record.pid)
        if (
            created is not None
            and record.create_time is not None
            and abs(created - record.create_time) < CREATE_TIME_TOLERANCE
        ):
            return True
        return _cmdline(record.pid) == record.command

    def _wait_for_free_port(self, port: int) -> None:
        deadline = time.monotonic() + PORT_RELEASE_SECONDS
        while not _port_is_free(port):
            if time.monotonic() > deadline:
                raise EngineError(
                    f"port {port} is in use by another program, so vLLM cannot listen on it; "
                    "stop that program or set VLLM_PORT"
                )
            time.sleep(0.1)

    def _read_record(self) -> _ProcessRecord | None:
        try:
            data = json.loads(self.state_file.read_text())
            data.pop("start_ticks", None)  # older versions' identity (see create_time)
            return _ProcessRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("ignoring the unreadable engine state file %s: %s", self.state_file, exc)
            return None

    def _write_record(self, record: _ProcessRecord) -> None:
        # Atomic: readers in other processes see the old file or the new one, never half.
        path = self.state_file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2))
        os.replace(tmp, path)
