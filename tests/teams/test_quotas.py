"""Token quotas over real sockets: 40 requests at once against a 600-token day are never
served more than 600 tokens, two worker processes share one quota (Redis), a stream cut
mid-way settles the tokens it used, the day resets at midnight in QUOTA_TIME_ZONE, a
team's quota binds its keys, /api/usage shows what is left, and settlements made while
Redis was away are applied once when it is back."""

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from modelmgr.auth import authenticate_key
from modelmgr.models import ApiKey, split_prefix
from proxy import quota
from teams.models import Team
from tests.gateway_process import GatewayProcess
from tests.net import free_port, redis_reachable
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)


def chat(tokens: int = 40, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "demo-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
    }


@pytest.fixture(autouse=True)
def _fresh_quotas() -> Iterator[None]:
    quota.forget()
    yield
    quota.forget()


@pytest.fixture
def quota_key(make_key: Callable[..., str]) -> Callable[..., str]:
    """A key with quotas (and a team): returns its plaintext."""

    def make(team: Team | None = None, **quotas: int | None) -> str:
        plaintext = make_key(name="quota", rpm_limit=100_000)
        ApiKey.objects.filter(prefix=split_prefix(plaintext)).update(team=team, **quotas)
        return plaintext

    return make


async def _parallel(url: str, key: str, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    # A connection each, so every request is in flight at once (and, with two workers,
    # both take some).
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, headers=headers, limits=limits) as client:
        return await asyncio.gather(
            *(client.post(f"{url}/v1/chat/completions", json=body) for _ in range(count))
        )


def served(answers: list[httpx.Response]) -> int:
    return sum(r.json()["usage"]["total_tokens"] for r in answers if r.status_code == 200)


def usage_quota(url: str, key: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/usage", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["quota"]


def test_40_parallel_requests_are_never_served_more_than_the_daily_quota(
    gateway, simulator, quota_key
):
    simulator(tokens=40, token_delay=0.005)
    key = quota_key(tokens_per_day=600)
    answers = asyncio.run(_parallel(gateway.url, key, 40, chat(tokens=40)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 5
    assert served(answers) <= 600
    refused = next(r for r in answers if r.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "daily_token_quota_exceeded"
    assert "600 tokens a day" in error["message"] and "resets at" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    # Settled to the real usage: what /api/usage says is what was served.
    (day,) = usage_quota(gateway.url, key)
    assert (day["scope"], day["period"], day["limit"]) == ("key", "day", 600)
    assert day["used"] == served(answers)
    assert day["remaining"] == 600 - served(answers)


@pytest.mark.skipif(not redis_reachable(), reason="needs Redis on 127.0.0.1:6379")
def test_two_workers_share_one_quota_through_redis(quota_key, tmp_path):
    key = quota_key(tokens_per_day=600)
    prefix = f"talktuah-test-{os.getpid()}-{time.monotonic_ns()}"
    with SimulatorProcess(tokens=40, token_delay=0.005) as sim:
        env = {
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "CACHE_KEY_PREFIX": prefix,
            "VLLM_BASE_URL": sim.url,
            "TALKTUAH_VAR_DIR": str(tmp_path),
            "ACCESS_LOG": "false",
            "USAGE_FLUSH_SECONDS": "0",
        }
        with GatewayProcess(workers=2, env=env) as server:
            first = asyncio.run(_parallel(server.url, key, 40, chat(tokens=40)))
            second = asyncio.run(_parallel(server.url, key, 40, chat(tokens=40)))
            # Then one at a time, until the next reservation no longer fits.
            last = [asyncio.run(_parallel(server.url, key, 1, chat(tokens=40)))[0]]
            while last[-1].status_code == 200:
                last += asyncio.run(_parallel(server.url, key, 1, chat(tokens=40)))
            (day,) = usage_quota(server.url, key)
    answers = first + second + last
    assert {r.status_code for r in answers} <= {200, 429}
    total = served(answers)
    assert total <= 600
    assert served(first) and served(second)
    # Short of the quota by less than one more request's reservation (its prompt's
    # estimate and 40).
    assert total > 600 - 90, total
    assert day["used"] == total


def test_a_stream_cut_mid_way_settles_the_tokens_it_used(gateway, simulator, quota_key):
    simulator(tokens=400, token_delay=0.02, max_model_len=2048)
    key = quota_key(tokens_per_day=1000)
    headers = {"Authorization": f"Bearer {key}"}
    events = 0
    with httpx.Client(timeout=30, headers=headers) as client:
        body = chat(tokens=400, stream=True)
        with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events += 1
                if events == 10:
                    break
        # While it ran, its reservation (its prompt's estimate + 400) was held.
    deadline = time.monotonic() + 10
    while True:
        (day,) = usage_quota(gateway.url, key)
        if day["used"] < 400 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # Its prompt's estimate (the body over four, about 30) and the events relayed
    # before vLLM stopped: not the 400 it asked for, nor nothing.
    assert 10 <= day["used"] < 120, day
    assert day["remaining"] == 1000 - day["used"]


def test_the_day_resets_at_midnight_in_the_quota_time_zone(
    gateway, simulator, quota_key, settings, monkeypatch
):
    simulator(tokens=50, token_delay=0.001)
    settings.QUOTA_TIME_ZONE = "Europe/Berlin"
    key = quota_key(tokens_per_day=100)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.url}/v1/chat/completions"
    # 23:59:30 in Berlin (UTC+1 in January).
    now = datetime(2026, 1, 15, 22, 59, 30, tzinfo=UTC)
    monkeypatch.setattr(quota, "clock", lambda: now)
    assert httpx.post(url, json=chat(tokens=50), headers=headers).status_code == 200
    refused = httpx.post(url, json=chat(tokens=50), headers=headers)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    assert "2026-01-16 00:00 CET" in refused.json()["error"]["message"]
    now = datetime(2026, 1, 15, 23, 0, 1, tzinfo=UTC)  # 00:00:01 on the 16th, in Berlin
    assert httpx.post(url, json=chat(tokens=50), headers=headers).status_code == 200
    (day,) = usage_quota(gateway.url, key)
    assert day["resets_at"] == "2026-01-17T00:00:00+01:00"
    assert day["time_zone"] == "Europe/Berlin"


def test_a_team_quota_binds_every_key_in_it(gateway, simulator, quota_key):
    simulator(tokens=40, token_delay=0.001)
    team = Team.objects.create(name="research", tokens_per_day=150)
    first, second = quota_key(team=team), quota_key(team=team)
    url = f"{gateway.url}/v1/chat/completions"
    spent = 0
    for _ in range(10):
        answer = httpx.post(url, json=chat(tokens=40), headers={"Authorization": f"Bearer {first}"})
        if answer.status_code != 200:
            break
        spent += answer.json()["usage"]["total_tokens"]
    assert 0 < spent <= 150
    refused = httpx.post(url, json=chat(tokens=40), headers={"Authorization": f"Bearer {second}"})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "team_daily_token_quota_exceeded"
    assert "team 'research'" in error["message"]
    (team_day,) = usage_quota(gateway.url, second)
    assert team_day["team"] == "research" and team_day["used"] == spent
    # Tokens per team on /metrics.
    assert REGISTRY.get_sample_value("talktuah_team_tokens_total", {"team": "research"}) >= spent
    # Another key outside the team is not bound.
    outside = quota_key(tokens_per_day=1000)
    ok = httpx.post(url, json=chat(tokens=40), headers={"Authorization": f"Bearer {outside}"})
    assert ok.status_code == 200


def test_a_key_quota_and_the_team_default_for_keys_apply_on_top_of_the_team(quota_key):
    team = Team.objects.create(name="ops", tokens_per_month=10_000, key_tokens_per_day=500)
    principal = asyncio.run(authenticate_key(quota_key(team=team)))
    assert principal.quota.key_per_day == 500  # the team's default for its keys
    assert principal.quota.team_per_month == 10_000
    own = asyncio.run(authenticate_key(quota_key(team=team, tokens_per_day=50)))
    assert own.quota.key_per_day == 50
    buckets = quota.buckets_of(own, datetime(2026, 3, 31, 12, tzinfo=UTC))
    assert [(b.scope, b.window.period, b.limit) for b in buckets] == [
        ("key", "day", 50),
        ("team", "month", 10_000),
    ]


def test_a_windows_count_starts_from_the_usage_table(gateway, simulator, quota_key):
    from django.utils import timezone

    from modelmgr.models import UsageDaily

    simulator(tokens=40, token_delay=0.001)
    key = quota_key(tokens_per_day=500)
    UsageDaily.objects.create(
        key_prefix=split_prefix(key),
        key_name="quota",
        model="demo-model",
        day=timezone.now().date(),
        requests=3,
        prompt_tokens=100,
        completion_tokens=380,
    )
    # 480 of 500 spent before a restart: the next request's reservation does not fit.
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=chat(tokens=40),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 429
    assert usage_quota(gateway.url, key)[0]["used"] == 480


@pytest.mark.skipif(not redis_reachable(), reason="needs Redis on 127.0.0.1:6379")
def test_settlements_kept_while_redis_was_away_are_applied_once_when_it_is_back(
    quota_key, settings
):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.CACHE_KEY_PREFIX = f"talktuah-test-{os.getpid()}-{time.monotonic_ns()}"
    settings.RATELIMIT_FAIL_OPEN = True
    principal = asyncio.run(authenticate_key(quota_key(tokens_per_day=1000)))
    working = settings.REDIS_URL

    async def scenario() -> list[int]:
        seen = []
        held = await quota.reserve(principal, body=chat(tokens=100), size=40)  # 110
        seen.append((await quota.status(principal))[0]["used"])
        settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # Redis goes away
        # Let through unreserved (fail open), and settled into the journal.
        unheld = await quota.reserve(principal, body=chat(tokens=100), size=40)
        await quota.settle(principal, held, tokens=30)
        await quota.settle(principal, unheld, tokens=70)
        seen.append(len(quota._journal))
        settings.REDIS_URL = working  # back
        seen.append(await quota.drain())
        seen.append((await quota.status(principal))[0]["used"])
        # A settlement applied again (its reply lost, the journal replayed) counts once.
        assert held is not None
        quota._journal_add(quota._Settlement(held.id, held.names, 30))
        await quota.drain()
        seen.append((await quota.status(principal))[0]["used"])
        return seen

    assert asyncio.run(scenario()) == [110, 2, 2, 100, 100]


def test_it_refuses_with_503_while_redis_is_away_when_failing_closed(quota_key, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.RATELIMIT_FAIL_OPEN = False
    principal = asyncio.run(authenticate_key(quota_key(tokens_per_day=1000)))
    from plumbing.errors import RateLimiterUnavailable

    with pytest.raises(RateLimiterUnavailable):
        asyncio.run(quota.reserve(principal, body=chat(), size=40))


def test_a_reservation_dropped_unsettled_is_released(quota_key, settings):
    settings.REDIS_URL = ""
    principal = asyncio.run(authenticate_key(quota_key(tokens_per_day=1000)))

    async def scenario() -> tuple[int, int]:
        held = await quota.reserve(principal, body=chat(tokens=100), size=40)
        during = (await quota.status(principal))[0]["used"]
        del held  # a request cancelled before its answer began
        return during, (await quota.status(principal))[0]["used"]

    assert asyncio.run(scenario()) == (110, 0)
