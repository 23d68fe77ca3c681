"""Supervision of the engine a worker runs: notice that vLLM stopped (its process exited,
its container stopped, its Deployment has no available pod) or stopped answering (its
/health failed for ENGINE_UNHEALTHY_SECONDS after it had served), and say when to start
it again under ENGINE_RESTART_POLICY, with exponential backoff, as Docker's restart
policy does.

`Supervisor.check()` looks once and returns what happened (`Crashed`, `RestartDue`,
`CameBack`: none, one, or a crash and its coming back); the worker records that in the
switch history and runs the restart like a switch (`modelmgr.services`). No database
here: the decisions are tested on their own, with a clock of the test's."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from django.conf import settings

from modelmgr.engines.base import Engine, EngineState

logger = logging.getLogger(__name__)

POLICIES = ("always", "on-failure", "never")
# A vLLM that served this long after a restart resets the backoff (Docker: 10 s).
STABLE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    mode: str  # always | on-failure | never
    backoff_seconds: float
    max_backoff_seconds: float
    max_attempts: int  # restarts in a row; 0 = no limit
    unhealthy_seconds: float

    @classmethod
    def from_settings(cls) -> "RestartPolicy":
        return cls(
            mode=settings.ENGINE_RESTART_POLICY,
            backoff_seconds=float(settings.ENGINE_RESTART_BACKOFF_SECONDS),
            max_backoff_seconds=float(settings.ENGINE_RESTART_MAX_BACKOFF_SECONDS),
            max_attempts=int(settings.ENGINE_RESTART_MAX_ATTEMPTS),
            unhealthy_seconds=float(settings.ENGINE_UNHEALTHY_SECONDS),
        )

    def restarts(self, exit_code: int | None) -> bool:
        """Whether a vLLM that ended so is started again (None: unknown, or it hung)."""
        if self.mode == "never":
            return False
        return self.mode == "always" or exit_code != 0

    def delay(self, attempt: int) -> float:
        """How long the attempt-th restart in a row waits."""
        return min(self.backoff_seconds * 2 ** max(attempt - 1, 0), self.max_backoff_seconds)


@dataclass(frozen=True, slots=True)
class Crashed:
    """vLLM stopped, or stopped answering. restart_in: seconds until the supervisor
    restarts it, None when it does not (the policy, the attempts, or what runs it
    restarts it by itself: `reason` says which)."""

    served_name: str
    detail: str
    restart_in: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RestartDue:
    """Time to start the crashed vLLM again (the attempt-th restart in a row)."""

    model: str
    served_name: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CameBack:
    """The crashed vLLM runs again without the supervisor (Docker's restart policy, the
    kubelet, an operator)."""

    served_name: str
    detail: str


Event = Crashed | RestartDue | CameBack
# The health probe: (healthy, what was seen), vLLM's /health as the worker looks at it.
Probe = Callable[[], tuple[bool, str]]


class Supervisor:
    """Watches one engine for its worker. Idle until the engine runs something; then
    watching; after a crash, down until it is restarted or comes back. The worker
    pauses it while it runs a switch or a restart itself, and tells it the outcome
    (`after_run`)."""

    def __init__(
        self,
        engine: Engine,
        policy: RestartPolicy,
        *,
        probe: Probe,
        start_grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.probe = probe
        # How long a (re)started vLLM may load before its failing /health counts.
        self.start_grace = start_grace
        self.clock = clock
        self.watched: EngineState | None = None
        self.crashed: EngineState | None = None  # what to bring back while down
        self.attempts = 0  # crashes since the last stable run
        self.restart_at: float | None = None
        self._since = 0.0
        self._ever_healthy = False
        self._healthy_since: float | None = None
        self._unhealthy_since: float | None = None
        self._hung = False  # the crash was a failing /health, not an exit

    @property
    def down(self) -> bool:
        return self.crashed is not None

    def check(self) -> list[Event]:
        """Look at the engine once (EngineError when what runs it cannot be asked)."""
        state = self.engine.state()
        now = self.clock()
        if self.crashed is not None:
            return self._check_down(state, now)
        if self.watched is None:
            if state.running and state.served_name:
                self._watch(state, now)
            return []
        if not state.running:
            return [self._crash(state.detail, state.exit_code, state, now)]
        if state.incarnation and state.incarnation != self.watched.incarnation:
            # Started again between two looks (a restart policy that was quick).
            detail = f"vLLM ended and was started again by what runs it ({state.detail})"
            crash = self._crash(detail, None, replace(state, restarts_itself=True), now)
            return [crash, *self._check_down(state, now)]
        return self._check_health(state, now)

    def after_run(self, *, restart: bool, ready: bool) -> None:
        """A switch or restart the worker ran has ended (ready or failed)."""
        now = self.clock()
        state = self.engine.state()
        if ready and state.running:
            self.crashed = None
            self.restart_at = None
            self._watch(state, now)
            return
        if restart and self.crashed is not None:
            # The restart failed: one more crash in a row, and maybe another try.
            self.attempts += 1
            self.restart_at = self._next_restart(None, now)[0]
            return
        # A failed switch: whatever runs now (the old model, restored) is watched.
        self.crashed = None
        self.restart_at = None
        self.watched = None
        if state.running and state.served_name:
            self._watch(state, now)

    # --- the steps -------------------------------------------------------------------

    def _watch(self, state: EngineState, now: float) -> None:
        self.watched = state
        self._since = now
        self._ever_healthy = False
        self._healthy_since = None
        self._unhealthy_since = None

    def _check_health(self, state: EngineState, now: float) -> list[Event]:
        healthy, seen = self.probe()
        if healthy:
            self._ever_healthy = True
            self._unhealthy_since = None
            self._healthy_since = self._healthy_since or now
            if self.attempts and now - self._healthy_since >= STABLE_SECONDS:
                self.attempts = 0
            return []
        self._healthy_since = None
        if not self._ever_healthy and now - self._since < self.start_grace:
            return []  # still loading its model
        self._unhealthy_since = self._unhealthy_since or now
        failing = now - self._unhealthy_since
        if failing < self.policy.unhealthy_seconds:
            return []
        detail = f"vLLM runs but failed its health check for {failing:.0f} s: {seen}"
        return [self._crash(detail, None, state, now)]

    def _crash(self, detail: str, exit_code: int | None, state: EngineState, now: float) -> Crashed:
        watched = self.watched or state
        self.crashed = watched
        self._hung = state.running
        self.watched = None
        self.attempts += 1
        if state.restarts_itself:
            self.restart_at, reason = None, "what runs it restarts it"
        else:
            self.restart_at, reason = self._next_restart(exit_code, now)
        restart_in = None if self.restart_at is None else self.restart_at - now
        served = watched.served_name or ""
        logger.warning("vLLM (%s) crashed: %s; %s", served, detail, reason)
        return Crashed(served_name=served, detail=detail, restart_in=restart_in, reason=reason)

    def _next_restart(self, exit_code: int | None, now: float) -> tuple[float | None, str]:
        policy = self.policy
        if not policy.restarts(exit_code):
            return None, f"not restarted (ENGINE_RESTART_POLICY={policy.mode})"
        if policy.max_attempts and self.attempts > policy.max_attempts:
            return None, f"not restarted: {policy.max_attempts} restart(s) in a row failed"
        delay = policy.delay(self.attempts)
        return now + delay, f"restart in {delay:.1f} s"

    def _check_down(self, state: EngineState, now: float) -> list[Event]:
        crashed = self.crashed
        assert crashed is not None
        # A vLLM that hung still runs: it is back once it answers, or once another
        # instance runs.
        same = not state.incarnation or state.incarnation == crashed.incarnation
        if state.running and (not self._hung or not same or self.probe()[0]):
            self.crashed = None
            self.restart_at = None
            self._watch(state, now)
            return [CameBack(served_name=state.served_name or "", detail=state.detail)]
        if self.restart_at is None or now < self.restart_at:
            return []
        self.restart_at = None  # the worker runs it; after_run says how it went
        served = crashed.served_name or ""
        return [
            RestartDue(model=crashed.model or served, served_name=served, attempt=self.attempts)
        ]
