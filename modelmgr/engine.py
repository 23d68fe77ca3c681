"""The engine controller: starts, stops and inspects vLLM, whatever runs it.

`get_engine()` picks one of three engines by `settings.TALKTUAH_ENGINE`:

* ``process`` (`ProcessEngine`): vLLM (by default the in-repo simulator) as a child
  process on this host, its pid and model recorded in a state file so that a restarted
  worker (or any other process) knows what runs;
* ``docker`` (`DockerEngine`): the vLLM container, recreated with the new model and
  otherwise the same settings (image, entrypoint, GPUs, volumes, ports, networks...);
* ``external`` (`ExternalEngine`): vLLM is managed elsewhere; read-only.

`Engine.serve()` returns once vLLM has been *started*, not once it is ready: loading a
model takes minutes, and readiness is vLLM's to tell (the caller polls `/health` and
`/v1/models`, and `state()` to notice a crash). Everything here is synchronous: the
worker calls it. This module is the only importer of the docker SDK, and every failure
leaves it as an `EngineError` whose message a person understands.
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
from django.conf import settings

logger = logging.getLogger(__name__)

DEFAULT_PROCESS_COMMAND = "{python} {manage} vllm_simulator --model {served_name} --port {port}"
DEFAULT_VLLM_PORT = 8001
DEFAULT_STOP_GRACE_SECONDS = 10.0
# After the old vLLM has exited, how long its port may stay bound (children that were
# killed a moment later) before we blame another program.
PORT_RELEASE_SECONDS = 5.0
# After SIGKILL, how long a process may take to disappear before we give up.
KILL_WAIT_SECONDS = 5.0
_PROC = Path("/proc")


class EngineError(Exception):
    """vLLM could not be started, stopped or inspected; the message says why."""


class EngineReadOnly(EngineError):
    """The engine is managed outside TalkTuah and refuses changes."""


@dataclass(frozen=True)
class EngineState:
    """What the engine runs.

    model/served_name are what the engine was last told to serve (None when nothing
    was, or after stop() of the process engine); running says whether it is alive now.
    """

    running: bool
    model: str | None
    served_name: str | None
    detail: str


class Engine(Protocol):
    name: str
    read_only: bool

    def serve(self, *, model: str, served_name: str) -> None:
        """(Re)start vLLM on this model; returns once started, not once ready."""
        ...

    def stop(self) -> None: ...

    def state(self) -> EngineState: ...


def get_engine() -> Engine:
    """The engine named by settings.TALKTUAH_ENGINE (process, docker or external)."""
    name = getattr(settings, "TALKTUAH_ENGINE", "process")
    engines: dict[str, type[ProcessEngine] | type[DockerEngine] | type[ExternalEngine]] = {
        "process": ProcessEngine,
        "docker": DockerEngine,
        "external": ExternalEngine,
    }
    if name not in engines:
        raise EngineError(
            f"unknown TALKTUAH_ENGINE {name!r}: use one of {', '.join(sorted(engines))}"
        )
    return engines[name]()


def _grace_seconds() -> float:
    return float(getattr(settings, "ENGINE_STOP_GRACE_SECONDS", DEFAULT_STOP_GRACE_SECONDS))


# --- process ----------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcessRecord:
    """The state file: what ProcessEngine started, for whichever process reads it next."""

    pid: int
    model: str
    served_name: str
    started_at: str
    port: int
    command: list[str]
    # The kernel's start time of the pid (clock ticks since boot): with the pid, it
    # identifies the process even if it renames itself (vLLM sets process titles).
    start_ticks: int | None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) of a pid from /proc, or None if it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _pid_alive(pid: int) -> bool:
    # Our own child stays a zombie (and signal 0 still reaches it) until it is reaped.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    if _PROC.is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def __init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None

    # settings are read on each call, so that overrides (tests) apply.
    @property
    def state_file(self) -> Path:
        default = Path(settings.VAR_DIR) / "engine.json"
        return Path(getattr(settings, "ENGINE_STATE_FILE", None) or default)

    @property
    def log_file(self) -> Path:
        default = Path(settings.VAR_DIR) / "engine.log"
        return Path(getattr(settings, "ENGINE_LOG_FILE", None) or default)

    @property
    def port(self) -> int:
        port = getattr(settings, "VLLM_PORT", None)
        if port:
            return int(port)
        try:
            return urlsplit(getattr(settings, "VLLM_BASE_URL", "")).port or DEFAULT_VLLM_PORT
        except ValueError:
            return DEFAULT_VLLM_PORT

    def command(self, *, model: str, served_name: str) -> list[str]:
        """ENGINE_PROCESS_COMMAND with its placeholders filled in, as an argv."""
        template: str = getattr(settings, "ENGINE_PROCESS_COMMAND", None) or (
            DEFAULT_PROCESS_COMMAND
        )
        manage = Path(getattr(settings, "BASE_DIR", Path(__file__).resolve().parents[1]))
        values = {
            "model": model,
            "served_name": served_name,
            "port": str(self.port),
            "python": sys.executable,
            "manage": str(manage / "manage.py"),
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
            template = getattr(settings, "ENGINE_PROCESS_COMMAND", None) or (
                DEFAULT_PROCESS_COMMAND
            )
            if "{port}" in template:
                self._wait_for_free_port(self.port)
            self._start(command, model=model, served_name=served_name)

    def stop(self) -> None:
        with self._locked():
            self._stop_locked()

    def state(self) -> EngineState:
        record = self._read_record()
        if record is None:
            return EngineState(False, None, None, "vLLM is not running (TalkTuah started none)")
        if self._is_running(record):
            return EngineState(
                True,
                record.model,
                record.served_name,
                f"vLLM runs as pid {record.pid} on port {record.port} since "
                f"{record.started_at}; log: {self.log_file}",
            )
        code = ""
        if self._child is not None and self._child.pid == record.pid:
            code = f" with code {self._child.poll()}"
        tail = _log_tail(self.log_file)
        return EngineState(
            False,
            record.model,
            record.served_name,
            f"vLLM (pid {record.pid}) exited{code}; see {self.log_file}"
            + (f": {tail}" if tail else ""),
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
        stat = _proc_stat(child.pid)
        self._write_record(
            _ProcessRecord(
                pid=child.pid,
                model=model,
                served_name=served_name,
                started_at=started_at,
                port=self.port,
                command=command,
                start_ticks=stat[1] if stat else None,
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
        grace = _grace_seconds()
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
        if not _PROC.is_dir():
            return True  # no way to tell a reused pid without /proc
        stat = _proc_stat(record.pid)
        if stat is not None and record.start_ticks is not None and stat[1] == record.start_ticks:
            return True
        return _proc_cmdline(record.pid) == record.command

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


# --- docker -----------------------------------------------------------------------


def _flag_name(arg: str) -> str:
    # vLLM's parser accepts --served_model_name for --served-model-name.
    return arg.split("=", 1)[0].replace("_", "-")


def _flag_values(args: list[str], flag: str) -> list[str] | None:
    """The values given to flag (--flag v..., or --flag=v), or None if it is absent."""
    for i, arg in enumerate(args):
        if _flag_name(arg) == flag:
            if "=" in arg:
                return [arg.split("=", 1)[1]]
            values = []
            for value in args[i + 1 :]:
                if value.startswith("-"):
                    break
                values.append(value)
            return values
    return None


def _replace_flag(args: list[str], flag: str, value: str, *, multiple: bool) -> bool:
    """Set flag's value(s) in args to value; False if the flag is absent."""
    for i, arg in enumerate(args):
        if _flag_name(arg) == flag:
            if "=" in arg:
                args[i] = f"{arg.split('=', 1)[0]}={value}"
                return True
            end = i + 1
            while end < len(args) and not args[end].startswith("-"):
                end += 1
                if not multiple:
                    break
            args[i + 1 : end] = [value]
            return True
    return False


def _serve_position(entrypoint: list[str], cmd: list[str]) -> int | None:
    """Where, in cmd, `vllm serve` takes its positional model (None: not that style)."""
    argv = [*entrypoint, *cmd]
    for i in range(1, len(argv)):
        if argv[i] == "serve" and Path(argv[i - 1]).name == "vllm":
            at = i + 1 - len(entrypoint)
            return at if at >= 0 else None
    return None


def _model_from_args(entrypoint: list[str], cmd: list[str]) -> tuple[str | None, str | None]:
    """(model, served name) of a vLLM command line."""
    values = _flag_values(cmd, "--model")
    model = values[0] if values else None
    if model is None:
        at = _serve_position(entrypoint, cmd)
        if at is not None and at < len(cmd) and not cmd[at].startswith("-"):
            model = cmd[at]
    names = _flag_values(cmd, "--served-model-name")
    # vLLM answers to the first served name, and to the model when there is none.
    return model, names[0] if names else model


def _args_with_model(
    entrypoint: list[str], cmd: list[str], *, model: str, served_name: str
) -> list[str]:
    """cmd with the model and the served name replaced (or added)."""
    args = list(cmd)
    if not _replace_flag(args, "--model", model, multiple=False):
        at = _serve_position(entrypoint, args)
        if at is None:
            args += ["--model", model]
        elif at < len(args) and not args[at].startswith("-"):
            args[at] = model
        else:
            args.insert(at, model)
    if not _replace_flag(args, "--served-model-name", served_name, multiple=True):
        args += ["--served-model-name", served_name]
    return args


def _covered_destinations(host_config: dict[str, Any]) -> set[str]:
    destinations = {bind.split(":")[1] for bind in host_config.get("Binds") or [] if ":" in bind}
    destinations |= {mount.get("Target") for mount in host_config.get("Mounts") or []}
    return destinations


def _endpoints(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's networks as create/connect EndpointConfigs (user settings only)."""
    mode = attrs["HostConfig"].get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}
    short_id = attrs["Id"][:12]
    endpoints = {}
    for network, settings_ in (attrs.get("NetworkSettings", {}).get("Networks") or {}).items():
        if network == "bridge" and mode in ("default", "bridge"):
            continue  # the default network: NetworkMode says it all
        endpoint: dict[str, Any] = {}
        for key in ("IPAMConfig", "Links", "DriverOpts"):
            if settings_.get(key):
                endpoint[key] = settings_[key]
        # Docker adds the container's short id as an alias; the new one gets its own.
        aliases = [alias for alias in settings_.get("Aliases") or [] if alias != short_id]
        if aliases:
            endpoint["Aliases"] = aliases
        endpoints[network] = endpoint
    return endpoints


def _create_config(attrs: dict[str, Any], cmd: list[str]) -> dict[str, Any]:
    """A /containers/create body: the old container's settings, with cmd as arguments.

    Config (image, entrypoint, env, labels, exposed ports, ...) and HostConfig (device
    requests, binds, mounts, port bindings, restart policy, ipc mode, shm size, runtime,
    ...) are passed on whole, as Docker reports them: nothing the operator set is lost.
    """
    config = dict(attrs["Config"])
    config["Cmd"] = cmd
    if config.get("Hostname") == attrs["Id"][:12]:
        del config["Hostname"]  # Docker's default; the new container gets its own
    host_config = dict(attrs["HostConfig"])
    # Anonymous volumes (image VOLUMEs, `-v /path`) would be created afresh; keep the
    # old ones (a model cache, say) by naming them.
    covered = _covered_destinations(host_config)
    kept = [
        f"{mount['Name']}:{mount['Destination']}"
        for mount in attrs.get("Mounts") or []
        if mount.get("Type") == "volume" and mount.get("Destination") not in covered
    ]
    if kept:
        host_config["Binds"] = [*(host_config.get("Binds") or []), *kept]
    config["HostConfig"] = host_config
    mode = host_config.get("NetworkMode") or "default"
    endpoints = _endpoints(attrs)
    if mode in endpoints:
        config["NetworkingConfig"] = {"EndpointsConfig": {mode: endpoints[mode]}}
    return config


class DockerEngine:
    """The vLLM container (settings.VLLM_CONTAINER_NAME), recreated with a new model.

    Docker is found like the docker CLI does (DOCKER_HOST, else the local socket);
    tests inject a client.
    """

    name = "docker"
    read_only = False

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def container_name(self) -> str:
        return str(getattr(settings, "VLLM_CONTAINER_NAME", "vllm"))

    def serve(self, *, model: str, served_name: str) -> None:
        with self._docker() as client:
            attrs = self._inspect(client)
            entrypoint = attrs["Config"].get("Entrypoint") or []
            cmd = attrs["Config"].get("Cmd") or []
            timeout = self._stop_timeout()
            if _model_from_args(entrypoint, cmd) == (model, served_name):
                logger.info("restarting container %s on model %s", self.container_name, model)
                client.api.restart(attrs["Id"], timeout=timeout)
                return
            new_cmd = _args_with_model(entrypoint, cmd, model=model, served_name=served_name)
            self._recreate(client, attrs, new_cmd, timeout)

    def stop(self) -> None:
        with self._docker() as client:
            attrs = self._inspect(client)
            client.api.stop(attrs["Id"], timeout=self._stop_timeout())

    def state(self) -> EngineState:
        with self._docker() as client:
            try:
                attrs = client.api.inspect_container(self.container_name)
            except docker.errors.NotFound:
                return EngineState(
                    False, None, None, f"there is no Docker container {self.container_name!r}"
                )
        model, served_name = _model_from_args(
            attrs["Config"].get("Entrypoint") or [], attrs["Config"].get("Cmd") or []
        )
        status = attrs["State"].get("Status", "unknown")
        detail = f"container {self.container_name!r} ({attrs['Config'].get('Image')}) is {status}"
        if attrs["State"].get("Health"):
            detail += f", health: {attrs['State']['Health'].get('Status')}"
        if status == "exited":
            detail += f" with code {attrs['State'].get('ExitCode')}"
        return EngineState(status == "running", model, served_name, detail)

    def _recreate(self, client: Any, attrs: dict[str, Any], cmd: list[str], timeout: int) -> None:
        name = self.container_name
        old_id = attrs["Id"]
        was_running = attrs["State"].get("Running", False)
        config = _create_config(attrs, cmd)
        mode = attrs["HostConfig"].get("NetworkMode") or "default"
        other_networks = {net: ep for net, ep in _endpoints(attrs).items() if net != mode}
        logger.info("recreating container %s with: %s", name, shlex.join(cmd))
        # Stop first: the GPU memory and the host port must be free for the new one.
        # (A PID 1 that ignores SIGTERM makes this wait the whole timeout.)
        client.api.stop(old_id, timeout=timeout)
        # Renamed, not removed, until the new container runs: if Docker refuses the new
        # one, the old one is put back as it was.
        client.api.rename(old_id, f"{name}-replaced-{old_id[:12]}")
        new_id = None
        try:
            new_id = client.api.create_container_from_config(config, name=name)["Id"]
            # Older APIs (< 1.44) take one network at create time; connect the others.
            for network, endpoint in other_networks.items():
                ipam = endpoint.get("IPAMConfig") or {}
                client.api.connect_container_to_network(
                    new_id,
                    network,
                    aliases=endpoint.get("Aliases"),
                    links=endpoint.get("Links"),
                    ipv4_address=ipam.get("IPv4Address"),
                    ipv6_address=ipam.get("IPv6Address"),
                    link_local_ips=ipam.get("LinkLocalIPs"),
                    driver_opt=endpoint.get("DriverOpts"),
                )
            client.api.start(new_id)
        except Exception:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                if new_id is not None:
                    client.api.remove_container(new_id, force=True)
                client.api.rename(old_id, name)
                if was_running:
                    client.api.start(old_id)
            raise
        # v=False: anonymous volumes now belong to the new container.
        client.api.remove_container(old_id, v=False)

    def _inspect(self, client: Any) -> dict[str, Any]:
        try:
            attrs: dict[str, Any] = client.api.inspect_container(self.container_name)
        except docker.errors.NotFound as exc:
            raise EngineError(
                f"there is no Docker container {self.container_name!r} to run vLLM in: create "
                "it first (e.g. `docker compose up -d vllm`) or set VLLM_CONTAINER_NAME"
            ) from exc
        return attrs

    def _stop_timeout(self) -> int:
        # Docker takes whole seconds.
        return max(0, math.ceil(_grace_seconds()))

    @contextlib.contextmanager
    def _docker(self) -> Iterator[Any]:
        """A docker client; the SDK's exceptions come out as EngineError."""
        client = self._client
        where = os.environ.get("DOCKER_HOST") or "the local Docker socket"
        try:
            if client is None:
                client = docker.from_env()
            else:
                where = client.api.base_url
            yield client
        except docker.errors.APIError as exc:
            raise EngineError(
                f"Docker refused to manage container {self.container_name!r}: "
                f"{exc.explanation or exc}"
            ) from exc
        # requests' errors (a daemon gone between two calls) are OSErrors.
        except (docker.errors.DockerException, OSError) as exc:
            raise EngineError(f"Docker is unreachable at {where}: {exc}") from exc
        finally:
            if client is not None and client is not self._client:
                client.close()


# --- external ---------------------------------------------------------------------


class ExternalEngine:
    """vLLM is started and switched by someone else; TalkTuah only talks to it."""

    name = "external"
    read_only = True

    def serve(self, *, model: str, served_name: str) -> None:
        raise EngineReadOnly(
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external); switch it there."
        )

    def stop(self) -> None:
        raise EngineReadOnly(
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external); stop it there."
        )

    def state(self) -> EngineState:
        return EngineState(
            False,
            None,
            None,
            "vLLM is managed outside TalkTuah (TALKTUAH_ENGINE=external): whether it runs, "
            "and which model, only vLLM itself can tell (/health, /v1/models)",
        )
