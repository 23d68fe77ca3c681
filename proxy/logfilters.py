"""Logging filters: keep Django's request log for real failures (the proxy writes its
own access log line per request, and health probes answer 503 on purpose), and keep
what any client can cause at will from flooding the log."""

import logging
import time

PROBE_PATHS = ("/api/healthz", "/readyz", "/livez")


class ExpectedResponses(logging.Filter):
    """Drops django.request records of 4xx answers and of health-probe answers."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        request = getattr(record, "request", None)
        if request is not None and getattr(request, "path", "") in PROBE_PATHS:
            return False
        return not (isinstance(status, int) and status < 500)


class OncePerMinute(logging.Filter):
    """Lets one record a minute through per logger of Django's security loggers, as a
    warning without its traceback, saying how many were held back since the last; other
    records pass untouched. Every request with a Host header not in ALLOWED_HOSTS logs an
    ERROR with a traceback on django.security.DisallowedHost, so any client could fill
    the log (and the disk) at will; an operator needs to know it happens, not each time."""

    INTERVAL = 60.0
    LOGGERS = "django.security."

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LOGGERS):
            return True
        now = time.monotonic()
        last = self._last.get(record.name)
        if last is not None and now - last < self.INTERVAL:
            self._held[record.name] = self._held.get(record.name, 0) + 1
            return False
        self._last[record.name] = now
        held = self._held.pop(record.name, 0)
        message = record.getMessage()
        if held:
            message += f" ({held} more like it since the last such line, not logged)"
        record.msg, record.args = message, None
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
