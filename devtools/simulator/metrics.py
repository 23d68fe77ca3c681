"""The simulator's Prometheus metrics: vLLM's families that matter to the gateway.

Like vLLM, it exposes them with prometheus_client, so names, help texts, types, labels,
buckets and the `_created` series come out as vLLM 0.32 sends them (checked against
tests/wire/vllm-0.32/metrics.txt). Each simulator has a registry of its own, so several
can run in one process. The `simulator_*` counters are for tests only; vLLM has no such
family, and they carry no `_created` series.
"""

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from devtools.simulator.batch import Batch

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# vLLM 0.32's buckets for these histograms (E2E_BUCKETS for the queue time too).
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class SimulatorCounters(Collector):
    """The `simulator_*` counters: what tests check that vLLM does not count."""

    def __init__(self) -> None:
        self.requests = 0  # generation requests accepted
        self.http_requests = 0  # every HTTP request, any route (for cache tests)
        self.aborted_requests = 0  # ... whose client left before the end
        self.rejected_requests = 0  # generation requests refused with a 4xx

    def collect(self) -> Iterator[Metric]:
        for name, help_text, value in (
            ("requests", "Generation requests the simulator accepted.", self.requests),
            (
                "http_requests",
                "HTTP requests of any route, this scrape included.",
                self.http_requests,
            ),
            (
                "aborted_requests",
                "Generation requests whose client disconnected before the end.",
                self.aborted_requests,
            ),
            (
                "rejected_requests",
                "Generation requests refused with a 4xx error.",
                self.rejected_requests,
            ),
        ):
            yield CounterMetricFamily(f"simulator_{name}", help_text, value=value)


class SimulatorMetrics:
    """The metrics of one simulated vLLM serving `model`, on a registry of their own.

    The running and waiting gauges read `batch` at each scrape.
    """

    def __init__(self, model: str, batch: Batch) -> None:
        self.registry = registry = CollectorRegistry()
        # vLLM's /metrics starts with the Python and process families, as here.
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        ProcessCollector(registry=registry)

        labels = {"engine": "0", "model_name": model}
        names = list(labels)
        Gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            names,
            registry=registry,
        ).labels(**labels).set_function(lambda: batch.running)
        Gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            names,
            registry=registry,
        ).labels(**labels).set_function(lambda: batch.waiting)
        by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
            "budget, KV transfer, blocked status). Sum of all reasons equals "
            "vllm:num_requests_waiting.",
            [*names, "reason"],
            registry=registry,
        )
        # The simulator's requests only ever wait for a slot in the batch.
        by_reason.labels(**labels, reason="capacity").set_function(lambda: batch.waiting)
        by_reason.labels(**labels, reason="deferred")
        Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            names,
            registry=registry,
        ).labels(**labels).set_function(lambda: min(1.0, batch.running * 0.01))
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=registry
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            names,
            registry=registry,
        ).labels(**labels)
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=registry,
        )
        # Every reason from the start, at 0, as vLLM shows them.
        self.request_success = {
            reason: success.labels(**labels, finished_reason=reason) for reason in FINISHED_REASONS
        }
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            registry=registry,
            buckets=TTFT_BUCKETS,
        ).labels(**labels)
        self.e2e_request_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            names,
            registry=registry,
            buckets=E2E_BUCKETS,
        ).labels(**labels)
        self.request_queue_time = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            names,
            registry=registry,
            buckets=E2E_BUCKETS,
        ).labels(**labels)
        self.counters = SimulatorCounters()
        registry.register(self.counters)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of /metrics."""
        return generate_latest(self.registry)
