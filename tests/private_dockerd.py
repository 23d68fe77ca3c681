"""A real Docker daemon for the tests that need one: the running daemon, else a private
dockerd started (as root) and removed again.

    def test_it_runs_something(docker_daemon: DockerDaemon) -> None:
        python = host_python()
        docker_daemon.client.api.create_container(docker_daemon.host_image(), ...)

`docker_daemon` (session-scoped; import `docker_daemon_fixture` into the test module,
or list this module in `pytest_plugins`) is the running daemon, else a private dockerd it
starts and removes; `host_image()` is an image (`docker import`ed: no registry) in
which this host's Python runs from read-only bind mounts (`host_python().binds`).
(The docker SDK's HTTP boundary without a daemon: `tests.fake_docker_api`.)
"""

import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import pytest

TEST_LABEL = "talktuah.test"
HOST_IMAGE = "talktuah-test-host:latest"
DOCKERD_START_TIMEOUT = 60.0
DOCKERD_STOP_TIMEOUT = 20.0
# Set to 1 (CI, once docker.io is installed) to fail instead of skipping when no daemon
# can be had.
REQUIRE_DOCKER_ENV = "TALKTUAH_REQUIRE_DOCKER"
# Where dockerd 20.10 and containerd 1.6 write whatever their flags say: the plugin
# sockets and the shims' sockets. Removed at the end when the fixture created them.
_FIXED_RUNTIME_DIRS = (
    Path("/run/docker/plugins"),
    Path("/run/docker"),
    Path("/run/containerd/s"),
    Path("/run/containerd"),
)
_SHIM_SOCKETS = Path("/run/containerd/s")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_MNT_DETACH = 2


class DockerUnavailable(Exception):
    """No Docker daemon can be had; the message says why."""


@dataclass(frozen=True)
class HostPython:
    """This interpreter and this checkout, as a container sees them when bind-mounted
    read-only at the same paths (see `host_image`)."""

    executable: str  # the venv's interpreter (not resolved: the venv must apply)
    manage: str  # the repo's manage.py
    mounts: tuple[Path, ...]  # real paths, none inside another

    @property
    def binds(self) -> list[str]:
        return [f"{path}:{path}:ro" for path in self.mounts]


def host_python() -> HostPython:
    """The base Python installation, the venv and the repo, as real paths."""
    repo = Path(__file__).resolve().parents[1]
    venv = Path(sys.prefix).resolve()
    base = Path(sys.base_prefix).resolve()
    candidates = sorted({base, venv, repo}, key=lambda path: len(path.parts))
    mounts: list[Path] = []
    for path in candidates:
        if not any(path.is_relative_to(kept) for kept in mounts):
            mounts.append(path)
    executable = venv / "bin" / Path(sys.executable).name
    if not any(executable.resolve().is_relative_to(kept) for kept in mounts):
        raise RuntimeError(f"{executable} resolves outside {base}: cannot mount it")
    return HostPython(str(executable), str(repo / "manage.py"), tuple(mounts))


def _shared_libraries(python: HostPython) -> set[Path]:
    """The host libraries (as the loader names them) that this Python and its
    extension modules need, outside the directories that will be mounted."""
    paths = sysconfig.get_paths()
    roots = {Path(paths["stdlib"]) / "lib-dynload", Path(paths["platlib"]), Path(paths["purelib"])}
    roots.update(Path(entry) for entry in sys.path if Path(entry).name == "lib-dynload")
    files = {Path(python.executable).resolve()}
    for root in roots:
        if root.is_dir():
            files.update(path for path in root.rglob("*.so*") if path.is_file())
    if shutil.which("ldd") is None:
        raise RuntimeError("ldd is not installed: cannot list the libraries Python needs")
    ordered = sorted(files)
    chunks = [ordered[i::4] for i in range(4)]

    def ldd(chunk: list[Path]) -> str:
        # ldd exits 1 when one file is not dynamic (pure data named *.so*): fine.
        result = subprocess.run(
            ["ldd", *map(str, chunk)], capture_output=True, text=True, check=False
        )
        return result.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        output = "".join(pool.map(ldd, [chunk for chunk in chunks if chunk]))
    found = re.findall(r"(?:=>\s+|^\s+)(/\S+)\s+\(0x", output, flags=re.MULTILINE)
    return {
        Path(path)
        for path in found
        if not any(Path(path).is_relative_to(mount) for mount in python.mounts)
    }


def host_image(client: Any, python: HostPython | None = None) -> str:
    """Import (`docker import`) an image with just what this host's Python needs to run
    from read-only bind mounts of `host_python().mounts`: the dynamic loader and the
    shared libraries, plus a /tmp. These machines have no registry."""
    libraries = _shared_libraries(python or host_python())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tmp = tarfile.TarInfo("tmp")
        tmp.type, tmp.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(tmp)
        for path in sorted(libraries):
            # Stored under the name the loader uses, with the content of its target
            # (the loader itself is a symlink to follow).
            tar.add(path.resolve(), arcname=str(path).lstrip("/"))
    repository, tag = HOST_IMAGE.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return HOST_IMAGE


@dataclass
class DockerDaemon:
    """What the `docker_daemon` fixture yields."""

    client: Any  # a docker.DockerClient
    docker_host: str  # its address, as DOCKER_HOST takes it
    private: bool  # started by the fixture (else one that already ran)
    startup_seconds: float = 0.0
    _image: str | None = None

    @property
    def local(self) -> bool:
        """Whether its containers run on this host (bind mounts and host network work)."""
        host = urlsplit(self.docker_host)
        return host.scheme == "unix" or host.hostname in ("127.0.0.1", "localhost", "::1")

    def host_image(self) -> str:
        """`host_image` of this daemon, imported once per session."""
        if self._image is None:
            self._image = host_image(self.client)
        return self._image


def _log_excerpt(log: Path, lines: int = 6) -> str:
    """dockerd's errors (else its last lines), for a skip message."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        line
        for line in kept
        if "level=error" in line or "level=fatal" in line or not line.startswith("time=")
    ]
    chosen = errors[:lines] if errors else kept[-lines:]
    return " | ".join(chosen)[:1500] or "(empty log)"


def _mount_points_under(root: Path) -> list[Path]:
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            raw = line.split()[4]
            point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
            if point == root or point.is_relative_to(root):
                points.append(point)
    return points


def _pids_using(marker: str, cgroup: str) -> list[int]:
    """Processes whose command line names marker (containerd, shims) or that live in
    the cgroup (container processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if marker in cmdline or f"/{cgroup}/" in cgroups:
            pids.append(int(entry.name))
    return pids


def _listening_sockets(pids: list[int]) -> list[Path]:
    """The paths of the unix sockets these processes hold."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    paths = []
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                paths.append(Path(fields[7].lstrip("@")))
    return paths


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _remove_cgroups(name: str) -> list[str]:
    """Remove the cgroup `name` (and the containers' cgroups in it) from every hierarchy."""
    problems = []
    for top in [_CGROUP_ROOT / name, *_CGROUP_ROOT.glob(f"*/{name}")]:
        if not top.is_dir():
            continue
        # Children first; a cgroup whose last process just died may stay busy a moment.
        deadline = time.monotonic() + 2
        for directory, _, _ in os.walk(top, topdown=False):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        problems.append(f"cgroup {directory} kept: {exc.strerror}")
                        break
                    time.sleep(0.05)
    return problems


class PrivateDockerd:
    """A dockerd of our own, on a unix socket under a temporary directory.

    start() raises DockerUnavailable (with dockerd's own words) when it cannot run;
    stop() leaves nothing behind, whatever start() got to.
    """

    def __init__(self, dockerd: str) -> None:
        self.dockerd = dockerd
        base = tempfile.gettempdir()
        # containerd's sockets live under exec-root: unix socket paths are short.
        self.root = Path(tempfile.mkdtemp(prefix="talktuah-dockerd-", dir=base))
        if len(str(self.root)) > 40:
            self.root.rmdir()
            self.root = Path(tempfile.mkdtemp(prefix="talktuah-dockerd-", dir="/tmp"))
        self.cgroup_parent = self.root.name
        self.docker_host = f"unix://{self.root}/docker.sock"
        self.log = self.root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self._existed = {path: path.exists() for path in _FIXED_RUNTIME_DIRS}

    def command(self, *, key_path: bool = True) -> list[str]:
        config = self.root / "daemon.json"
        # Our own (near empty) configuration file: /etc/docker/daemon.json does not
        # apply, and dockerd 20.10's identity key is not written to /etc/docker.
        settings = {"deprecated-key-path": str(self.root / "key.json")} if key_path else {}
        config.write_text(json.dumps(settings))
        return [
            self.dockerd,
            f"--host={self.docker_host}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--config-file={config}",
            # Hands off the host's network: no rules, no forwarding, no docker0.
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            # The containers' cgroups under a parent that stop() removes.
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent=/{self.cgroup_parent}",
        ]

    def start(self, timeout: float = DOCKERD_START_TIMEOUT) -> Any:
        """Start dockerd and return a client once it answers."""
        try:
            self._spawn(key_path=True)
            self._wait(timeout)
        except DockerUnavailable:
            # Newer dockerd have no identity key, and may reject its setting.
            if "deprecated-key-path" not in _log_excerpt(self.log, 50):
                raise
            self._stop_process()
            self._spawn(key_path=False)
            self._wait(timeout)
        return self.client

    def _spawn(self, *, key_path: bool) -> None:
        search = os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
        )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(key_path=key_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: the terminal's Ctrl-C is for pytest; stop()
                # stops dockerd.
                start_new_session=True,
                env={**os.environ, "PATH": search},
            )

    def _wait(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise DockerUnavailable(
                    f"dockerd exited with code {self.process.returncode}: {_log_excerpt(self.log)}"
                )
            client = None
            try:
                client = docker.DockerClient(base_url=self.docker_host, timeout=30)
                client.ping()
            except (docker.errors.DockerException, OSError):
                if client is not None:
                    client.close()
                if time.monotonic() > deadline:
                    raise DockerUnavailable(
                        f"dockerd did not answer within {timeout:.0f} s: {_log_excerpt(self.log)}"
                    ) from None
                time.sleep(0.1)
                continue
            self.client = client
            return

    def stop(self) -> list[str]:
        """Stop everything and delete everything; returns what could not be cleaned."""
        problems: list[str] = []
        if self.client is not None:
            # A daemon of our own: every container is a test's.
            with contextlib.suppress(docker.errors.DockerException, OSError):
                for container in self.client.containers.list(all=True):
                    container.remove(force=True)
            self.client.close()
            self.client = None
        self._stop_process()
        # containerd and its shims normally exit with dockerd; if not (dockerd killed),
        # they are ours to kill, by pid.
        stragglers = _pids_using(str(self.root), self.cgroup_parent)
        # A killed shim leaves its socket in /run/containerd/s (a fixed place).
        shim_sockets = [
            path for path in _listening_sockets(stragglers) if path.parent == _SHIM_SOCKETS
        ]
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while stragglers and time.monotonic() < deadline:
            stragglers = [pid for pid in stragglers if _alive(pid)]
            time.sleep(0.05)
        if stragglers:
            problems.append(f"processes still running: {stragglers}")
        for path in shim_sockets:
            path.unlink(missing_ok=True)
        # Left by dockerd even after a clean shutdown: its default netns mount.
        libc = ctypes.CDLL(None, use_errno=True)
        for point in sorted(_mount_points_under(self.root), key=lambda p: -len(p.parts)):
            libc.umount2(str(point).encode(), _MNT_DETACH)
        if left := _mount_points_under(self.root):
            # Never delete through a mount point.
            problems.append(f"still mounted, {self.root} kept: {left}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
        for path in _FIXED_RUNTIME_DIRS:  # deepest first
            if not self._existed[path]:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty: another dockerd may use it
        problems += _remove_cgroups(self.cgroup_parent)
        return problems

    def _stop_process(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(DOCKERD_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _running_daemon() -> DockerDaemon | None:
    """The daemon DOCKER_HOST (else the local socket) names, if it answers."""
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except (docker.errors.DockerException, OSError):
        return None
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return DockerDaemon(client=client, docker_host=docker_host, private=False)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
        pytest.fail(f"no Docker daemon ({REQUIRE_DOCKER_ENV}=1): {reason}", pytrace=False)
    pytest.skip(f"no Docker daemon: {reason}")


@pytest.fixture(scope="session", name="docker_daemon")
def docker_daemon_fixture() -> Iterator[DockerDaemon]:
    """A real Docker daemon for the session: the running one, else a private dockerd.

    Skips (fails with TALKTUAH_REQUIRE_DOCKER=1) when there is none and dockerd is
    missing, we are not root, or dockerd does not start; the reason quotes dockerd.
    """
    running = _running_daemon()
    if running is not None:
        yield running
        _clean_shared_daemon(running)
        return
    dockerd = shutil.which("dockerd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if dockerd is None:
        _unavailable(
            "none answers at DOCKER_HOST or the local socket, and dockerd is not "
            "installed (apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        _unavailable("none answers, and starting dockerd takes root")
    private = PrivateDockerd(dockerd)
    started = time.monotonic()
    try:
        client = private.start()
    except DockerUnavailable as exc:
        private.stop()
        _unavailable(f"{dockerd} could not start: {exc}")
    except BaseException:
        private.stop()
        raise
    daemon = DockerDaemon(
        client=client,
        docker_host=private.docker_host,
        private=True,
        startup_seconds=time.monotonic() - started,
    )
    try:
        yield daemon
    finally:
        problems = private.stop()
        if problems:
            warnings.warn(f"the test dockerd left: {'; '.join(problems)}", stacklevel=1)


def _clean_shared_daemon(daemon: DockerDaemon) -> None:
    """On a daemon that is not ours: remove the tests' containers and image only."""
    client = daemon.client
    with contextlib.suppress(docker.errors.DockerException, OSError):
        for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
            container.remove(force=True)
        if daemon._image is not None:
            client.images.remove(daemon._image, force=True)
    client.close()
