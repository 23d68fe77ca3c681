"""The model lifecycle's Prometheus families, read from the database at scrape time (the
worker that does the work is another process): bytes of the active downloads and how long
the last switches took."""

from collections.abc import Iterator

from django.db.models import Sum
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from modelmgr.models import ACTIVE_DOWNLOAD_STATUSES, DownloadJob, ModelSwitch


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
                ModelSwitch.objects.filter(phase=outcome, finished_at__isnull=False)
                .order_by("-finished_at")
                .first()
            )
            if last is not None and last.duration_seconds is not None:
                durations.add_metric([outcome], last.duration_seconds)
        yield durations
