"""Admission: the gateway holds what a full backend cannot start yet, and releases it
fairly, so that vLLM's first-come-first-served queue never sees more than it can run.

Each backend has a queue here (`BackendQueue`) with its capacity: how many requests it
runs at once (BACKEND_CAPACITY, or the row's own; lowered at run time to what vLLM runs
when its own gauges say requests wait in it). While it has room a request passes
straight through (a counter compared, nothing awaited). When it is full, requests wait
here and leave in this order:

1. the higher tier first (interactive before batch); a lower-tier request that has
   waited ADMISSION_PROMOTE_SECONDS is promoted, so its starvation is bounded;
2. within a tier, the key that was served the fewest tokens recently per unit of its
   share (a virtual token counter, as in VTC: a key that becomes active is lifted to the
   least counter of the active keys, so it cannot bank idle time as credit), then the
   key with fewer requests running, then arrival.

No key takes the last ADMISSION_HEADROOM free slots while it already holds one: those are
kept for the others, so a quiet key starts at once instead of waiting for one of a busy
key's long streams to end. A key has at most its `max_parallel_requests` (default
KEY_MAX_PARALLEL_REQUESTS) admitted or waiting; beyond, 429. A wait is bounded by the
tier's ADMISSION_MAX_WAIT_SECONDS and the queue by ADMISSION_MAX_QUEUE: past either, 429
with Retry-After (503 when the backend went down meanwhile). A client that leaves while
waiting is removed and nothing is sent.

The slots are this process's: with several workers (WEB_CONCURRENCY) each admits up to
its share of the capacity (`worker_share`), so together they never exceed it.
"""

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from backends.metrics import ADMISSION_REFUSED, QUEUE_DEPTH, QUEUE_WAIT
from plumbing.errors import RateLimited

log = logging.getLogger("talktuah.admission")

TIERS = ("interactive", "batch")  # the rank is the index: 0 goes first


@dataclass(frozen=True, slots=True)
class Claim:
    """Who asks for a slot: a key's prefix and what it is entitled to."""

    key: str
    tier: str = "interactive"
    share: int = 1
    max_parallel: int | None = None  # None: KEY_MAX_PARALLEL_REQUESTS

    @property
    def rank(self) -> int:
        return TIERS.index(self.tier) if self.tier in TIERS else 0

    @property
    def parallel_cap(self) -> int:
        cap = self.max_parallel
        if cap is None:
            cap = settings.KEY_MAX_PARALLEL_REQUESTS
        return max(int(cap), 1)


class QueueRefused(RateLimited):
    """The request could not be admitted: the queue was full, the wait too long, or the
    key over its parallel cap (429, Retry-After)."""


@dataclass(slots=True)
class _KeyState:
    counter: float = 0.0  # tokens served recently, per unit of share
    running: int = 0  # admitted here and not released
    waiting: int = 0


@dataclass(eq=False, slots=True)
class Waiter:
    claim: Claim
    enqueued: float
    seq: int
    admitted: asyncio.Future[None]

    def rank(self, now: float) -> int:
        if self.claim.rank > 0 and now - self.enqueued >= settings.ADMISSION_PROMOTE_SECONDS:
            return 0  # promoted: it has waited long enough
        return self.claim.rank


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's place on a backend: released once (its slot freed at once), charged
    once its tokens are known (the key's counter)."""

    queue: "BackendQueue"
    claim: Claim
    waited: float = 0.0  # seconds it waited to be admitted
    charged: float = 0.0  # tokens charged at admission (an estimate), settled later
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.queue._release(self)

    def settle(self, tokens: int) -> None:
        """Replace the estimate charged at admission by the tokens really served."""
        self.queue._charge(self.claim, tokens - self.charged)
        self.charged = float(tokens)


@dataclass(eq=False)
class BackendQueue:
    """The admission queue of one backend in this process."""

    backend: str
    capacity: int
    running: int = 0
    _waiters: list[Waiter] = field(default_factory=list)
    _keys: dict[str, _KeyState] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=itertools.count)

    # --- what it holds ---------------------------------------------------------------

    def waiting(self, tier: str | None = None) -> int:
        if tier is None:
            return len(self._waiters)
        return sum(1 for w in self._waiters if w.claim.tier == tier)

    def figures(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "running": self.running,
            "waiting": {tier: self.waiting(tier) for tier in TIERS},
        }

    def would_wait(self, claim: Claim) -> bool:
        return bool(self._waiters) or not self._eligible(claim)

    # --- admission -------------------------------------------------------------------

    async def admit(self, claim: Claim, *, estimate: int = 0) -> Ticket:
        """A slot for `claim`, at once while there is room and nobody waits; else wait
        in fair order (bounded). Raises QueueRefused; cancellation leaves the queue."""
        state = self._keys.get(claim.key)
        if state is not None and state.running + state.waiting >= claim.parallel_cap:
            self._refuse(claim, "parallel_cap")
            raise QueueRefused(
                f"This API key already has {state.running + state.waiting} requests in "
                f"flight on this backend (its limit is {claim.parallel_cap}); wait for one "
                "to finish.",
                code="too_many_parallel_requests",
                headers={"Retry-After": "1"},
            )
        if not self._waiters and self._eligible(claim):
            return self._take(claim, estimate=estimate, waited=0.0)
        if self.waiting(claim.tier) >= settings.ADMISSION_MAX_QUEUE:
            self._refuse(claim, "queue_full")
            raise QueueRefused(
                f"The queue for backend {self.backend} is full "
                f"({settings.ADMISSION_MAX_QUEUE} {claim.tier} requests wait); retry shortly.",
                code="queue_full",
                headers={"Retry-After": "5"},
            )
        return await self._wait(claim, estimate=estimate)

    async def _wait(self, claim: Claim, *, estimate: int) -> Ticket:
        loop = asyncio.get_running_loop()
        waiter = Waiter(claim, time.monotonic(), next(self._seq), loop.create_future())
        self._activate(claim)
        self._state(claim).waiting += 1
        self._waiters.append(waiter)
        QUEUE_DEPTH.labels(self.backend, claim.tier).inc()
        # A free slot the waiters ahead may not take (headroom) may be this one's.
        self._dispatch()
        limit = _max_wait(claim.tier)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(waiter.admitted), limit)
            except TimeoutError:
                self._refuse(claim, "queue_timeout")
                raise QueueRefused(
                    f"Backend {self.backend} stayed full for {limit:.0f} s; retry shortly.",
                    code="queue_timeout",
                    headers={"Retry-After": "5"},
                ) from None
        except BaseException:
            # Timed out, or the client left (cancelled): out of the queue; a slot given
            # to it in the same moment goes to the next.
            if waiter in self._waiters:
                self._drop(waiter)
            elif waiter.admitted.done() and not waiter.admitted.cancelled():
                self._state(claim).running -= 1
                self.running -= 1
                self._dispatch()
            raise
        waited = time.monotonic() - waiter.enqueued
        QUEUE_WAIT.labels(self.backend, claim.tier).observe(waited)
        self._charge(claim, estimate)
        return Ticket(self, claim, waited=waited, charged=float(estimate))

    def _eligible(self, claim: Claim) -> bool:
        free = self.capacity - self.running
        if free <= 0:
            return False
        state = self._keys.get(claim.key)
        holds = state is not None and state.running > 0
        # The last free slots are kept for keys that hold none.
        return not (holds and free <= settings.ADMISSION_HEADROOM)

    def _take(self, claim: Claim, *, estimate: int, waited: float) -> Ticket:
        self._activate(claim)
        self._state(claim).running += 1
        self.running += 1
        self._charge(claim, estimate)
        return Ticket(self, claim, waited=waited, charged=float(estimate))

    def _dispatch(self) -> None:
        """Admit waiters, best first, while there is room for them."""
        while self._waiters and self.running < self.capacity:
            now = time.monotonic()
            order = sorted(self._waiters, key=lambda w: self._order(w, now))
            chosen = next((w for w in order if self._eligible(w.claim)), None)
            if chosen is None:
                return  # the free slots are headroom, and every waiter holds a slot
            self._waiters.remove(chosen)
            state = self._state(chosen.claim)
            state.waiting -= 1
            state.running += 1
            self.running += 1
            QUEUE_DEPTH.labels(self.backend, chosen.claim.tier).dec()
            chosen.admitted.set_result(None)

    def _order(self, waiter: Waiter, now: float) -> tuple[int, float, int, int]:
        state = self._state(waiter.claim)
        return (waiter.rank(now), state.counter, state.running, waiter.seq)

    def _drop(self, waiter: Waiter) -> None:
        self._waiters.remove(waiter)
        self._state(waiter.claim).waiting -= 1
        QUEUE_DEPTH.labels(self.backend, waiter.claim.tier).dec()
        self._forget_idle(waiter.claim.key)

    def _release(self, ticket: Ticket) -> None:
        state = self._state(ticket.claim)
        state.running -= 1
        self.running -= 1
        self._dispatch()
        self._forget_idle(ticket.claim.key)

    # --- fairness ------------------------------------------------------------------

    def _state(self, claim: Claim) -> _KeyState:
        state = self._keys.get(claim.key)
        if state is None:
            state = self._keys[claim.key] = _KeyState()
        return state

    def _activate(self, claim: Claim) -> None:
        """A key with nothing running or waiting starts at the least counter of the
        active keys: it cannot bank its idle time as credit."""
        state = self._state(claim)
        if state.running or state.waiting:
            return
        active = [
            s.counter for k, s in self._keys.items() if k != claim.key and (s.running or s.waiting)
        ]
        if active:
            state.counter = max(state.counter, min(active))

    def _charge(self, claim: Claim, tokens: float) -> None:
        state = self._keys.get(claim.key)
        if state is not None and tokens:
            state.counter += tokens / max(claim.share, 1)

    def _forget_idle(self, key: str) -> None:
        state = self._keys.get(key)
        if state is not None and not state.running and not state.waiting:
            del self._keys[key]
        if not self._keys:
            return
        # Counters only matter relative to each other: keep them small.
        low = min(s.counter for s in self._keys.values())
        if low > 1e9:
            for s in self._keys.values():
                s.counter -= low

    def resize(self, capacity: int) -> None:
        """A new capacity (a changed setting, or vLLM's gauges); room is given at once."""
        capacity = max(capacity, 1)
        if capacity != self.capacity:
            self.capacity = capacity
            self._dispatch()

    def observe(self, configured: int, saturated_at: int | None) -> None:
        """Correct the capacity from vLLM's own gauges: requests waiting in vLLM mean it
        is full at what it runs (`saturated_at`, this process's part of it: something
        else may fill it too, another gateway or a direct client), so admit no more
        than that; once nothing waits there, grow back towards the configured capacity
        a quarter at a time."""
        if saturated_at is not None:
            self.resize(min(configured, max(1, saturated_at)))
        elif self.capacity < configured:
            self.resize(min(configured, self.capacity + max(1, self.capacity // 4)))
        elif self.capacity > configured:
            self.resize(configured)

    def _refuse(self, claim: Claim, reason: str) -> None:
        ADMISSION_REFUSED.labels(self.backend, claim.tier, reason).inc()


def worker_share(capacity: int) -> int:
    """This process's part of a backend's capacity when WEB_CONCURRENCY workers share
    it: an equal part, rounded down (so together they never admit more than the
    capacity), one at least."""
    workers = max(int(settings.WEB_CONCURRENCY), 1)
    return max(1, capacity // workers)


def _max_wait(tier: str) -> float:
    if tier == "batch":
        return float(settings.ADMISSION_BATCH_MAX_WAIT_SECONDS)
    return float(settings.ADMISSION_MAX_WAIT_SECONDS)
