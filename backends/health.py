"""One health record per backend, kept by this process: reachable, healthy, the models
it serves, its queue, latency. The pool's poller writes them every BACKEND_POLL_SECONDS;
/api/healthz, /metrics, the admin, the selectors and the worker read them, asking for a
fresh look only when the record is older than they can use (`max_age`), so one page or
one health answer never looks at a backend twice.

The async look (`look`) is the gateway's; the sync one (`look_sync`, the same shape) is
the worker's and the admin's: both go through `plumbing.vllm`'s one look at a vLLM."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from backends.spec import BackendSpec
from plumbing import vllm


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What the last look at one backend found."""

    backend: str
    reachable: bool
    healthy: bool
    cards: tuple[dict[str, Any], ...]  # its /v1/models entries, as this look found them
    # What it was last seen serving, kept while it is down or its list is late (routing
    # needs it: an ejected backend is still the last resort for its models); None while
    # its list never came.
    known_cards: tuple[dict[str, Any], ...] | None
    # The model names of both, worked out once (routing reads them on every request).
    models: tuple[str, ...]
    known_models: tuple[str, ...] | None
    queue: dict[str, float] | None  # waiting, running, kv_cache_usage (vLLM's gauges)
    latency_ms: float | None
    detail: str
    metrics_text: str | None = field(default=None, repr=False)
    checked_at: float = 0.0  # monotonic

    @property
    def served(self) -> str | None:
        """The model it serves (the first it lists), or None."""
        return self.models[0] if self.healthy and self.models else None

    @property
    def status(self) -> str:
        """ok, degraded (up, but unhealthy, serving nothing or without metrics) or down."""
        if not self.reachable:
            return "down"
        if not self.healthy or not self.cards or self.metrics_text is None:
            return "degraded"
        return "ok"

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.checked_at


_records: dict[str, BackendHealth] = {}
_lock = threading.Lock()  # the poller (event loop) and the admin's threads both write


def record(name: str) -> BackendHealth | None:
    """The last record of a backend, however old (None before its first look)."""
    return _records.get(name)


def forget() -> None:
    """Drop every record (tests; a changed configuration)."""
    with _lock:
        _records.clear()


def _store(spec: BackendSpec, found: vllm.Health) -> BackendHealth:
    with _lock:
        previous = _records.get(spec.name)
        known = previous.known_cards if previous is not None else None
        cards = tuple(found.models)
        if found.listed:
            known = cards
        elif found.healthy and known is not None:
            # A list that did not come in time keeps the models it was last seen
            # serving: on a loaded machine a late /v1/models made a backend serve
            # nothing until the next look (CI: "Served models: alpha." of three).
            cards = known
        fresh = BackendHealth(
            backend=spec.name,
            reachable=found.reachable,
            healthy=found.healthy,
            cards=cards,
            known_cards=known,
            models=_names(cards),
            known_models=None if known is None else _names(known),
            queue=vllm.queue_figures(found.metrics_text),
            latency_ms=found.latency_ms,
            detail=found.detail,
            metrics_text=found.metrics_text,
            checked_at=time.monotonic(),
        )
        _records[spec.name] = fresh
        return fresh


def _names(cards: tuple[dict[str, Any], ...]) -> tuple[str, ...]:
    return tuple(str(card["id"]) for card in cards if "id" in card)


def _usable(spec: BackendSpec, max_age: float) -> BackendHealth | None:
    found = _records.get(spec.name)
    if found is not None and found.age() <= max_age:
        return found
    return None


async def look(spec: BackendSpec, *, max_age: float = 0.0) -> BackendHealth:
    """The backend's record, looked at afresh when it is older than `max_age` seconds."""
    return _usable(spec, max_age) or _store(
        spec, await vllm.health_check(spec.upstream, wait=settings.BACKEND_POLL_TIMEOUT)
    )


def look_sync(spec: BackendSpec, *, max_age: float = 0.0) -> BackendHealth:
    """`look` for synchronous callers (the worker, the admin, the selectors)."""
    return _usable(spec, max_age) or _store(
        spec, vllm.health_check_sync(spec.upstream, wait=settings.BACKEND_POLL_TIMEOUT)
    )


def look_all_sync(specs: list[BackendSpec], *, max_age: float) -> list[BackendHealth]:
    """Every backend's record, the stale ones looked at in parallel (a dead backend costs
    one timeout, not one per backend)."""
    found = {spec.name: usable for spec in specs if (usable := _usable(spec, max_age))}
    stale = [spec for spec in specs if spec.name not in found]
    if stale:
        with ThreadPoolExecutor(max_workers=len(stale)) as threads:
            found.update(zip((s.name for s in stale), threads.map(look_sync, stale), strict=True))
    return [found[spec.name] for spec in specs]
