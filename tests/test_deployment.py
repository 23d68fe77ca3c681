"""The deployment users copy: docker-compose.yml and the Dockerfile, checked for what
the design promises (and by docker-compose itself where it is installed), and the
production settings that refuse to start without a SECRET_KEY."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_the_five_services_each_with_a_health_check(compose):
    services = compose["services"]
    assert set(services) == {"api", "worker", "vllm", "postgres", "redis"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_only_the_worker_gets_the_docker_socket(compose):
    for name, service in compose["services"].items():
        mounts = [str(v) for v in service.get("volumes", [])]
        has_socket = any("docker.sock" in m for m in mounts)
        assert has_socket == (name == "worker"), name
    assert compose["services"]["worker"]["environment"]["TALKTUAH_ENGINE"] == "docker"


def test_vllm_gets_the_gpu_shared_memory_and_the_shared_cache(compose):
    vllm = compose["services"]["vllm"]
    assert "vllm/vllm-openai:" in vllm["image"]
    assert vllm["ipc"] == "host"
    device = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # The image's entrypoint is `vllm serve`: the command carries only its arguments.
    assert vllm["command"][0] == "--model" and "vllm" not in vllm["command"]
    assert (
        vllm["container_name"]
        == compose["services"]["worker"]["environment"]["VLLM_CONTAINER_NAME"]
    )
    assert "HF_TOKEN" in vllm["environment"]
    cache_mounts = {
        name: [v for v in service.get("volumes", []) if str(v).startswith("hf-cache:")]
        for name, service in compose["services"].items()
    }
    # One cache volume at the same path in api, worker and vllm: a snapshot path the
    # worker downloads is a path vLLM can load.
    assert {m[0] for m in cache_mounts.values() if m} == {"hf-cache:/models/hf"}
    assert all(cache_mounts[name] for name in ("api", "worker", "vllm"))


def test_the_gateway_runs_several_workers_on_postgres_and_redis(compose):
    api = compose["services"]["api"]
    assert "--workers" in api["command"]
    env = api["environment"]
    assert env["DATABASE_URL"].startswith("postgres://")
    assert env["REDIS_URL"].startswith("redis://")
    assert env["PROMETHEUS_MULTIPROC_DIR"]
    assert env["DEBUG"] == "false"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file(tmp_path):
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "VLLM_MODEL": "org/model"}
    (tmp_path / ".env").write_text("SECRET_KEY=x\n")
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(REPO / "Dockerfile", tmp_path / "Dockerfile")
    result = subprocess.run(
        ["docker-compose", "-f", str(tmp_path / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_installs_the_runtime_pins_and_serves():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert 'CMD ["python", "manage.py", "serve"' in dockerfile
    for app in ("talktuah_site", "proxy", "modelmgr", "templates"):
        assert f"COPY {app} " in dockerfile


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env["DEBUG"] = "false"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr
    env["SECRET_KEY"] = "a-long-random-production-secret-for-the-test-only-" + "x7Qp" * 4
    env["ALLOWED_HOSTS"] = "gw.example.com"
    ok = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "CRITICAL"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "weak",
    [
        "x",
        "short-but-random-Zq8Vb1",
        "a" * 80,
        "talktuah-insecure-development-key-do-not-use-in-production",
        "django-insecure-" + "k3Y9" * 12,
    ],
)
def test_production_settings_refuse_a_weak_secret_key(weak):
    env = {**os.environ, "DEBUG": "false", "SECRET_KEY": weak, "ALLOWED_HOSTS": "gw.example.com"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SECRET_KEY is too weak for DEBUG off" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr


def test_a_weak_secret_key_is_fine_in_debug():
    env = {**os.environ, "DEBUG": "true", "SECRET_KEY": "dev"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_malformed_settings_are_refused_with_their_name():
    env = {**os.environ, "UPSTREAM_RETRY_SECONDS": "soon"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "UPSTREAM_RETRY_SECONDS must be a number" in result.stderr
