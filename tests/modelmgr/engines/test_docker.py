"""The docker engine (modelmgr.engines.docker): at the docker SDK's HTTP boundary (a
fake Docker API) and, when a Docker daemon is reachable, for real, the worker's
supervision of a container included."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]
import httpx
import pytest

from backends.spec import EngineConfig
from modelmgr.engines import DockerEngine
from modelmgr.models import ModelSwitch, SwitchKind, SwitchPhase
from plumbing.errors import EngineError
from tests.fake_docker_api import FakeDockerAPI
from tests.gateway_process import database_url
from tests.net import free_port, port_is_free
from tests.private_dockerd import (
    HOST_IMAGE,
    TEST_LABEL,
    DockerDaemon,
    docker_daemon_fixture,  # noqa: F401 (the `docker_daemon` fixture)
    host_python,
)
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_docker(settings: Any) -> Iterator[FakeDockerAPI]:
    settings.VLLM_CONTAINER_NAME = "vllm"
    settings.ENGINE_STOP_GRACE_SECONDS = 7
    with FakeDockerAPI() as fake:
        yield fake


def docker_engine(fake: FakeDockerAPI) -> DockerEngine:
    return DockerEngine(
        EngineConfig.from_settings(), client=docker.DockerClient(base_url=fake.base_url)
    )


def test_it_recreates_the_container_with_the_new_model(fake_docker: FakeDockerAPI) -> None:
    old = fake_docker.add_container("vllm")
    docker_engine(fake_docker).serve(model="B", served_name="B")

    assert fake_docker.operations() == ["inspect", "stop", "rename", "create", "start", "remove"]
    assert fake_docker.request("stop").query == {"t": "7"}
    assert fake_docker.request("rename").query == {"name": f"vllm-replaced-{old['Id'][:12]}"}
    assert fake_docker.request("remove").ref == old["Id"]
    create = fake_docker.request("create")
    assert create.query == {"name": "vllm"}
    body, host = create.body, create.body["HostConfig"]
    assert body["Image"] == "vllm/vllm-openai:v0.32.0"
    assert body["Entrypoint"] == ["vllm", "serve"]
    assert body["Cmd"] == ["--model", "B", "--served-model-name", "B", "--port", "8000"]
    assert body["Env"] == old["Config"]["Env"]
    assert body["Labels"] == old["Config"]["Labels"]
    assert body["ExposedPorts"] == {"8000/tcp": {}}
    assert "Hostname" not in body  # the old container's id
    assert host["DeviceRequests"] == old["HostConfig"]["DeviceRequests"]
    assert host["PortBindings"] == old["HostConfig"]["PortBindings"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["IpcMode"] == "host"
    assert host["ShmSize"] == 8589934592
    assert host["NetworkMode"] == "talktuah_default"
    # The bind mount, and the anonymous cache volume by its name.
    assert host["Binds"] == [
        "/srv/talktuah/models:/models:ro",
        f"{'f00dcache' * 4}:/root/.cache/vllm",
    ]
    assert body["NetworkingConfig"] == {
        "EndpointsConfig": {"talktuah_default": {"Aliases": ["vllm"]}}
    }
    assert fake_docker.request("start").ref != old["Id"]

    state = docker_engine(fake_docker).state()
    assert (state.running, state.model, state.served_name) == (True, "B", "B")
    assert "vllm/vllm-openai:v0.32.0" in state.detail


def test_it_reconnects_the_other_networks(fake_docker: FakeDockerAPI) -> None:
    old = fake_docker.add_container("vllm")
    old["NetworkSettings"]["Networks"]["monitoring"] = {
        "Aliases": ["vllm-metrics", old["Id"][:12]],
        "IPAMConfig": {"IPv4Address": "10.9.0.5"},
    }
    docker_engine(fake_docker).serve(model="B", served_name="B")
    # Docker before API 1.44 takes one network at create time: the others are connected.
    assert fake_docker.operations()[3:6] == ["create", "connect", "start"]
    assert list(fake_docker.request("create").body["NetworkingConfig"]["EndpointsConfig"]) == [
        "talktuah_default"
    ]
    connect = fake_docker.request("connect")
    assert connect.ref == "monitoring"
    assert connect.body["EndpointConfig"]["Aliases"] == ["vllm-metrics"]
    assert connect.body["EndpointConfig"]["IPAMConfig"]["IPv4Address"] == "10.9.0.5"


def test_it_only_restarts_when_the_model_is_unchanged(fake_docker: FakeDockerAPI) -> None:
    old = fake_docker.add_container("vllm")
    docker_engine(fake_docker).serve(model="A", served_name="A")
    assert fake_docker.operations() == ["inspect", "restart"]
    assert fake_docker.request("restart").ref == old["Id"]
    assert fake_docker.request("restart").query == {"t": "7"}


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "expected"),
    [
        # vllm serve MODEL (the positional style of `vllm serve`)
        (
            ["vllm", "serve"],
            ["A", "--port", "8000"],
            ["B", "--port", "8000", "--served-model-name", "b"],
        ),
        (
            None,
            ["vllm", "serve", "A", "--served-model-name", "a", "alias"],
            ["vllm", "serve", "B", "--served-model-name", "b"],
        ),
        (
            ["vllm", "serve"],
            ["--port", "8000"],
            ["B", "--port", "8000", "--served-model-name", "b"],
        ),
        # the older api_server entrypoint, and = forms
        (
            ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            ["--model=A", "--served_model_name=a"],
            ["--model=B", "--served_model_name=b"],
        ),
        (
            ["python3", "-m", "vllm.entrypoints.openai.api_server"],
            ["--port", "8000"],
            ["--port", "8000", "--model", "B", "--served-model-name", "b"],
        ),
    ],
)
def test_it_replaces_the_model_in_any_style_of_arguments(
    fake_docker: FakeDockerAPI, entrypoint: list[str] | None, cmd: list[str], expected: list[str]
) -> None:
    fake_docker.add_container("vllm", entrypoint=entrypoint or [], cmd=cmd)
    docker_engine(fake_docker).serve(model="B", served_name="b")
    assert fake_docker.request("create").body["Cmd"] == expected
    assert docker_engine(fake_docker).state().model == "B"


def test_it_puts_the_old_container_back_when_docker_refuses_the_new_one(
    fake_docker: FakeDockerAPI,
) -> None:
    old = fake_docker.add_container("vllm")
    fake_docker.failures["create"] = (500, "could not select device driver nvidia")
    with pytest.raises(EngineError, match="could not select device driver nvidia"):
        docker_engine(fake_docker).serve(model="B", served_name="B")
    assert fake_docker.operations()[-2:] == ["rename", "start"]
    assert fake_docker.find("vllm") is old
    assert old["State"]["Running"] is True


def test_it_stops_the_container_with_the_grace_period(fake_docker: FakeDockerAPI) -> None:
    fake_docker.add_container("vllm")
    engine = docker_engine(fake_docker)
    engine.stop()
    assert fake_docker.operations() == ["inspect", "stop"]
    assert fake_docker.request("stop").query == {"t": "7"}
    state = engine.state()
    assert (state.running, state.model) == (False, "A")
    assert "exited" in state.detail


def test_it_names_the_missing_container(settings: Any, fake_docker: FakeDockerAPI) -> None:
    settings.VLLM_CONTAINER_NAME = "vllm-gpu0"
    fake_docker.add_container("vllm")
    with pytest.raises(EngineError, match="no Docker container 'vllm-gpu0'"):
        docker_engine(fake_docker).serve(model="B", served_name="B")
    with pytest.raises(EngineError, match="vllm-gpu0"):
        docker_engine(fake_docker).stop()
    assert docker_engine(fake_docker).state().running is False


def test_it_says_docker_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"tcp://127.0.0.1:{free_port()}"
    # A client made earlier (its API version known): every call is refused.
    engine = DockerEngine(
        EngineConfig.from_settings(),
        client=docker.DockerClient(base_url=closed, version="1.45"),
    )
    with pytest.raises(EngineError, match="Docker is unreachable"):
        engine.serve(model="B", served_name="B")
    with pytest.raises(EngineError, match="Docker is unreachable"):
        engine.state()
    # From the environment, as in production.
    monkeypatch.setenv("DOCKER_HOST", closed)
    with pytest.raises(EngineError, match=f"Docker is unreachable at {closed}"):
        DockerEngine(EngineConfig.from_settings()).state()


# --- the docker engine for real ---------------------------------------------------
#
# The simulator in a container, as vLLM runs in production: an image of this host's
# libraries (`docker import`, no registry), the host's Python, venv and repo mounted
# read-only, host networking. Needs a Docker daemon (the running one, else a private
# dockerd started as root; see tests.private_dockerd), else skipped.


def container_models(client: Any, name: str, port: int) -> list[dict[str, Any]] | None:
    """/v1/models' data, None while nothing answers; fails (with the logs) if the
    container stopped."""
    try:
        return list(httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0).json()["data"])
    except httpx.TransportError:
        attrs = client.api.inspect_container(name)
        # (Its restart policy would start it again: a restart is a failure too.)
        state = attrs["State"]
        assert state["Running"] and not state["Restarting"] and attrs["RestartCount"] == 0, (
            f"container {name} exited with code {state['ExitCode']}: "
            + client.api.logs(name).decode(errors="replace")[-2000:]
        )
        return None


def wait_until_container_serves(
    client: Any, name: str, port: int, model: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        models = container_models(client, name, port)
        if models is not None and [entry["id"] for entry in models] == [model]:
            return models[0]
        assert time.monotonic() < deadline, f"{model} not served on :{port}, but {models}"
        time.sleep(0.05)


def test_it_switches_a_real_vllm_container(
    docker_daemon: DockerDaemon, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not docker_daemon.local:
        pytest.skip(f"the Docker daemon at {docker_daemon.docker_host} is not on this host")
    client = docker_daemon.client
    # DockerEngine finds Docker as in production: from the environment.
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.docker_host)
    name = f"talktuah-test-vllm-{uuid.uuid4().hex[:8]}"
    settings.VLLM_CONTAINER_NAME = name
    settings.ENGINE_STOP_GRACE_SECONDS = 5
    python = host_python()
    port = free_port()
    entrypoint = [python.executable, python.manage, "vllm_simulator"]
    env = ["TALKTUAH_VAR_DIR=/tmp/talktuah", "PYTHONDONTWRITEBYTECODE=1", "HF_HOME=/models"]
    client.api.create_container(
        docker_daemon.host_image(),
        entrypoint=entrypoint,
        command=["--model", "A", "--port", str(port)],
        environment=env,
        labels={TEST_LABEL: "1"},
        name=name,
        host_config=client.api.create_host_config(
            binds=python.binds,
            network_mode="host",
            restart_policy={"Name": "unless-stopped"},
            ipc_mode="host",
            shm_size="64m",
        ),
    )
    engine = DockerEngine(EngineConfig.from_settings())
    try:
        client.api.start(name)
        wait_until_container_serves(client, name, port, "A")
        state = engine.state()
        assert (state.running, state.model, state.served_name) == (True, "A", "A")
        old = client.api.inspect_container(name)

        engine.serve(model="org/model-b", served_name="model-b")
        served = wait_until_container_serves(client, name, port, "model-b")
        assert served["root"] == "org/model-b"

        attrs = client.api.inspect_container(name)
        assert attrs["Id"] != old["Id"]
        assert attrs["Config"]["Cmd"] == [
            "--model",
            "org/model-b",
            "--port",
            str(port),
            "--served-model-name",
            "model-b",
        ]
        assert attrs["Config"]["Entrypoint"] == entrypoint
        assert attrs["Config"]["Image"] == HOST_IMAGE
        assert set(env) <= set(attrs["Config"]["Env"])
        assert attrs["Config"]["Labels"] == {TEST_LABEL: "1"}
        host_config = attrs["HostConfig"]
        assert host_config["NetworkMode"] == "host"
        assert host_config["Binds"] == python.binds
        assert sorted((m["Source"], m["Destination"], m["RW"]) for m in attrs["Mounts"]) == [
            (str(path), str(path), False) for path in sorted(python.mounts)
        ]
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
        assert host_config["IpcMode"] == "host"
        assert host_config["ShmSize"] == 64 * 1024 * 1024
        state = engine.state()
        assert (state.running, state.model, state.served_name) == (True, "org/model-b", "model-b")
        assert [c.name for c in client.containers.list(all=True, filters={"name": name})] == [name]

        # The same model again: a restart of the same container, not a recreation.
        engine.serve(model="org/model-b", served_name="model-b")
        assert client.api.inspect_container(name)["Id"] == attrs["Id"]
        wait_until_container_serves(client, name, port, "model-b")

        started = time.monotonic()
        engine.stop()
        # The simulator, PID 1 in its container, exits on SIGTERM: no SIGKILL needed.
        assert time.monotonic() - started < 5
        assert client.api.inspect_container(name)["State"]["ExitCode"] == 0
        assert port_is_free(port)
        assert engine.state().running is False
    finally:
        for container in client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


# --- the worker supervising a real vLLM container ----------------------------------------


def engine_rows(kind: str) -> list[ModelSwitch]:
    return list(ModelSwitch.objects.filter(kind=kind).order_by("created_at"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("docker_policy", "restarted_by"),
    [("no", "supervisor (attempt 1)"), ("on-failure", "docker (by itself)")],
    ids=["the-worker-restarts-it", "docker-restarts-it"],
)
def test_the_worker_restarts_a_crashed_container_once(
    docker_daemon: DockerDaemon, tmp_path: Any, docker_policy: str, restarted_by: str
) -> None:
    if not docker_daemon.local:
        pytest.skip(f"the Docker daemon at {docker_daemon.docker_host} is not on this host")
    client = docker_daemon.client
    name = f"talktuah-test-vllm-{uuid.uuid4().hex[:8]}"
    python = host_python()
    port = free_port()
    client.api.create_container(
        docker_daemon.host_image(),
        entrypoint=[python.executable, python.manage, "vllm_simulator"],
        command=["--model", "A", "--port", str(port)],
        environment=["TALKTUAH_VAR_DIR=/tmp/talktuah", "PYTHONDONTWRITEBYTECODE=1"],
        labels={TEST_LABEL: "1"},
        name=name,
        host_config=client.api.create_host_config(
            binds=python.binds, network_mode="host", restart_policy={"Name": docker_policy}
        ),
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DOCKER_HOST": docker_daemon.docker_host,
        "TALKTUAH_VAR_DIR": str(tmp_path),
        "TALKTUAH_ENGINE": "docker",
        "VLLM_CONTAINER_NAME": name,
        "VLLM_BASE_URL": f"http://127.0.0.1:{port}",
        "ENGINE_STOP_GRACE_SECONDS": "2",
        "ENGINE_CHECK_SECONDS": "0.2",
        "ENGINE_RESTART_BACKOFF_SECONDS": "0.5",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
    }
    worker = None
    try:
        client.api.start(name)
        wait_until_served_by(port, "A")
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "manage.py", "run_worker", "--poll", "0.1"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: "watching vLLM" in (tmp_path / "worker.log").read_text(),
            timeout=30,
            message="the worker to watch the container",
        )
        time.sleep(0.5)  # and to see it healthy
        first = client.api.inspect_container(name)["State"]
        os.kill(first["Pid"], signal.SIGKILL)  # vLLM dies in its container

        [crash] = wait_for(lambda: engine_rows(SwitchKind.CRASH), timeout=15, message="a crash")
        assert crash.to_model == "A"
        [restart] = wait_for(
            lambda: [r for r in engine_rows(SwitchKind.RESTART) if r.phase == SwitchPhase.READY],
            timeout=30,
            message="the restart",
        )
        assert restart.requested_by == restarted_by, (crash.error, restart.error)
        wait_until_served_by(port, "A")
        state = client.api.inspect_container(name)["State"]
        assert state["Running"] and state["StartedAt"] != first["StartedAt"]
        time.sleep(1)  # restarted once, by one of them, not by both
        assert len(engine_rows(SwitchKind.RESTART)) == 1
        assert len(engine_rows(SwitchKind.CRASH)) == 1
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(20)
        for container in client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


def wait_until_served_by(port: int, model: str, timeout: float = 30.0) -> None:
    def served() -> bool:
        try:
            listed = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json()
        except (httpx.TransportError, ValueError):
            return False
        return [entry["id"] for entry in listed["data"]] == [model]

    wait_for(served, timeout=timeout, message=f"{model} on :{port}")
