"""The supervisor's decisions (modelmgr.engines.supervisor) with an engine and a clock of
the test's: when a crash is restarted, after how long, and when it is left alone. The
engines themselves are killed for real in test_process/test_docker, tests/modelmgr/
test_worker_supervision.py and test_kubernetes."""

from dataclasses import dataclass

import pytest

from modelmgr.engines.base import EngineState
from modelmgr.engines.supervisor import (
    CameBack,
    Crashed,
    RestartDue,
    RestartPolicy,
    Supervisor,
)

RUNNING = EngineState(True, "/models/a", "org/a", "runs", incarnation="1")


@dataclass
class FakeEngine:
    now: EngineState = RUNNING
    healthy: bool = True
    name: str = "fake"
    read_only: bool = False

    def serve(self, *, model: str, served_name: str) -> None:
        raise AssertionError("the supervisor never serves: the worker does")

    def stop(self) -> None:
        raise AssertionError("the supervisor never stops")

    def state(self) -> EngineState:
        return self.now


def exited(code: int | None) -> EngineState:
    return EngineState(False, "/models/a", "org/a", f"exited with code {code}", exit_code=code)


def supervised(
    policy: RestartPolicy, engine: FakeEngine | None = None
) -> tuple[Supervisor, FakeEngine, list[float]]:
    engine = engine or FakeEngine()
    clock = [0.0]
    supervisor = Supervisor(
        engine,
        policy,
        probe=lambda: (engine.healthy, "200" if engine.healthy else "unreachable"),
        start_grace=10.0,
        clock=lambda: clock[0],
    )
    assert supervisor.check() == []  # watching from now on
    return supervisor, engine, clock


def policy(mode: str = "on-failure", **kw: float) -> RestartPolicy:
    values = {"backoff": 1.0, "max_backoff": 8.0, "attempts": 0, "unhealthy": 5.0, **kw}
    return RestartPolicy(
        mode, values["backoff"], values["max_backoff"], int(values["attempts"]), values["unhealthy"]
    )


def test_it_restarts_with_doubling_backoff_up_to_the_maximum() -> None:
    supervisor, engine, clock = supervised(policy())
    engine.now = exited(-9)
    [crash] = supervisor.check()
    assert isinstance(crash, Crashed) and crash.restart_in == 1.0
    assert supervisor.check() == []  # not yet
    waits = []
    for _ in range(5):
        clock[0] += 100
        [due] = supervisor.check()
        assert isinstance(due, RestartDue) and due.model == "/models/a"
        waits.append(supervisor.policy.delay(due.attempt))
        supervisor.after_run(restart=True, ready=False)  # it failed again
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_vllm_that_served_for_a_while_resets_the_backoff() -> None:
    supervisor, engine, clock = supervised(policy())
    for _ in range(3):
        engine.now = exited(1)
        supervisor.check()
        clock[0] += 100
        supervisor.check()
        engine.now = RUNNING
        supervisor.after_run(restart=True, ready=True)
    assert supervisor.attempts == 3
    supervisor.check()
    clock[0] += 11
    supervisor.check()
    assert supervisor.attempts == 0


@pytest.mark.parametrize(
    ("mode", "code", "restarted"),
    [
        ("on-failure", 0, False),
        ("on-failure", 137, True),
        ("always", 0, True),
        ("never", 137, False),
    ],
)
def test_the_policy_decides(mode: str, code: int, restarted: bool) -> None:
    supervisor, engine, _clock = supervised(policy(mode))
    engine.now = exited(code)
    [crash] = supervisor.check()
    assert isinstance(crash, Crashed)
    assert (crash.restart_in is not None) is restarted, crash.reason


def test_it_gives_up_after_the_maximum_attempts() -> None:
    supervisor, engine, clock = supervised(policy(attempts=2))
    engine.now = exited(1)
    supervisor.check()
    for _ in range(2):
        clock[0] += 100
        assert supervisor.check()
        supervisor.after_run(restart=True, ready=False)
    clock[0] += 100
    assert supervisor.check() == [] and supervisor.down
    assert supervisor.restart_at is None


def test_a_hung_vllm_is_a_crash_after_the_unhealthy_period_not_while_it_loads() -> None:
    engine = FakeEngine(healthy=False)
    supervisor, engine, clock = supervised(policy(unhealthy=5.0), engine)
    clock[0] = 9.0
    assert supervisor.check() == []  # loading: within start_grace
    engine.healthy = True
    assert supervisor.check() == []
    engine.healthy = False
    clock[0] = 20.0
    assert supervisor.check() == []
    clock[0] = 25.0
    [crash] = supervisor.check()
    assert isinstance(crash, Crashed) and "failed its health check for 5 s" in crash.detail
    # Still running but hung: it is back only once it answers (or another runs).
    assert supervisor.check() == []
    engine.healthy = True
    [back] = supervisor.check()
    assert isinstance(back, CameBack)


def test_a_restart_behind_its_back_is_a_crash_and_a_coming_back() -> None:
    supervisor, engine, _clock = supervised(policy())
    engine.now = EngineState(True, "/models/a", "org/a", "runs again", incarnation="2")
    crash, back = supervisor.check()
    assert isinstance(crash, Crashed) and crash.restart_in is None
    assert isinstance(back, CameBack)
