"""The pool's own families: whether each backend is in routing and what it has in flight
(the request path's families are in proxy/metrics.py)."""

from prometheus_client import Counter, Gauge, Histogram

BACKEND_UP = Gauge(
    "talktuah_backend_up",
    "1 while a backend passes its polls and requests, 0 while it is ejected.",
    ["backend"],
    multiprocess_mode="mostrecent",
)
BACKEND_IN_FLIGHT = Gauge(
    "talktuah_backend_in_flight",
    "Requests sent to a backend and not finished.",
    ["backend"],
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "talktuah_queue_depth",
    "Requests waiting in the gateway for a slot on a full backend, by tier.",
    ["backend", "tier"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "talktuah_queue_wait_seconds",
    "How long admitted requests waited for a slot on a full backend, by tier.",
    ["backend", "tier"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
ADMISSION_REFUSED = Counter(
    "talktuah_admission_refused_total",
    "Requests refused a slot: queue_full, queue_timeout or parallel_cap.",
    ["backend", "tier", "reason"],
)
BACKEND_CAPACITY = Gauge(
    "talktuah_backend_capacity",
    "Requests this process admits to a backend at once (its share of the capacity).",
    ["backend"],
    multiprocess_mode="livesum",
)
BACKEND_ADMITTED = Gauge(
    "talktuah_backend_admitted",
    "Requests this process admitted to a backend and not finished.",
    ["backend"],
    multiprocess_mode="livesum",
)
