"""Redis down during traffic: a gateway process uses a private redis-server as its
cache (REDIS_URL), and that server is stopped while 4 clients send requests, then
started again. With RATELIMIT_FAIL_OPEN (the default) requests keep flowing, unlimited
(no 5xx), counted by talktuah_rate_limit_bypassed_total, with a warning in the log
that is itself rate-limited; once Redis is back, a 3/minute key admits exactly 3 of 5."""

import re
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.faults.conftest import report
from tests.gateway_process import GatewayProcess
from tests.private_services import PrivateRedis
from tests.proxy.test_ratelimit import CHAT, away_from_window_edges
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 4
PHASE_SECONDS = {"before": 3.0, "down": 6.0, "back": 3.0}


class Traffic:
    """CLIENTS threads sending chat completions until stopped; statuses per phase."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.phase = "before"
        self.statuses: dict[str, Counter[int | str]] = {p: Counter() for p in PHASE_SECONDS}
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=15) as client:
            while not self.stopping.is_set():
                phase = self.phase
                try:
                    status: int | str = client.post(
                        "/v1/chat/completions", json=CHAT, headers=headers
                    ).status_code
                except httpx.TimeoutException:
                    status = "hang"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.statuses[phase][status] += 1

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def bypassed(gateway: GatewayProcess) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(
        float(value)
        for value in re.findall(r"^talktuah_rate_limit_bypassed_total\{[^}]*\} (\S+)$", text, re.M)
    )


def five_statuses(gateway: GatewayProcess, key: str) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.url, timeout=15) as client:
        return [
            client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code
            for _ in range(5)
        ]


@pytest.mark.timeout(180)
def test_the_rate_limit_fails_open_while_redis_is_down_and_is_exact_again_after(make_key, tmp_path):
    traffic_key = make_key(name="redis-traffic", rpm_limit=1_000_000)
    during_key = make_key(name="redis-during", rpm_limit=3)
    after_key = make_key(name="redis-after", rpm_limit=3)
    log = tmp_path / "gateway.log"
    with (
        PrivateRedis() as redis_server,
        SimulatorProcess(tokens=4, token_delay=0.001) as sim,
        GatewayProcess(
            env={
                "REDIS_URL": redis_server.url,
                "VLLM_BASE_URL": sim.url,
                "ACCESS_LOG": "false",
                "SHUTDOWN_DRAIN_SECONDS": "0",
            },
            log=log,
        ) as gateway,
    ):
        with Traffic(gateway.url, traffic_key) as traffic:
            time.sleep(PHASE_SECONDS["before"])
            # Stopped first: requests answered while redis-server shuts down were still
            # counted, and are not the outage's.
            redis_server.stop()
            traffic.phase = "down"
            time.sleep(PHASE_SECONDS["down"] / 2)
            during = five_statuses(gateway, during_key)  # a 3/minute key, unlimited now
            time.sleep(PHASE_SECONDS["down"] / 2)
            traffic.phase = "back"
            let_through = bypassed(gateway)
            redis_server.start()
            time.sleep(PHASE_SECONDS["back"])
        away_from_window_edges()
        after = five_statuses(gateway, after_key)
        warnings = [
            line for line in gateway.output().splitlines() if "WARNING proxy.ratelimit" in line
        ]

    report(
        "Redis stopped for 6 s under 4 clients (fail open)",
        **{phase: dict(counts) for phase, counts in traffic.statuses.items()},
        let_through_unlimited=int(let_through),
        warning_lines=len(warnings),
        limit_3_per_minute_while_down=during,
        limit_3_per_minute_after=after,
    )
    for phase, counts in traffic.statuses.items():
        assert set(counts) == {200}, (phase, counts)
        assert counts[200] > 10, (phase, counts)
    assert during == [200] * 5  # fail open: not limited while Redis is away
    # Every request while Redis was away (but those in flight when this was read).
    assert let_through + CLIENTS >= traffic.statuses["down"][200] + len(during)
    # One warning when Redis went away (then at most one a minute), one when it is back.
    assert 1 <= len(warnings) <= 3, warnings
    assert after == [200, 200, 200, 429, 429]
