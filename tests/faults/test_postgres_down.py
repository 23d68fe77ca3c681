"""PostgreSQL down during traffic: a gateway process uses a private PostgreSQL, which is
stopped (fast shutdown: connections ended) while 4 clients chat, for longer than the key
cache lasts, then started again. Keys the gateway had cached keep working, usage counts
are held in memory and written once the database is back (the totals in the database
equal what the clients were served: none lost, none twice), and the admin and the /api
management routes answer 503 in a clear form meanwhile, never a traceback."""

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.faults.conftest import report
from tests.gateway_process import REPO, GatewayProcess
from tests.outcomes import Outcomes, drive
from tests.private_services import PrivatePostgres
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.skipif(
    not PrivatePostgres.available(), reason="PostgreSQL 15 binaries missing"
)

KEY_CACHE_SECONDS = 2.0
DOWN_SECONDS = 8.0  # four times the key cache: lookups must meet the dead database


def manage(database_url: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def admin_session(client: httpx.Client) -> None:
    """Log in to the admin as admin/admin (the session cookie stays in the client)."""
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    answer = client.post(
        "/admin/login/?next=/admin/",
        data={"username": "admin", "password": "admin", "csrfmiddlewaretoken": token[1]},
    )
    assert answer.status_code == 302, answer.text[:500]


def usage_totals(database_url: str, key_prefix: str) -> tuple[int, int, int]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(prompt_tokens), 0),"
            " COALESCE(SUM(completion_tokens), 0) FROM modelmgr_usagedaily"
            " WHERE key_prefix = %s",
            (key_prefix,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@pytest.mark.timeout(240)
def test_cached_keys_keep_working_and_no_usage_is_lost_while_postgres_is_down(tmp_path: Path):
    with PrivatePostgres() as pg:
        db = pg.url()
        manage(db, "migrate", "--no-input", "-v", "0")
        key = manage(db, "create_api_key", "--name", "pg-traffic", "--rpm", "1000000")
        admin_key = manage(db, "create_api_key", "--name", "pg-admin", "--scope", "admin")
        manage(
            db,
            "createsuperuser",
            "--no-input",
            "--username",
            "admin",
            "--email",
            "admin@example.com",
            env={"DJANGO_SUPERUSER_PASSWORD": "admin"},
        )
        prefix = key.split(".")[0]
        log = tmp_path / "gateway.log"
        with (
            SimulatorProcess(tokens=8, token_delay=0.005) as sim,
            GatewayProcess(
                env={
                    "DATABASE_URL": db,
                    "VLLM_BASE_URL": sim.url,
                    "API_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS),
                    "USAGE_FLUSH_SECONDS": "0.5",
                    "ACCESS_LOG": "false",
                    "SHUTDOWN_DRAIN_SECONDS": "0",
                },
                log=log,
            ) as gateway,
            httpx.Client(base_url=gateway.url, timeout=15) as browser,
        ):
            admin_headers = {"Authorization": f"Bearer {admin_key}"}
            admin_session(browser)
            assert browser.get("/admin/").status_code == 200
            status_before = httpx.get(
                f"{gateway.url}/api/model-status", headers=admin_headers, timeout=15
            )
            assert status_before.status_code == 200

            while_down: dict[str, httpx.Response] = {}

            async def run() -> Outcomes:
                stop = asyncio.Event()
                out = Outcomes()
                load = asyncio.create_task(
                    drive(
                        gateway.url,
                        key=key,
                        model=sim.model,
                        seconds=120,
                        clients=4,
                        client_timeout=20,
                        stop=stop,
                        out=out,
                    )
                )
                await asyncio.sleep(2)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(DOWN_SECONDS / 2)
                async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
                    while_down["admin"] = await asyncio.to_thread(browser.get, "/admin/")
                    while_down["model-status"] = await http.get(
                        "/api/model-status", headers=admin_headers
                    )
                    while_down["usage"] = await http.get(
                        "/api/usage", headers={"Authorization": f"Bearer {key}"}
                    )
                await asyncio.sleep(DOWN_SECONDS / 2)
                await asyncio.to_thread(pg.start)
                await asyncio.sleep(3)
                stop.set()
                await load
                return out

            out = asyncio.run(run())
            # The gateway writes what it held once the database answers again.
            deadline = time.monotonic() + 20
            served = (out.sent, out.prompt_tokens, out.completion_tokens)
            while (totals := usage_totals(db, prefix)) != served and time.monotonic() < deadline:
                time.sleep(0.5)
            admin_after = browser.get("/admin/").status_code
            output = gateway.output()

    figures = out.figures()
    report(
        f"PostgreSQL stopped for {DOWN_SECONDS:.0f} s under 4 clients",
        **figures,
        served_requests_prompt_completion=served,
        in_database=totals,
        usage_lost=served[0] - totals[0],
        admin_while_down=while_down["admin"].status_code,
        api_while_down=while_down["model-status"].status_code,
        admin_after=admin_after,
    )
    assert out.lost_samples == [], out.lost_samples
    assert figures["ok"] == figures["sent"] > 50, figures
    assert totals == served
    for name, response in while_down.items():
        assert response.status_code == 503, (name, response.status_code, response.text[:300])
        assert response.headers.get("retry-after"), name
        assert "Traceback" not in response.text, name
    assert "database" in while_down["admin"].text.lower()
    assert while_down["model-status"].json()["error"]["code"] == "database_unavailable"
    assert while_down["usage"].json()["error"]["code"] == "database_unavailable"
    assert admin_after == 200
    assert "Traceback" not in output, output[-3000:]
