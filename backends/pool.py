"""The vLLM backends this process routes to, held in memory: the hot path reads this
state and never the database.

The backends are what `backends.discovery` lists (the enabled rows, VLLM_BASE_URL's
`default`, or with BACKEND_DISCOVERY=kubernetes the ready pods). One backend is a pool
of one: a background task looks at every backend every BACKEND_POLL_SECONDS (and
re-reads the rows when they changed), keeping its health record (`backends.health`); a
backend that fails a look, or BACKEND_MAX_FAILURES requests in a row, is ejected for
BACKEND_COOLDOWN_SECONDS, looked at again, and put back once healthy.

A request goes to a backend serving its model: the one its session hashes to (stable
rendezvous hashing, so a conversation keeps its prefix cache), else the less busy of two
picked at random (power of two choices on requests in flight per unit of weight). The
other candidates follow in order, for failover before the first byte; ejected ones come
last, as a last resort. When every backend that serves the model is ejected, and each was
seen up before (so it is not starting), the request fails at once (503, Retry-After)
instead of retrying for UPSTREAM_RETRY_SECONDS: the switch hold (proxy/holding.py) is
what waits for a backend known to be coming back.
"""

import asyncio
import functools
import hashlib
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from backends import health
from backends.admission import BackendQueue, Claim, Ticket, worker_share
from backends.apps import ROWS_VERSION
from backends.discovery import row_specs, with_default
from backends.health import BackendHealth
from backends.metrics import BACKEND_ADMITTED, BACKEND_CAPACITY, BACKEND_IN_FLIGHT, BACKEND_UP
from backends.spec import BackendSpec
from plumbing import counters, kube, vllm
from plumbing.db import run_sync
from plumbing.errors import ModelNotServed, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("talktuah.pool")

# A request that finds no backend serving its model looks at them again if what is known
# is older than this, before it answers 404 (a switch made by another process).
MODELS_FRESH_SECONDS = 1.0


@dataclass(eq=False, slots=True)
class Replica:
    """One backend as this process routes to it: its spec and its routing state."""

    spec: BackendSpec
    queue: BackendQueue = field(init=False)
    in_flight_gauge: Any = field(init=False)  # its children of the gauges, looked up once
    admitted_gauge: Any = field(init=False)
    ejected_until: float = 0.0  # monotonic; while ejected it is only a last resort
    failures: int = 0  # requests in a row that found it unreachable
    in_flight: int = 0
    # Seen healthy by this process: until then it is taken to be starting (a vLLM loads
    # for minutes after the gateway and it were started together), and requests wait
    # for it; once it was up, its being down is news, and requests fail fast.
    seen_up: bool = False

    def __post_init__(self) -> None:
        self.queue = BackendQueue(self.spec.name, worker_share(self.spec.capacity))
        BACKEND_CAPACITY.labels(self.spec.name).set(self.queue.capacity)
        self.in_flight_gauge = BACKEND_IN_FLIGHT.labels(self.spec.name)
        self.admitted_gauge = BACKEND_ADMITTED.labels(self.spec.name)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def weight(self) -> int:
        return self.spec.weight

    @property
    def draining(self) -> bool:
        return self.spec.draining

    @property
    def health(self) -> BackendHealth | None:
        return health.record(self.name)

    @property
    def models(self) -> tuple[str, ...] | None:
        """What it was last seen serving; None while that is not known."""
        found = self.health
        return found.known_models if found is not None else None

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    def serves(self, model: str) -> bool:
        models = self.models
        return models is not None and model in models

    def eject(self, reason: str) -> None:
        if not self.ejected:
            log.warning("backend %s ejected: %s", self.name, reason)
        self.ejected_until = time.monotonic() + settings.BACKEND_COOLDOWN_SECONDS
        BACKEND_UP.labels(self.name).set(0)

    def restore(self) -> None:
        if self.ejected:
            log.warning("backend %s is healthy again", self.name)
        self.failures = 0
        self.ejected_until = 0.0
        self.seen_up = True
        BACKEND_UP.labels(self.name).set(1)


class Pool:
    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        # Some backend runs vLLM's priority scheduling (the gateway then sets it).
        self.schedules_by_priority = False
        self._default_source: tuple[str, str] | None = None
        self._rows: list[BackendSpec] = []
        self._loaded = False
        self._rows_version: int | None = None  # the rows' version when they were read
        self._rows_read_at = -math.inf  # monotonic
        self._load_lock: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: kube.PodWatcher | None = None
        self._pods_version = -1

    # --- configuration -------------------------------------------------------------

    async def ready(self) -> None:
        """Load the backends once per process (and event loop), look at them all once
        and start the poller, and follow a changed VLLM_BASE_URL; two comparisons when
        nothing changed (every request but the first)."""
        loop = asyncio.get_running_loop()
        if (
            self._loop is loop
            and self._loaded
            and self._default_source == (settings.VLLM_BASE_URL, settings.VLLM_API_KEY)
            and (self._watcher is None or self._pods_version == self._watcher.version)
        ):
            return
        if self._loop is not loop:
            self._loop, self._loaded, self._poller = loop, False, None
            self._load_lock = asyncio.Lock()
        assert self._load_lock is not None
        async with self._load_lock:
            if settings.BACKEND_DISCOVERY == "kubernetes" and self._watcher is None:
                self._watcher = kube.pod_watcher()
                # The first request waits (a little) for the first list of pods.
                await asyncio.to_thread(self._watcher.synced.wait, settings.BACKEND_POLL_TIMEOUT)
            if not self._loaded:
                # False while the database is away: the next request reads it again.
                self._loaded = await self._read_rows()
            self._apply()
            if self._poller is None:
                # The first look happens before the first request is routed; then
                # every BACKEND_POLL_SECONDS in the background.
                await self._check_all()
                self._poller = loop.create_task(self._poll_forever(), name="backend-poller")

    async def _read_rows(self) -> bool:
        # The version first: a change made while the rows are read moves it again.
        try:
            version: int | None = await counters.version(ROWS_VERSION)
        except counters.CountsUnavailable:
            version = None  # unknown: the next poll reads the rows again
        try:
            self._rows = await run_sync(row_specs)
        except DatabaseError as exc:
            # Routing keeps the backends it knows (at least VLLM_BASE_URL's) while the
            # database is away; the next request or poll reads them again.
            log.warning("could not read the backends from the database: %s", exc)
            return False
        self._rows_version, self._rows_read_at = version, time.monotonic()
        return True

    async def _rows_may_have_changed(self) -> bool:
        """Whether a poll reads the rows again: when their version moved (a row saved or
        deleted here, or in any process with REDIS_URL), or could not be read, and every
        BACKEND_ROWS_SECONDS whatever it says (a change in another process without
        Redis, or one made behind the ORM's back). Reading them at every poll was an ORM
        query in a thread every BACKEND_POLL_SECONDS, which took the GIL from the event
        loop in bursts: measured in the 64-stream TTFT tail."""
        if self._rows_version is None:
            return True
        if time.monotonic() - self._rows_read_at >= settings.BACKEND_ROWS_SECONDS:
            return True
        try:
            return await counters.version(ROWS_VERSION) != self._rows_version
        except counters.CountsUnavailable:
            return True

    def _apply(self) -> None:
        self._default_source = (settings.VLLM_BASE_URL, settings.VLLM_API_KEY)
        pods = None
        if self._watcher is not None:
            # Discovered pods take the place of VLLM_BASE_URL's backend.
            self._pods_version = self._watcher.version
            pods = self._watcher.pods()
        self.sync(with_default(list(self._rows), pods))

    def sync(self, specs: Iterable[BackendSpec]) -> None:
        """Take a new list of backends, keeping what was learned about unchanged ones."""
        fresh: dict[str, Replica] = {}
        for spec in specs:
            known = self.replicas.get(spec.name)
            if known is None or known.spec.upstream != spec.upstream:
                known = Replica(spec)
            else:
                known.spec = spec  # a new weight, draining flag or capacity
                known.queue.resize(worker_share(spec.capacity))
            fresh[spec.name] = known
        self.replicas = fresh
        self.schedules_by_priority = any(r.spec.priority_scheduling for r in fresh.values())

    def forget(self) -> None:
        """Drop what was learned and re-read the backends on the next request."""
        if self._poller is not None and self._loop is not None and not self._loop.is_closed():
            # The caller may be another thread than the loop's (tests, a management command).
            self._loop.call_soon_threadsafe(self._poller.cancel)
        self.replicas, self._rows = {}, []
        self.schedules_by_priority = False
        self._default_source, self._poller, self._loaded = None, None, False
        self._rows_version, self._rows_read_at = None, -math.inf
        self._watcher, self._pods_version = None, -1
        health.forget()

    # --- what the backends serve ---------------------------------------------------

    def served_models(self) -> list[str]:
        """Every model some backend serves, in backend order, each once."""
        seen: dict[str, None] = {}
        for replica in self.replicas.values():
            for model in replica.models or ():
                seen.setdefault(model, None)
        return list(seen)

    def served_cards(self) -> list[dict[str, Any]]:
        """vLLM's model cards of every served model, the first backend's card of each."""
        cards: dict[str, dict[str, Any]] = {}
        for replica in self.replicas.values():
            found = replica.health
            for card in (found.known_cards or ()) if found is not None else ():
                cards.setdefault(str(card["id"]), card)
        return list(cards.values())

    async def look(self, *, max_age: float) -> list[tuple[Replica, BackendHealth]]:
        """Every backend with a health record no older than `max_age` (the stale ones
        looked at now, in parallel); ejects and restores like the poller."""
        replicas = list(self.replicas.values())
        found = await asyncio.gather(*(self._check(r, max_age=max_age) for r in replicas))
        return list(zip(replicas, found, strict=True))

    # --- routing -------------------------------------------------------------------

    def routes(self, model: str, session: str | None = None) -> list[Replica]:
        """The backends to try for `model`, best first; raises ModelNotServed when no
        backend serves it (and every backend's models are known)."""
        if len(self.replicas) == 1:
            (only,) = self.replicas.values()
            if not only.draining:
                # One backend answers for itself, even for a model it does not serve:
                # vLLM's own 404 (its message, type and code) reaches the client, as it
                # always did.
                return [only]
        replicas = list(self.replicas.values())
        if not replicas:
            return []  # nothing configured or discovered: a 503, not a 404
        serving = [r for r in replicas if r.serves(model) and not r.draining]
        unknown = [r for r in replicas if r.models is None and not r.draining]
        if not serving and not unknown:
            served = ", ".join(self.served_models()) or "none right now"
            raise ModelNotServed(
                f"The model `{model}` does not exist. Served models: {served}.", param="model"
            )
        live = [r for r in serving if not r.ejected]
        ejected = [r for r in serving if r.ejected]
        return _order(live, session) + _order(unknown, session) + ejected

    async def _routes(self, model: str, session: str | None) -> list[Replica]:
        try:
            return self.routes(model, session)
        except ModelNotServed:
            # What is known may predate a switch another process made: look again
            # (once, and only if it is not fresh) before answering 404.
            await self.look(max_age=MODELS_FRESH_SECONDS)
            return self.routes(model, session)

    async def open(
        self,
        path: str,
        *,
        content: bytes | None,
        model: str,
        session: str | None = None,
        request_id: str | None = None,
        claim: Claim | None = None,
        estimate: int = 0,
        prioritized: bytes | None = None,
        method: str = "POST",
        content_type: str = vllm.JSON,
        backend: str | None = None,
    ) -> vllm.UpstreamResponse:
        """Send a POST to the best backend for `model` (after its admission queue gave
        `claim` a slot: backends with room first; `prioritized` is the body sent to
        backends that run priority scheduling), failing over to the next before
        any response byte (connection refused or reset, a 503 from a starting vLLM).
        When every backend serving the model is ejected (down by its health record or
        by requests in a row) after it was seen up, 503 at once; else (one is starting,
        or not yet found down) round after round with backoff for UPSTREAM_RETRY_SECONDS,
        each failure counting towards an ejection. Once a backend has started
        answering, the request is never sent again. `backend` names the one backend to
        send to (what it stored, such as a Responses API response, lives there only)."""
        deadline = time.monotonic() + settings.UPSTREAM_RETRY_SECONDS
        delay = 0.05
        attempts = 0
        last_error: vllm.NotReached | None = None
        while True:
            candidates = (
                await self._pinned(backend) if backend else await self._routes(model, session)
            )
            if not candidates:
                raise UpstreamUnavailable(
                    "No vLLM backend is configured or discovered right now.",
                    code="no_backend",
                    headers={"Retry-After": "5"},
                )
            if claim is not None:
                candidates = _with_room_first(candidates, claim)
            for index, replica in enumerate(candidates):
                ticket = (
                    None if claim is None else await replica.queue.admit(claim, estimate=estimate)
                )
                attempts += 1
                _begin(replica, ticket)
                body = prioritized if prioritized and replica.spec.priority_scheduling else content
                try:
                    response = await vllm.send(
                        replica.spec.upstream,
                        method,
                        path,
                        content=body,
                        request_id=request_id,
                        content_type=content_type,
                    )
                except UpstreamTimeout as exc:
                    _end(replica, ticket)
                    exc.attempts = attempts
                    raise
                except vllm.NotReached as exc:
                    _end(replica, ticket)
                    self._failed(replica, exc.detail or exc.message)
                    last_error = exc
                    continue
                except BaseException:
                    _end(replica, ticket)  # cancelled (the client left) before headers
                    raise
                # The next backend answers instead of a 503, and instead of a 404 from a
                # backend whose models are not known yet (its first look failed), tried in
                # case it serves the model (CI: a request for a model two replicas serve
                # was answered 404 by the third backend, which serves another).
                unknown_model = response.status == 404 and replica.models is None
                if (response.status == 503 or unknown_model) and index < len(candidates) - 1:
                    await response.aclose()
                    _end(replica, ticket)
                    if response.status == 503:
                        self._failed(replica, "answered 503")
                    continue
                replica.failures = 0
                response.attempts = attempts
                response.on_close = functools.partial(_end, replica, ticket)
                if ticket is not None:
                    response.queued_seconds = ticket.waited
                    response.on_tokens = ticket.settle
                return response
            if all(replica.ejected and replica.seen_up for replica in candidates):
                raise _down(model, attempts)
            if time.monotonic() + delay > deadline:
                where = candidates[0].spec.base_url if len(candidates) == 1 else "every backend"
                raise vllm.unreachable(where, attempts, last_error) from last_error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _pinned(self, name: str) -> list[Replica]:
        replica = self.replicas.get(name)
        if replica is None:
            await self.look(max_age=MODELS_FRESH_SECONDS)
            replica = self.replicas.get(name)
        if replica is None:
            raise UpstreamUnavailable(
                f"Backend {name}, which holds this, is not configured any more.",
                code="backend_gone",
            )
        return [replica]

    def _failed(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        if replica.failures >= settings.BACKEND_MAX_FAILURES:
            replica.eject(f"{replica.failures} requests in a row failed ({reason})")

    # --- polling -------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.BACKEND_POLL_SECONDS)
            try:
                await self.poll_once()
            except Exception:  # the poller must outlive any one bad answer
                log.exception("polling the backends failed")

    async def poll_once(self) -> None:
        """Re-read the backend rows if they may have changed, then look at every backend
        not cooling down."""
        if await self._rows_may_have_changed():
            await self._read_rows()
        self._apply()
        await self._check_all()

    async def refresh(self) -> None:
        """Look at every backend now (after a switch, say)."""
        await self.poll_once()

    async def _check_all(self) -> None:
        now = time.monotonic()
        due = [r for r in self.replicas.values() if r.ejected_until <= now]
        await asyncio.gather(*(self._check(replica) for replica in due))

    async def _check(self, replica: Replica, *, max_age: float = 0.0) -> BackendHealth:
        found = await health.look(replica.spec, max_age=max_age)
        if not found.healthy:
            replica.eject(found.detail)
        else:
            replica.restore()
            saturated = found.queue is not None and found.queue.get("waiting", 0) > 0
            running = int(found.queue.get("running", 0)) if found.queue else 0
            replica.queue.observe(
                worker_share(replica.spec.capacity),
                worker_share(running) if saturated else None,
            )
            BACKEND_CAPACITY.labels(replica.name).set(replica.queue.capacity)
        return found

    def would_wait(self, model: str, session: str | None, claim: Claim) -> bool:
        """Whether a request for `model` would wait for a slot now (no backend serving
        it has room): a stream is then answered at once and waits inside."""
        try:
            candidates = self.routes(model, session)
        except ModelNotServed:
            return False
        return bool(candidates) and all(r.queue.would_wait(claim) for r in candidates)


def _down(model: str, attempts: int) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"No vLLM backend that serves '{model}' is up right now; retry shortly.",
        code="backend_down",
        attempts=attempts,
        headers={"Retry-After": str(max(1, round(settings.BACKEND_POLL_SECONDS)))},
    )


def _begin(replica: Replica, ticket: Ticket | None) -> None:
    replica.in_flight += 1
    replica.in_flight_gauge.inc()
    if ticket is not None:
        replica.admitted_gauge.inc()


def _end(replica: Replica, ticket: Ticket | None) -> None:
    replica.in_flight -= 1
    replica.in_flight_gauge.dec()
    if ticket is not None and not ticket.released:
        ticket.release()  # the slot goes to the next waiter at once
        replica.admitted_gauge.dec()


def _with_room_first(candidates: list[Replica], claim: Claim) -> list[Replica]:
    """The candidates whose queue would admit `claim` at once first, in order."""
    room = [r for r in candidates if not r.queue.would_wait(claim)]
    if not room or len(room) == len(candidates):
        return candidates
    return room + [r for r in candidates if r not in room]


def _order(replicas: list[Replica], session: str | None) -> list[Replica]:
    if len(replicas) <= 1:
        return replicas
    if session:
        # Weighted rendezvous hashing: the same session picks the same replica while it
        # is there, and only its sessions move when it goes.
        return sorted(replicas, key=lambda r: _rendezvous(session, r), reverse=True)
    first, second = random.sample(replicas, 2)
    best = first if _load(first) <= _load(second) else second
    return [best, *sorted((r for r in replicas if r is not best), key=_load)]


def _load(replica: Replica) -> float:
    return replica.in_flight / replica.weight


def _rendezvous(session: str, replica: Replica) -> float:
    digest = hashlib.blake2b(f"{session}\x00{replica.name}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / 2.0**64  # in (0, 1]
    return -replica.weight / math.log(unit) if unit < 1.0 else math.inf


pool = Pool()
