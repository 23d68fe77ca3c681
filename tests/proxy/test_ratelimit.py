"""Per-key limits: 429 with Retry-After, in one process and across two uvicorn worker
processes sharing the real Redis."""

import os
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from proxy.ratelimit import outage
from tests.gateway_process import GatewayProcess
from tests.net import free_port, redis_reachable

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}


def away_from_window_edges() -> None:
    """Sleep past the end of the minute when it is near: a test that crosses it would
    see the counts (requests and tokens: whole-minute windows) reset and admit twice the
    limit."""
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.5)


def test_it_answers_429_with_retry_after_past_the_rpm_limit(gateway, simulator, make_key):
    simulator()
    key = make_key(rpm_limit=3)
    away_from_window_edges()
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
    away_from_window_edges()
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200
    assert httpx.post(url, json=CHAT, headers=headers).status_code == 200  # now over 25
    refused = httpx.post(url, json=CHAT, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "token_limit_exceeded"
    assert "retry-after" in refused.headers


@pytest.mark.skipif(not redis_reachable(), reason="needs Redis on 127.0.0.1:6379")
def test_two_workers_sharing_redis_admit_exactly_the_limit(simulator, make_key, tmp_path):
    sim = simulator()
    key = make_key(rpm_limit=5)
    away_from_window_edges()
    prefix = f"talktuah-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "CACHE_KEY_PREFIX": prefix,
        "VLLM_BASE_URL": sim.url,
        "TALKTUAH_VAR_DIR": str(tmp_path),
    }
    with GatewayProcess(workers=2, env=env) as server:
        url = server.url
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


@pytest.fixture
def redis_away(settings):
    """Redis (the counts and the cache) is on a port where nothing listens (connection
    refused)."""
    working = settings.REDIS_URL, settings.CACHES
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    outage.since = None  # a fresh outage for this test's log lines
    yield
    outage.since = None
    # Before the autouse teardown clears the cache.
    settings.REDIS_URL, settings.CACHES = working


def bypassed(limit: str) -> float:
    return REGISTRY.get_sample_value("talktuah_rate_limit_bypassed_total", {"limit": limit}) or 0.0


def test_it_lets_requests_through_unlimited_while_redis_is_away_and_warns_once(
    gateway, simulator, make_key, redis_away, settings, caplog
):
    # Before: every request was a 500 (redis-py's ConnectionError reached the handler).
    simulator()
    settings.RATELIMIT_FAIL_OPEN = True
    headers = {"Authorization": f"Bearer {make_key(rpm_limit=2, tpm_limit=1)}"}
    before = bypassed("requests"), bypassed("tokens")
    with caplog.at_level("WARNING", logger="proxy.ratelimit"):
        statuses = [
            httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers).status_code
            for _ in range(5)
        ]
    assert statuses == [200] * 5  # past both limits, but nothing can count them
    assert bypassed("requests") - before[0] == 5
    assert bypassed("tokens") - before[1] == 5
    warnings = [r for r in caplog.records if r.name == "proxy.ratelimit"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "let through without limits" in warnings[0].getMessage()


def test_it_refuses_with_503_while_redis_is_away_when_told_to_fail_closed(
    gateway, simulator, make_key, redis_away, settings
):
    simulator()
    settings.RATELIMIT_FAIL_OPEN = False
    headers = {"Authorization": f"Bearer {make_key()}"}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "rate_limiter_unavailable"
