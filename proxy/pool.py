"""The vLLM backends this process routes to, held in memory: the hot path reads this
state and never the database.

The backends are the enabled `Backend` rows plus, unless a row is named `default`, the
one VLLM_BASE_URL describes (with BACKEND_DISCOVERY=kubernetes: the ready pods instead);
a single backend behaves exactly as TalkTuah always did (no polling, every request goes
to it). With several, a background task polls each one's /health and /v1/models every
BACKEND_POLL_SECONDS (and re-reads the rows): a backend that fails a poll, or
BACKEND_MAX_FAILURES requests in a row, is ejected for BACKEND_COOLDOWN_SECONDS, probed
again, and put back once healthy.

A request goes to a backend serving its model: the one its session hashes to (stable
rendezvous hashing, so a conversation keeps its prefix cache), else the less busy of two
picked at random (power of two choices on requests in flight per unit of weight). The
other candidates follow in order, for failover before the first byte.
"""

import asyncio
import functools
import hashlib
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from modelmgr.models import DEFAULT_BACKEND
from modelmgr.selectors import backend_upstreams
from plumbing import kube, vllm
from plumbing.db import run_sync
from plumbing.errors import ModelNotServed, UpstreamTimeout, UpstreamUnavailable
from proxy.metrics import BACKEND_IN_FLIGHT, BACKEND_UP

log = logging.getLogger("talktuah.pool")


@dataclass(eq=False, slots=True)
class Replica:
    """One backend as this process sees it."""

    upstream: vllm.Upstream
    weight: int = 1
    draining: bool = False
    models: tuple[str, ...] | None = None  # None: not learned yet
    cards: tuple[dict[str, Any], ...] = ()  # its /v1/models entries
    ejected_until: float = 0.0  # monotonic; while ejected it is only a last resort
    failures: int = 0  # requests in a row that found it unreachable
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.upstream.name

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    def serves(self, model: str) -> bool:
        return self.models is not None and model in self.models

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
        BACKEND_UP.labels(self.name).set(1)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    upstream: vllm.Upstream
    weight: int = 1
    draining: bool = False


class Pool:
    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        self._default_source: vllm.Upstream | None = None
        self._rows: list[BackendConfig] = []
        self._loaded = False
        self._load_lock: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: kube.PodWatcher | None = None
        self._pods_version = -1

    # --- configuration -------------------------------------------------------------

    async def ready(self) -> None:
        """Load the backends once per process (and event loop), look at them all once
        and start the poller when there are several, and follow a changed
        VLLM_BASE_URL; one comparison when nothing changed (every request but the
        first)."""
        loop = asyncio.get_running_loop()
        if (
            self._loop is loop
            and self._loaded
            and self._default_source is vllm.default_upstream()
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
            if self._polled and self._poller is None:
                # The first look happens before the first request is routed; then
                # every BACKEND_POLL_SECONDS in the background.
                await self._check_all()
                self._poller = loop.create_task(self._poll_forever(), name="backend-poller")

    @property
    def _polled(self) -> bool:
        # One fixed backend needs no polling: every request goes to it anyway.
        return len(self.replicas) > 1 or self._watcher is not None

    async def refresh(self) -> None:
        """Look at every backend now (after a switch, say), when there are several."""
        if self._polled:
            await self.poll_once()

    async def _read_rows(self) -> bool:
        try:
            self._rows = await run_sync(_rows)
        except DatabaseError as exc:
            # Routing keeps the backends it knows (at least VLLM_BASE_URL's) while the
            # database is away; the next request or poll reads them again.
            log.warning("could not read the backends from the database: %s", exc)
            return False
        return True

    def _apply(self) -> None:
        configs = list(self._rows)
        default = vllm.default_upstream()
        self._default_source = default
        if self._watcher is not None:
            # Discovered pods take the place of VLLM_BASE_URL's backend.
            self._pods_version = self._watcher.version
            configs += [
                BackendConfig(
                    vllm.Upstream(
                        pod.name, f"http://{pod.ip}:{settings.K8S_BACKEND_PORT}", default.api_key
                    )
                )
                for pod in self._watcher.pods()
                if pod.usable
            ]
        elif default.base_url and not any(c.upstream.name == DEFAULT_BACKEND for c in configs):
            configs.insert(0, BackendConfig(default))
        self.sync(configs)

    def sync(self, configs: Iterable[BackendConfig]) -> None:
        """Take a new list of backends, keeping what was learned about unchanged ones."""
        fresh: dict[str, Replica] = {}
        for config in configs:
            known = self.replicas.get(config.upstream.name)
            if known is None or known.upstream != config.upstream:
                known = Replica(config.upstream)
            known.weight, known.draining = max(config.weight, 1), config.draining
            fresh[config.upstream.name] = known
        self.replicas = fresh

    def forget(self) -> None:
        """Drop what was learned and re-read the backends on the next request."""
        if self._poller is not None and self._loop is not None and not self._loop.is_closed():
            # The caller may be another thread than the loop's (tests, a management command).
            self._loop.call_soon_threadsafe(self._poller.cancel)
        self.replicas, self._rows = {}, []
        self._default_source, self._poller, self._loaded = None, None, False
        self._watcher, self._pods_version = None, -1

    # --- routing -------------------------------------------------------------------

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
            for card in replica.cards:
                cards.setdefault(str(card["id"]), card)
        return list(cards.values())

    def routes(self, model: str, session: str | None = None) -> list[Replica]:
        """The backends to try for `model`, best first; raises ModelNotServed when no
        backend serves it (and every backend's models are known)."""
        replicas = list(self.replicas.values())
        if len(replicas) <= 1:
            return replicas
        serving = [r for r in replicas if r.serves(model) and not r.draining]
        live = [r for r in serving if not r.ejected]
        unknown = [r for r in replicas if r.models is None and not r.draining]
        if not serving and not unknown:
            served = ", ".join(self.served_models()) or "none right now"
            raise ModelNotServed(
                f"The model `{model}` does not exist. Served models: {served}.", param="model"
            )
        ejected = [r for r in serving if r.ejected]
        return _order(live, session) + _order(unknown, session) + ejected

    async def open(
        self,
        path: str,
        *,
        content: bytes,
        model: str,
        session: str | None = None,
        request_id: str | None = None,
    ) -> vllm.UpstreamResponse:
        """Send a POST to the best backend for `model`, failing over to the next before
        any response byte (connection refused or reset, a 503 from a starting vLLM);
        round after round with backoff for UPSTREAM_RETRY_SECONDS. Once a backend has
        started answering, the request is never sent again."""
        deadline = time.monotonic() + settings.UPSTREAM_RETRY_SECONDS
        delay = 0.05
        attempts = 0
        last_error: vllm.NotReached | None = None
        while True:
            candidates = self.routes(model, session)
            if not candidates:
                raise UpstreamUnavailable(
                    "No vLLM backend is configured or discovered right now.",
                    code="no_backend",
                    headers={"Retry-After": "5"},
                )
            for index, replica in enumerate(candidates):
                attempts += 1
                _begin(replica)
                try:
                    response = await vllm.send(
                        replica.upstream, "POST", path, content=content, request_id=request_id
                    )
                except UpstreamTimeout as exc:
                    _end(replica)
                    exc.attempts = attempts
                    raise
                except vllm.NotReached as exc:
                    _end(replica)
                    self._failed(replica, exc.message)
                    last_error = exc
                    continue
                # The next backend answers instead of a 503, and instead of a 404 from a
                # backend whose models are not known yet (its first look failed), tried in
                # case it serves the model (CI: a request for a model two replicas serve
                # was answered 404 by the third backend, which serves another).
                unknown_model = response.status == 404 and replica.models is None
                if (response.status == 503 or unknown_model) and index < len(candidates) - 1:
                    await response.aclose()
                    _end(replica)
                    if response.status == 503:
                        self._failed(replica, "answered 503")
                    continue
                replica.failures = 0
                response.attempts = attempts
                response.on_close = functools.partial(_end, replica)
                return response
            if time.monotonic() + delay > deadline:
                where = candidates[0].upstream.base_url if len(candidates) == 1 else "every backend"
                raise vllm.unreachable(where, attempts, last_error) from last_error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _failed(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        if len(self.replicas) > 1 and replica.failures >= settings.BACKEND_MAX_FAILURES:
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
        """Re-read the backend rows, then look at every backend not cooling down."""
        await self._read_rows()
        self._apply()
        await self._check_all()

    async def _check_all(self) -> None:
        now = time.monotonic()
        due = [r for r in self.replicas.values() if r.ejected_until <= now]
        await asyncio.gather(*(self._check(replica) for replica in due))

    async def _check(self, replica: Replica) -> None:
        found = await vllm.health_check(
            wait=settings.BACKEND_POLL_TIMEOUT, upstream=replica.upstream, with_metrics=False
        )
        if not found.healthy:
            replica.eject(found.detail)
            return
        if found.listed:
            replica.cards = tuple(card for card in found.models if "id" in card)
            replica.models = tuple(str(card["id"]) for card in replica.cards)
        # else its models stay as last learned (unknown if never): a list that did not
        # come in time made a backend serve nothing until the next look, and requests
        # for its model got 404 (CI, a loaded machine: "Served models: alpha." of three).
        replica.restore()


def _begin(replica: Replica) -> None:
    replica.in_flight += 1
    BACKEND_IN_FLIGHT.labels(replica.name).inc()


def _end(replica: Replica) -> None:
    replica.in_flight -= 1
    BACKEND_IN_FLIGHT.labels(replica.name).dec()


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


def _rows() -> list[BackendConfig]:
    return [
        BackendConfig(upstream, weight=weight, draining=draining)
        for upstream, weight, draining in backend_upstreams()
    ]


pool = Pool()
