"""Health of the whole service, as load balancers and operators ask for it: one cheap
answer (cached about a second, so a storm of probes costs vLLM a few requests) about
vLLM, the model it serves, its queue, a switch in progress, and the GPU."""

import asyncio
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelmgr.lifecycle import active_switch, switch_summary
from plumbing import gpu, vllm
from plumbing.db import run_sync
from proxy.metrics import UPSTREAM_UP

HEALTH_CACHE_SECONDS = 1.0

_cached: tuple[float, int, dict[str, Any]] | None = None
_lock: asyncio.Lock | None = None
_draining = False


def start_draining() -> None:
    """From now on /readyz answers 503 (the process is shutting down)."""
    global _draining
    _draining = True


def is_draining() -> bool:
    return _draining


def queue_figures(metrics_text: str | None) -> dict[str, float] | None:
    """Waiting and running requests and KV-cache usage from vLLM's /metrics."""
    if not metrics_text:
        return None
    wanted = {
        "vllm:num_requests_waiting": "waiting",
        "vllm:num_requests_running": "running",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
    }
    figures: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name in wanted:
                figures[wanted[family.name]] = sum(sample.value for sample in family.samples)
    except ValueError:
        return None
    return figures or None


async def _compute() -> tuple[int, dict[str, Any]]:
    probe = await vllm.health_check()
    switch = await run_sync(active_switch)
    gpus = await asyncio.to_thread(gpu.gpus)
    served = probe.models[0] if probe.models else None
    if switch is not None and not (served and served.get("id") == switch.to_model):
        status = "loading"
    elif not probe.reachable:
        status = "down"
    elif not probe.healthy or not served or probe.metrics_text is None:
        status = "degraded"
    else:
        status = "ok"
    UPSTREAM_UP.set(1 if probe.healthy else 0)
    body = {
        "status": status,
        "upstream": {
            "reachable": probe.reachable,
            "healthy": probe.healthy,
            "latency_ms": probe.latency_ms,
            "detail": probe.detail,
        },
        "model": {"id": served.get("id"), "max_model_len": served.get("max_model_len")}
        if served
        else None,
        "switch": switch_summary(switch) if switch is not None else None,
        "queue": queue_figures(probe.metrics_text),
        "gpu": gpus if gpus is not None else "unknown",
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
