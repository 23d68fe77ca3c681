"""The model lifecycle's Prometheus families, read from the database at scrape time (the
worker that does the work is another process): bytes of the active downloads, how long
the last switches took, and the engines' crashes and restarts (rows of the switch
history, which the worker's supervision writes)."""

from collections.abc import Iterator

from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from modelmgr.models import (
    ACTIVE_DOWNLOAD_STATUSES,
    DownloadJob,
    ModelSwitch,
    SwitchKind,
    SwitchPhase,
)


class LifecycleCollector(Collector):
    """Download bytes and switch durations, read from the database at scrape time (the
    worker that does the work is another process)."""

    def collect(self) -> Iterator[Metric]:
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
                ModelSwitch.objects.filter(
                    kind=SwitchKind.SWITCH, phase=outcome, finished_at__isnull=False
                )
                .order_by("-finished_at")
                .first()
            )
            if last is not None and last.duration_seconds is not None:
                durations.add_metric([outcome], last.duration_seconds)
        yield durations
        yield from _engine_events()


def _engine_events() -> Iterator[Metric]:
    crashes = CounterMetricFamily(
        "talktuah_engine_crashes",
        "vLLM crashes the worker's supervision saw (exited, stopped, or failing /health).",
        labels=["backend"],
    )
    restarts = CounterMetricFamily(
        "talktuah_engine_restarts",
        "Restarts of vLLM on the model it served: the supervisor's, requested ones, and "
        "those of what runs it (Docker's restart policy, the kubelet).",
        labels=["backend"],
    )
    counted = (
        ModelSwitch.objects.filter(kind__in=(SwitchKind.CRASH, SwitchKind.RESTART))
        .exclude(phase=SwitchPhase.REQUESTED)  # a restart counts once it started
        .values("backend", "kind")
        .annotate(n=Count("pk"))
        .order_by("backend", "kind")
    )
    for row in counted:
        family = crashes if row["kind"] == SwitchKind.CRASH else restarts
        family.add_metric([row["backend"]], float(row["n"]))
    yield crashes
    yield restarts
