"""The gateway's own Prometheus metrics, and the one exposition of /metrics: these, the
lifecycle's (from the database, at scrape time), django-prometheus's, and vLLM's `vllm:*`
families appended when vLLM answers.

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (emptied at each start; the
`serve` command does both): every worker writes its samples there and a scrape sums them.
Label values stay bounded: key names (never keys) and model names vLLM serves.
"""

import os
from collections.abc import Iterator

from django.db.models import Sum
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1)

REQUESTS = Counter(
    "talktuah_requests",
    "Proxied requests by key name, model, endpoint and HTTP status.",
    ["key", "model", "endpoint", "status"],
)
UPSTREAM_LATENCY = Histogram(
    "talktuah_upstream_latency_seconds",
    "Time from sending a request to vLLM to the end of its answer.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "talktuah_time_to_first_token_seconds",
    "Time from the request reaching the gateway to the first streamed chunk sent.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "talktuah_overhead_seconds",
    "Time the gateway itself adds to a request (auth, limits, relaying), vLLM excluded.",
    ["endpoint"],
    buckets=OVERHEAD_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "talktuah_prompt_tokens", "Prompt tokens by key name and model.", ["key", "model"]
)
COMPLETION_TOKENS = Counter(
    "talktuah_completion_tokens", "Completion tokens by key name and model.", ["key", "model"]
)
ACTIVE_STREAMS = Gauge(
    "talktuah_active_streams", "Streams being relayed now.", multiprocess_mode="livesum"
)
RETRIES = Counter(
    "talktuah_upstream_retries", "Upstream requests sent again before any byte came back."
)
RATE_LIMITED = Counter(
    "talktuah_rate_limited", "Requests refused by a rate limit.", ["key", "limit"]
)
UPSTREAM_UP = Gauge(
    "talktuah_upstream_up",
    "1 when vLLM answered the last probe or request, else 0.",
    multiprocess_mode="mostrecent",
)


class LifecycleCollector(Collector):
    """Download bytes and switch durations, read from the database at scrape time (the
    worker that does the work is another process)."""

    def collect(self) -> Iterator[Metric]:
        from modelmgr.models import ACTIVE_DOWNLOAD_STATUSES, DownloadJob, ModelSwitch

        active = DownloadJob.objects.filter(status__in=ACTIVE_DOWNLOAD_STATUSES).aggregate(
            done=Sum("bytes_done"), total=Sum("bytes_total")
        )
        done = GaugeMetricFamily(
            "talktuah_download_bytes", "Bytes of the active downloads.", labels=["state"]
        )
        done.add_metric(["done"], float(active["done"] or 0))
        done.add_metric(["total"], float(active["total"] or 0))
        yield done
        durations = GaugeMetricFamily(
            "talktuah_switch_duration_seconds",
            "Duration of the last finished model switch, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("ready", "failed"):
            last = (
                ModelSwitch.objects.filter(phase=outcome, finished_at__isnull=False)
                .order_by("-finished_at")
                .first()
            )
            if last is not None and last.duration_seconds is not None:
                durations.add_metric([outcome], last.duration_seconds)
        yield durations


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


def vllm_families(text: str) -> str:
    """Only vLLM's own `vllm:*` families of its exposition: its generic process_* and
    python_* families would clash with the gateway's."""
    kept = []
    for line in text.splitlines():
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[2].startswith("vllm:"):
                kept.append(line)
        elif line.startswith("vllm:"):
            kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""
