"""A fake Docker Engine API on 127.0.0.1: the docker SDK's HTTP boundary, no daemon
needed.

    with FakeDockerAPI() as fake:
        fake.add_container("vllm", cmd=["--model", "A"])
        client = docker.DockerClient(base_url=fake.base_url)
        ...
        assert [r.operation for r in fake.requests] == ["inspect", "stop", ...]

The fake keeps containers in a dict and answers the calls the engine makes (version,
inspect, create, start, stop, restart, rename, remove, network connect) as dockerd
would, with dockerd's status codes and error bodies. (A real daemon, for the tests
that need one: `tests.private_dockerd`.)
"""

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

API_VERSION = "1.45"

# (method, path pattern without the /v1.xx prefix) -> operation name
_ROUTES = [
    ("GET", r"/_ping", "ping"),
    ("GET", r"/version", "version"),
    ("GET", r"/containers/(?P<ref>[^/]+)/json", "inspect"),
    ("POST", r"/containers/create", "create"),
    ("POST", r"/containers/(?P<ref>[^/]+)/start", "start"),
    ("POST", r"/containers/(?P<ref>[^/]+)/stop", "stop"),
    ("POST", r"/containers/(?P<ref>[^/]+)/restart", "restart"),
    ("POST", r"/containers/(?P<ref>[^/]+)/rename", "rename"),
    ("DELETE", r"/containers/(?P<ref>[^/]+)", "remove"),
    ("POST", r"/networks/(?P<ref>[^/]+)/connect", "connect"),
]


@dataclass
class Request:
    method: str
    path: str
    operation: str
    query: dict[str, str]
    body: Any
    ref: str | None = None


def vllm_container_attrs(
    name: str = "vllm",
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    running: bool = True,
) -> dict[str, Any]:
    """`docker inspect` of a GPU vLLM container as docker compose would create it."""
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    return {
        "Id": container_id,
        "Name": f"/{name}",
        "Image": "sha256:" + "ab" * 32,
        "State": {
            "Status": "running" if running else "exited",
            "Running": running,
            "ExitCode": 0,
        },
        "Config": {
            "Hostname": container_id[:12],
            "Image": "vllm/vllm-openai:v0.32.0",
            "Entrypoint": ["vllm", "serve"] if entrypoint is None else entrypoint,
            "Cmd": ["--model", "A", "--served-model-name", "A", "--port", "8000"]
            if cmd is None
            else cmd,
            "Env": ["HF_HOME=/models", "HF_HUB_OFFLINE=1", "PATH=/usr/local/bin:/usr/bin"],
            "ExposedPorts": {"8000/tcp": {}},
            "Labels": {"com.docker.compose.service": "vllm"},
            "Volumes": {"/root/.cache/vllm": {}},
            "WorkingDir": "/vllm-workspace",
        },
        "HostConfig": {
            "Binds": ["/srv/talktuah/models:/models:ro"],
            "NetworkMode": "talktuah_default",
            "PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8001"}]},
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "IpcMode": "host",
            "ShmSize": 8589934592,
            "DeviceRequests": [
                {
                    "Driver": "nvidia",
                    "Count": -1,
                    "DeviceIDs": None,
                    "Capabilities": [["gpu"]],
                    "Options": {},
                }
            ],
        },
        "Mounts": [
            {
                "Type": "bind",
                "Source": "/srv/talktuah/models",
                "Destination": "/models",
                "RW": False,
            },
            {
                "Type": "volume",
                "Name": "f00dcache" * 4,
                "Destination": "/root/.cache/vllm",
                "RW": True,
            },
        ],
        "NetworkSettings": {
            "Networks": {
                "talktuah_default": {
                    "Aliases": ["vllm", container_id[:12]],
                    "IPAMConfig": None,
                    "Links": None,
                    "NetworkID": "n" * 64,
                    "IPAddress": "172.18.0.3",
                }
            }
        },
    }


@dataclass
class FakeDockerAPI:
    """A fake dockerd on 127.0.0.1:<free port>, for docker.DockerClient(base_url=...)."""

    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # operation -> (status, message): the next such call fails with that error.
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"tcp://127.0.0.1:{self._server.server_address[1]}"

    def add_container(self, name: str = "vllm", **options: Any) -> dict[str, Any]:
        attrs = vllm_container_attrs(name, **options)
        self.containers[attrs["Id"]] = attrs
        return attrs

    def find(self, ref: str) -> dict[str, Any] | None:
        for attrs in self.containers.values():
            if ref in (attrs["Id"], attrs["Name"].lstrip("/")) or (
                len(ref) >= 12 and attrs["Id"].startswith(ref)
            ):
                return attrs
        return None

    def operations(self) -> list[str]:
        """The calls made so far, without the SDK's version handshake."""
        return [r.operation for r in self.requests if r.operation not in ("version", "ping")]

    def request(self, operation: str) -> Request:
        """The one call of that operation (fails if there were none or several)."""
        found = [r for r in self.requests if r.operation == operation]
        assert len(found) == 1, f"{operation}: {len(found)} calls in {self.operations()}"
        return found[0]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the API ---------------------------------------------------------------

    def _answer(self, request: Request) -> tuple[int, Any]:
        if request.operation in self.failures:
            status, message = self.failures.pop(request.operation)
            return status, {"message": message}
        if request.operation == "ping":
            return 200, "OK"
        if request.operation == "version":
            return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "27.5.1"}
        if request.operation == "create":
            return self._create(request)
        if request.operation == "connect":
            return 200, None
        attrs = self.find(request.ref or "")
        if attrs is None:
            return 404, {"message": f"No such container: {request.ref}"}
        state = attrs["State"]
        if request.operation == "inspect":
            return 200, attrs
        if request.operation in ("start", "restart"):
            state.update(Status="running", Running=True)
        elif request.operation == "stop":
            state.update(Status="exited", Running=False, ExitCode=0)
        elif request.operation == "rename":
            new_name = request.query["name"]
            if self.find(new_name) is not None:
                return 409, {"message": f'Conflict. The name "/{new_name}" is already in use.'}
            attrs["Name"] = f"/{new_name}"
        elif request.operation == "remove":
            if state["Running"] and request.query.get("force") not in ("1", "true", "True"):
                return 409, {"message": "You cannot remove a running container. Stop it first."}
            del self.containers[attrs["Id"]]
        return 204, None

    def _create(self, request: Request) -> tuple[int, Any]:
        name = request.query.get("name", "")
        if name and self.find(name) is not None:
            return 409, {"message": f'Conflict. The container name "/{name}" is already in use.'}
        body = copy.deepcopy(request.body)
        container_id = uuid.uuid4().hex + uuid.uuid4().hex
        host_config = body.pop("HostConfig", {})
        networking = body.pop("NetworkingConfig", None) or {}
        self.containers[container_id] = {
            "Id": container_id,
            "Name": f"/{name or container_id[:12]}",
            "State": {"Status": "created", "Running": False, "ExitCode": 0},
            "Config": body,
            "HostConfig": host_config,
            "Mounts": [],
            "NetworkSettings": {"Networks": networking.get("EndpointsConfig") or {}},
        }
        return 201, {"Id": container_id, "Warnings": []}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like dockerd

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                path = re.sub(r"^/v\d+\.\d+", "", url.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                for method, pattern, operation in _ROUTES:
                    match = re.fullmatch(pattern, path)
                    if method == self.command and match:
                        request = Request(
                            self.command, path, operation, query, body, match.groupdict().get("ref")
                        )
                        with fake._lock:
                            fake.requests.append(request)
                            status, payload = fake._answer(request)
                        break
                else:
                    status, payload = 404, {"message": f"page not found: {self.command} {path}"}
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        return Handler


# --- a real daemon ---------------------------------------------------------------
#
# The `docker_daemon` fixture gives the tests a real Docker daemon: the one that
# already answers (DOCKER_HOST, else the local socket), else a private dockerd that
# the fixture starts (as root) and tears down at the end of the session. The private
# one keeps to itself: its socket, data, exec root, pid file and configuration in a
# temporary directory, its containers' cgroups under a parent of their own, no
# iptables rules, no bridge (containers use network_mode="host"), and it removes
# everything when it stops (processes, mounts, directories, cgroups).

# Test containers carry this label: on a daemon that is not ours, the fixture removes
# only them.
