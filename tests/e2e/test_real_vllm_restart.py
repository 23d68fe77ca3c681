"""Real vLLM killed (SIGKILL, its whole process group) and started again under load:
8 clients, streaming and not, through the gateway, before, during and after each of two
restarts (each about 70-100 s on 2 cores, bounded by VLLM_READY_SECONDS). Every request succeeds,
fails cleanly before its stream (an OpenAI-shape 5xx naming vLLM), or ends its started
stream with the SSE error event and `[DONE]`; none hangs, none is lost, none carries
another request's answer or two answers (vLLM names its answers after X-Request-Id).
The simulator's version, with its answer log, is tests/faults/test_vllm_restart.py."""

import asyncio
import time

import pytest

from tests.e2e.conftest import PHASES, RealVllm
from tests.outcomes import Outcomes, drive

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_SECONDS = 10.0  # load on the healthy vLLM before the kill
AFTER_SECONDS = 15.0  # load on the restarted vLLM, after each restart
RESTARTS = 2
CLIENT_TIMEOUT = 90.0  # the hang detector; a tiny model answers in about a second
UPPER_BOUND = 900.0  # the load stops by itself at the latest then


@pytest.mark.timeout(1800)
def test_it_answers_or_fails_cleanly_every_request_while_real_vllm_restarts(
    vllm_a: RealVllm, gateway, make_key, settings
):
    key = make_key(name="real-restart", rpm_limit=100_000)
    settings.UPSTREAM_RETRY_SECONDS = 2.0  # a request in the gap fails cleanly, quickly

    out = Outcomes()  # filled as the answers come

    async def run() -> tuple[list[int], list[float]]:
        stop = asyncio.Event()
        load = asyncio.create_task(
            drive(
                gateway.url,
                key=key,
                model="tiny/a",
                seconds=UPPER_BOUND,
                clients=8,
                client_timeout=CLIENT_TIMEOUT,
                # While vLLM is down every request fails at once: a pause keeps 8 clients
                # from taking the CPU that vLLM needs to start again.
                pause=0.2,
                stop=stop,
                out=out,
            )
        )
        ok_at_kill: list[int] = []
        restart_seconds: list[float] = []
        try:
            await asyncio.sleep(BEFORE_SECONDS)
            for _ in range(RESTARTS):
                ok_at_kill.append(out.counts["ok"])
                await asyncio.to_thread(vllm_a.kill)
                down = time.monotonic()
                with PHASES.measure("vLLM restart under load (kill to healthy)"):
                    await asyncio.to_thread(vllm_a.ensure, "tiny/a")
                restart_seconds.append(time.monotonic() - down)
                await asyncio.sleep(AFTER_SECONDS)
        finally:
            stop.set()
        await load
        return ok_at_kill, restart_seconds

    ok_at_kill, restart_seconds = asyncio.run(run())
    figures = out.figures()
    PHASES.note(
        "real vLLM killed and restarted under load: "
        + ", ".join(f"{name}: {value}" for name, value in figures.items())
        + f", 5xx statuses: {dict(out.statuses)}, restarts "
        + ", ".join(f"{seconds:.0f} s" for seconds in restart_seconds)
    )
    print(f"\n== real vLLM restarted under load: {figures}, 5xx: {dict(out.statuses)}")
    assert out.lost_samples == [], out.lost_samples
    assert figures["hangs"] == 0
    assert figures["answered twice"] == 0
    assert all("vLLM" in message for message in out.error_messages), out.error_messages
    assert set(out.statuses) <= {502, 503, 504}, out.statuses
    # Answers came before the first kill, between the two, and after the second restart.
    assert 0 < ok_at_kill[0] < ok_at_kill[1] < figures["ok"], (ok_at_kill, figures["ok"])
