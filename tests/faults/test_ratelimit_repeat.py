"""The RPM limit, 50 times in a row on the lane's Redis: a 3/minute key admits exactly
3 of 5 every time (it once admitted 5, and 10 of 5 on Redis, when a run crossed the
limit's window edge)."""

import httpx
import pytest

from tests.faults.conftest import report
from tests.proxy.test_ratelimit import CHAT, away_from_window_edges

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 50


@pytest.mark.timeout(600)  # 50 runs, each may sleep past a window edge
def test_a_3_per_minute_key_admits_exactly_3_of_5_fifty_times_in_a_row(
    gateway, simulator, make_key
):
    simulator()
    misses = []
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for run in range(RUNS):
            key = make_key(name=f"repeat-{run}", rpm_limit=3)
            away_from_window_edges()
            headers = {"Authorization": f"Bearer {key}"}
            statuses = [
                client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code
                for _ in range(5)
            ]
            if statuses != [200, 200, 200, 429, 429]:
                misses.append((run, statuses))
    report("rate limit, 3/minute, 5 requests", runs=RUNS, misses=len(misses))
    assert misses == []
