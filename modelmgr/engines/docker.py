"""The docker engine: the vLLM container, recreated with a new model (its command line
rewritten by `docker_args`) and otherwise the settings it had."""

import contextlib
import logging
import math
import shlex
from collections.abc import Iterator
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.utils  # type: ignore[import-untyped]

from backends.spec import EngineConfig
from modelmgr.engines.base import EngineState
from modelmgr.engines.docker_args import create_config, endpoints
from modelmgr.engines.vllm_args import args_with_model, model_from_args
from plumbing.errors import EngineError

logger = logging.getLogger(__name__)


class DockerEngine:
    """The vLLM container (VLLM_CONTAINER_NAME), recreated with a new model.

    Docker is found like the docker CLI does (DOCKER_HOST, else the local socket);
    tests inject a client.
    """

    name = "docker"
    read_only = False

    def __init__(self, config: EngineConfig, client: Any = None) -> None:
        self.config = config
        self._client = client

    @property
    def container_name(self) -> str:
        return self.config.container_name

    def serve(self, *, model: str, served_name: str) -> None:
        with self._docker() as client:
            attrs = self._inspect(client)
            entrypoint = attrs["Config"].get("Entrypoint") or []
            cmd = attrs["Config"].get("Cmd") or []
            timeout = self._stop_timeout()
            if model_from_args(entrypoint, cmd) == (model, served_name):
                logger.info("restarting container %s on model %s", self.container_name, model)
                client.api.restart(attrs["Id"], timeout=timeout)
                return
            new_cmd = args_with_model(entrypoint, cmd, model=model, served_name=served_name)
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
        model, served_name = model_from_args(
            attrs["Config"].get("Entrypoint") or [], attrs["Config"].get("Cmd") or []
        )
        found = attrs["State"]
        status = found.get("Status", "unknown")
        detail = f"container {self.container_name!r} ({attrs['Config'].get('Image')}) is {status}"
        if found.get("Health"):
            detail += f", health: {found['Health'].get('Status')}"
        exit_code = None
        if status in ("exited", "dead", "restarting"):
            exit_code = found.get("ExitCode")
            detail += (
                f" (it exited with code {exit_code})"
                if status == "restarting"
                else f" with code {exit_code}"
            )
        return EngineState(
            status == "running",
            model,
            served_name,
            detail,
            exit_code=exit_code,
            # A new container, or the same one started again (by its restart policy).
            incarnation=f"{attrs['Id'][:12]}@{found.get('StartedAt', '')}",
            # Its restart policy brings it back: Docker says "restarting" while it waits.
            restarts_itself=status == "restarting",
        )

    def _recreate(self, client: Any, attrs: dict[str, Any], cmd: list[str], timeout: int) -> None:
        name = self.container_name
        old_id = attrs["Id"]
        was_running = attrs["State"].get("Running", False)
        config = create_config(attrs, cmd)
        mode = attrs["HostConfig"].get("NetworkMode") or "default"
        other_networks = {net: ep for net, ep in endpoints(attrs).items() if net != mode}
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
        return max(0, math.ceil(self.config.stop_grace_seconds))

    @contextlib.contextmanager
    def _docker(self) -> Iterator[Any]:
        """A docker client; the SDK's exceptions come out as EngineError."""
        client = self._client
        # Where from_env() looks (the SDK reads DOCKER_HOST & co. itself), for messages.
        where = "the local Docker socket"
        with contextlib.suppress(docker.errors.DockerException):
            where = docker.utils.kwargs_from_env().get("base_url") or where
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
