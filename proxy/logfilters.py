"""Logging filters: keep Django's request log for real failures. The proxy writes its
own access log line per request, and health probes answer 503 on purpose."""

import logging

PROBE_PATHS = ("/api/healthz", "/readyz", "/livez")


class ExpectedResponses(logging.Filter):
    """Drops django.request records of 4xx answers and of health-probe answers."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        request = getattr(record, "request", None)
        if request is not None and getattr(request, "path", "") in PROBE_PATHS:
            return False
        return not (isinstance(status, int) and status < 500)
