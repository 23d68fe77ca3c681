"""Per-key limits: 429 with Retry-After, in one process and across two uvicorn worker
processes sharing the real Redis."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.simulator_process import free_port

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}
REPO = Path(__file__).resolve().parents[2]


def test_it_answers_429_with_retry_after_past_the_rpm_limit(gateway, simulator, make_key):
    simulator()
    key = make_key(rpm_limit=3)
    headers = {"Authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers).status_code
        for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    limited = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["error"]["type"] == "rate_limit_error"
    # Another key has its own budget.
    other = {"Authorization": f"Bearer {make_key()}"}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=other).is_success


def test_it_refuses_requests_past_the_token_limit(gateway, simulator, make_key):
    simulator(tokens=10)
    key = make_key(tpm_limit=25)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200  # now over 25
    refused = httpx.post(url, json=CHAT, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "token_limit_exceeded"
    assert "retry-after" in refused.headers


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/0").ping())
    except redis.RedisError:
        return False


def database_url() -> str:
    settings_dict = connection.settings_dict
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    return (
        f"postgres://{settings_dict['USER'] or ''}@{settings_dict['HOST'] or '127.0.0.1'}:"
        f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
    )


@pytest.mark.skipif(not redis_available(), reason="needs Redis on 127.0.0.1:6379")
def test_two_workers_sharing_redis_admit_exactly_the_limit(simulator, make_key):
    sim = simulator()
    key = make_key(rpm_limit=5)
    port = free_port()
    prefix = f"talktuah-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "CACHE_KEY_PREFIX": prefix,
        "VLLM_BASE_URL": sim.url,
        "DJANGO_SETTINGS_MODULE": "talktuah_site.settings",
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "talktuah_site.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-access-log",
            "--log-level", "warning",
        ],
        cwd=REPO,
        env=env,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        statuses = []
        # Fresh connections, so both worker processes take requests.
        for _ in range(12):
            with httpx.Client(timeout=10) as client:
                statuses.append(
                    client.post(
                        f"{url}/v1/chat/completions", json=CHAT, headers=headers
                    ).status_code
                )
        assert statuses.count(200) == 5, statuses
        assert statuses.count(429) == 7
    finally:
        server.terminate()
        server.wait(10)
