"""The request path's Prometheus metrics (talktuah_site/monitoring.py exposes them on
/metrics with the lifecycle's, django-prometheus's and vLLM's families).

With several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (emptied at each start; the
`serve` command does both): every worker writes its samples there and a scrape sums them.
Label values stay bounded: key names (never keys) and model names vLLM serves.
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1)

REQUESTS = Counter(
    "talktuah_requests",
    "Proxied requests by key name, model, endpoint and HTTP status.",
    ["key", "model", "endpoint", "status"],
)
BACKEND_REQUESTS = Counter(
    "talktuah_backend_requests",
    "Requests sent on to a backend, by backend and HTTP status (none: no backend took it).",
    ["backend", "status"],
)
UPSTREAM_LATENCY = Histogram(
    "talktuah_upstream_latency_seconds",
    "Time from sending a request to vLLM to the end of its answer, by endpoint and backend.",
    ["endpoint", "backend"],
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
RATE_LIMIT_BYPASSED = Counter(
    "talktuah_rate_limit_bypassed",
    "Requests let through without a limit check because the shared cache (Redis) was"
    " away (RATELIMIT_FAIL_OPEN), by limit (requests, tokens).",
    ["limit"],
)
UPSTREAM_UP = Gauge(
    "talktuah_upstream_up",
    "1 when vLLM answered the last probe or request, else 0.",
    multiprocess_mode="mostrecent",
)
