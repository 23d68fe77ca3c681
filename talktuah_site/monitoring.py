"""Monitoring of the whole service, which both apps feed: /api/healthz (one cheap answer,
cached about a second, about vLLM, the model it serves, its queue, a switch in progress,
the GPU and every backend), /livez, /readyz and /metrics (the gateway's families, the lifecycle's,
django-prometheus's, and vLLM's `vllm:*` ones)."""

import asyncio
import hmac
import os
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema, Status
from ninja.security import HttpBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from backends.health import BackendHealth
from backends.pool import Replica, pool
from modelmgr.metrics import LifecycleCollector
from modelmgr.schemas import SwitchOut
from modelmgr.selectors import active_switch, switch_summary
from plumbing import gpu, vllm
from plumbing.db import run_sync
from plumbing.errors import Forbidden, Unauthenticated
from proxy.metrics import UPSTREAM_UP
from proxy.shutdown import is_draining

HEALTH_CACHE_SECONDS = 1.0

router = Router(tags=["Monitoring"])

# --- /api/healthz -----------------------------------------------------------------------


class UpstreamHealthOut(Schema):
    reachable: bool
    healthy: bool
    latency_ms: float | None
    detail: str


class ServedModelOut(Schema):
    id: str | None
    max_model_len: int | None


class GpuOut(Schema):
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int


class BackendHealthOut(Schema):
    name: str
    status: str  # ok, degraded or down
    reachable: bool
    healthy: bool
    ejected: bool  # left out of routing until a probe finds it healthy
    draining: bool
    latency_ms: float | None
    detail: str
    models: list[str]
    in_flight: int  # requests this gateway process has sent it and not finished
    queue: dict[str, float] | None  # waiting, running, kv_cache_usage (vLLM's own)
    # The gateway's admission queue in this process: capacity, running, waiting by tier.
    admission: dict[str, Any]


class HealthOut(Schema):
    status: str  # ok, loading, degraded or down
    upstream: UpstreamHealthOut  # the first backend (VLLM_BASE_URL's when it is set)
    model: ServedModelOut | None
    switch: SwitchOut | None
    queue: dict[str, float] | None  # waiting, running, kv_cache_usage
    gpu: list[GpuOut] | str  # "unknown" without NVML
    backends: list[BackendHealthOut]


_cached: tuple[float, int, dict[str, Any]] | None = None
_lock: asyncio.Lock | None = None


def _backend_entry(replica: Replica, found: BackendHealth) -> dict[str, Any]:
    return {
        "name": replica.name,
        "status": found.status,
        "reachable": found.reachable,
        "healthy": found.healthy,
        "ejected": replica.ejected,
        "draining": replica.draining,
        "latency_ms": found.latency_ms,
        "detail": found.detail,
        "models": list(found.models),
        "in_flight": replica.in_flight,
        "queue": found.queue,
        "admission": replica.queue.figures(),
    }


async def _compute() -> tuple[int, dict[str, Any]]:
    await pool.ready()
    # Each backend looked at afresh once per answer (the answer itself is cached for
    # HEALTH_CACHE_SECONDS): what it says is vLLM's now, and its records are refreshed.
    looked = await pool.look(max_age=0.0)
    first = looked[0][1] if looked else None
    switch = await run_sync(active_switch)
    gpus = await asyncio.to_thread(gpu.gpus)
    cards = first.cards if first is not None and first.healthy else ()
    served = cards[0] if cards else None
    statuses = [found.status for _replica, found in looked] or ["down"]
    if switch is not None and not (served and served.get("id") == switch.to_model):
        status = "loading"
    elif all(found == "ok" for found in statuses):
        status = "ok"
    elif all(found == "down" for found in statuses):
        status = "down"
    else:
        status = "degraded"
    UPSTREAM_UP.set(1 if first is not None and first.healthy else 0)
    body = {
        "status": status,
        "upstream": {
            "reachable": first.reachable if first else False,
            "healthy": first.healthy if first else False,
            "latency_ms": first.latency_ms if first else None,
            "detail": first.detail if first else "no backend is configured",
        },
        "model": {"id": served.get("id"), "max_model_len": served.get("max_model_len")}
        if served
        else None,
        "switch": switch_summary(switch) if switch is not None else None,
        "queue": first.queue if first else None,
        "gpu": gpus if gpus is not None else "unknown",
        "backends": [_backend_entry(replica, found) for replica, found in looked],
    }
    return (200 if status == "ok" else 503), body


async def health() -> tuple[int, dict[str, Any]]:
    """The health answer, computed at most once per HEALTH_CACHE_SECONDS per process."""
    global _cached, _lock
    now = time.monotonic()
    if _cached is not None and now - _cached[0] < HEALTH_CACHE_SECONDS:
        return _cached[1], _cached[2]
    if _lock is None:
        _lock = asyncio.Lock()
    async with _lock:
        # Concurrent probes wait for the one computing instead of each asking vLLM.
        if _cached is not None and time.monotonic() - _cached[0] < HEALTH_CACHE_SECONDS:
            return _cached[1], _cached[2]
        status, body = await _compute()
        _cached = (time.monotonic(), status, body)
        return status, body


def forget_health() -> None:
    global _cached
    _cached = None


@router.get("/api/healthz", auth=None, response={200: HealthOut, 503: HealthOut})
async def healthz(request: HttpRequest) -> Status[dict[str, Any]]:
    """Overall status (ok, loading, degraded, down), vLLM's reachability and latency, the
    served model, a switch in progress, the queue and the GPU. 200 when ok, else 503."""
    return Status(*await health())


class ProbeOut(Schema):
    status: str


@router.get("/livez", auth=None, response=ProbeOut)
async def livez(request: HttpRequest) -> dict[str, str]:
    """The process is alive (no dependency checked)."""
    return {"status": "alive"}


@router.get("/readyz", auth=None, response={200: ProbeOut, 503: ProbeOut})
async def readyz(request: HttpRequest) -> Status[dict[str, str]]:
    """Ready to proxy; 503 while draining at shutdown."""
    if is_draining():
        return Status(503, {"status": "draining"})
    return Status(200, {"status": "ready"})


# --- /metrics ---------------------------------------------------------------------------

_lifecycle_collector = LifecycleCollector()
# Single-process mode: the lifecycle families in a registry of their own (the default
# registry holds the live metrics and django-prometheus's).
_LIFECYCLE_REGISTRY = CollectorRegistry()
_LIFECYCLE_REGISTRY.register(_lifecycle_collector)


def gateway_exposition() -> bytes:
    """The gateway's families (all workers' in multiprocess mode) in text format.
    Synchronous: it reads the database."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(_lifecycle_collector)
        return generate_latest(registry)
    return generate_latest(REGISTRY) + generate_latest(_LIFECYCLE_REGISTRY)


class MetricsToken(HttpBearer):
    """`Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set; else open if
    METRICS_PUBLIC (the default only in DEBUG), closed otherwise."""

    def __call__(self, request: HttpRequest) -> Any:
        if not settings.METRICS_TOKEN:
            if settings.METRICS_PUBLIC:
                return True
            raise Forbidden(
                "GET /metrics is closed: set METRICS_TOKEN and scrape with it, or set "
                "METRICS_PUBLIC=true if only your network can reach it.",
                code="metrics_closed",
            )
        # Not HttpBearer's __call__: the answer to a missing or malformed header is this
        # message, not the API-key one, and a header is never logged.
        scheme, _, token = request.headers.get(self.header, "").partition(" ")
        return self.authenticate(request, token if scheme.lower() == "bearer" else "")

    def authenticate(self, request: HttpRequest, token: str) -> bool:
        if not hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode()):
            raise Unauthenticated("The metrics need 'Authorization: Bearer <METRICS_TOKEN>'.")
        return True


@router.get("/metrics", auth=MetricsToken(), include_in_schema=False)
async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition: the gateway's families, then vLLM's `vllm:*` ones of every
    backend, each sample labelled with its backend."""
    await pool.ready()
    looked = await pool.look(max_age=0.0)  # a scrape shows vLLM's figures of now
    UPSTREAM_UP.set(1 if looked and looked[0][1].metrics_text is not None else 0)
    own = await run_sync(gateway_exposition)
    found = [(r.name, record.metrics_text) for r, record in looked if record.metrics_text]
    return HttpResponse(
        own + vllm.labelled_families(found).encode(), content_type=CONTENT_TYPE_LATEST
    )
