"""vLLM restarted under load: 8 clients (streaming and not) for 30 s while the simulator
is killed (SIGKILL) and started again on the same port, twice. Every request succeeds,
or fails cleanly (an OpenAI-shape error before any byte of an answer, naming vLLM), or,
once its stream started, ends with the SSE error event and `[DONE]`; none hangs, none is
lost, none is answered twice (the simulator's answer log survives its kills)."""

import asyncio
import time

import pytest

from tests.faults.conftest import report
from tests.gateway_process import GatewayProcess
from tests.outcomes import Outcomes, answer_log, answer_log_repeats, drive
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = 30.0
CLIENT_TIMEOUT = 20.0  # the hang detector: far above any honest answer here
DOWN_SECONDS = 2.5  # longer than the gateway's retry budget below: some requests fail


async def _kill_and_restart(sim: SimulatorProcess, at: list[float]) -> list[float]:
    """Kill the simulator at each offset (seconds from now) and start it again."""
    started = time.monotonic()
    downtimes = []
    for offset in at:
        await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
        down = time.monotonic()
        await asyncio.to_thread(sim.kill)
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(sim.start)
        downtimes.append(time.monotonic() - down)
    return downtimes


@pytest.mark.timeout(120)
def test_it_answers_every_request_once_or_fails_it_cleanly_while_vllm_restarts(make_key, tmp_path):
    answers = tmp_path / "answers.log"
    key = make_key(name="restart-load", rpm_limit=100_000)
    with SimulatorProcess(tokens=16, token_delay=0.02, answer_log=answers) as sim:
        gateway = GatewayProcess(
            env={
                "VLLM_BASE_URL": sim.url,
                # vLLM away for DOWN_SECONDS: requests caught in the gap retry for 1 s,
                # then get a clean 502, so both paths are exercised.
                "UPSTREAM_RETRY_SECONDS": "1",
                "ACCESS_LOG": "false",
                "SHUTDOWN_DRAIN_SECONDS": "0",
            }
        )
        with gateway:

            async def run() -> tuple[Outcomes, list[float]]:
                load = asyncio.create_task(
                    drive(
                        gateway.url,
                        key=key,
                        model=sim.model,
                        seconds=SECONDS,
                        clients=8,
                        client_timeout=CLIENT_TIMEOUT,
                    )
                )
                downtimes = await _kill_and_restart(sim, at=[8.0, 19.0])
                return await load, downtimes

            out, downtimes = asyncio.run(run())

    repeats = answer_log_repeats(answers)
    figures = out.figures()
    report(
        "vLLM killed and restarted twice under load (simulator)",
        **figures,
        restarts=len(downtimes),
        **{"5xx statuses": dict(out.statuses)},
        answered_twice_by_the_log=len(repeats),
    )
    assert out.lost_samples == [], out.lost_samples
    assert figures["hangs"] == 0
    assert figures["answered twice"] == 0
    assert repeats == {}
    # The log is real: it holds the answers the clients got (a kill between the last
    # byte sent and the log's write could hide one per kill, no more).
    assert len(set(out.ok_ids) - set(answer_log(answers))) <= len(downtimes)
    # Every clean failure names vLLM (unreachable, or its stream broke).
    assert all("vLLM" in message for message in out.error_messages), out.error_messages
    assert set(out.statuses) <= {502, 503, 504}, out.statuses
    # The scenario happened: traffic before, during and after both restarts.
    assert len(downtimes) == 2
    assert figures["ok"] > 100
    assert figures["streams ended with error event"] >= 1
