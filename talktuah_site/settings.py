"""The only settings module: everything comes from the environment, with embedded
defaults (SQLite, local-memory cache, the simulator on :8001) that run with no setup.
Every variable read here is listed, with a one-line comment, in `.env.example`."""

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.getenv("TALKTUAH_VAR_DIR", BASE_DIR / "var"))


def envbool(name: str, default: bool) -> bool:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def envint(name: str, default: int) -> int:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def envfloat(name: str, default: float) -> float:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


DEBUG = envbool("DEBUG", True)
# Development only: a fixed key so sessions survive a restart of `make run`.
DEVELOPMENT_SECRET_KEY = "talktuah-insecure-development-key-do-not-use-in-production"
_MAKE_A_KEY = "; generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"


def weak_secret_key(key: str) -> bool:
    """Django's own measure (check --deploy, W009), plus the development key: it signs
    sessions and seals backend API keys, so a guessable one opens the admin."""
    return (
        len(key) < 50
        or len(set(key)) < 5
        or key == DEVELOPMENT_SECRET_KEY
        or key.startswith("django-insecure-")
    )


SECRET_KEY = os.getenv("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off" + _MAKE_A_KEY)
    SECRET_KEY = DEVELOPMENT_SECRET_KEY
elif not DEBUG and weak_secret_key(SECRET_KEY):
    raise ImproperlyConfigured(
        "SECRET_KEY is too weak for DEBUG off (it needs 50 or more characters, 5 or more "
        "of them different, and not a development default)" + _MAKE_A_KEY
    )

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "django_prometheus",
    "ninja",
    "backends",
    "proxy",
    "modelmgr",
    "teams",
    "devtools",
]

# The full stack, used by the admin and every route outside the proxy's lean path
# (see asgi.py: /v1/... and /api/chat skip these thread-hopping middlewares).
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # The admin's answer while the database is away: 503, not a 500 or a traceback.
    "talktuah_site.middleware.DatabaseUnavailableMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# Async-native middleware for the lean proxy path (no sync_to_async hop).
LEAN_MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "proxy.middleware.security_headers",
    "proxy.middleware.request_ids",
]

# Security headers. Django's defaults give nosniff, Referrer-Policy same-origin and
# X-Frame-Options DENY (proxy/middleware.py sends the same on the lean path); the admin and
# every other full-stack page may not be framed by any page (CSP frame-ancestors) either.
# HSTS once set (only send it when the site is HTTPS-only for good): it goes on HTTPS
# responses, which uvicorn recognises by X-Forwarded-Proto from a proxy in
# FORWARDED_ALLOW_IPS (uvicorn's variable, 127.0.0.1 by default).
SECURE_CSP = {"frame-ancestors": [CSP.NONE]}
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)

ROOT_URLCONF = "talktuah_site.urls"
ASGI_APPLICATION = "talktuah_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite by default so a fresh clone runs with no database server; DATABASE_URL
# (postgres://...) in production.
DATABASE_URL = os.getenv("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "db.sqlite3"),
            # The gateway, the worker and the tests' servers share the file: wait for
            # locks instead of failing, and take the write lock up front.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not memory: tests run the gateway on real sockets in other
            # threads and processes, which must see the same database. One per test
            # session, so two sessions on one checkout never share it.
            "TEST": {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")},
        }
    }
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)

# Local memory by default; Redis (REDIS_URL) when several workers or instances run,
# so rate limits (plumbing/counters.py) and the cache are shared.
REDIS_URL = os.getenv("REDIS_URL", "")
# Prepended to every key TalkTuah writes to Redis, so instances can share one.
CACHE_KEY_PREFIX = os.getenv("CACHE_KEY_PREFIX", "talktuah")
# Seconds a Redis call may take (connecting, then each reply) before it counts as
# Redis being away: an unreachable Redis must not hold requests up.
REDIS_TIMEOUT_SECONDS = envfloat("REDIS_TIMEOUT_SECONDS", 0.5)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            # Passed to redis-py's connection pool.
            "OPTIONS": {
                "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
                "socket_timeout": REDIS_TIMEOUT_SECONDS,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# The admin login refuses attempts from an address, or for a username, that failed this
# many times within the current minute (counted in the cache).
ADMIN_LOGIN_FAILURES_PER_MINUTE = envint("ADMIN_LOGIN_FAILURES_PER_MINUTE", 5)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# CORS for browser clients (like the original API's cors_origins_list); "*" allows any origin.
CORS_ORIGINS = envlist("CORS_ORIGINS")
CORS_ALLOW_ALL_ORIGINS = CORS_ORIGINS == ["*"]
CORS_ALLOWED_ORIGINS = [] if CORS_ALLOW_ALL_ORIGINS else CORS_ORIGINS
CORS_ALLOW_HEADERS = [
    "authorization",
    "content-type",
    "x-api-key",
    "x-request-id",
    "x-session-id",
]
CORS_EXPOSE_HEADERS = ["retry-after", "x-request-id", "x-talktuah-backend"]

# Request bodies above this size get 413, from the HTTP server (proxy/http.py) as soon as
# Content-Length or the bytes received pass it, and from Django's body check.
MAX_REQUEST_BYTES = envint("MAX_REQUEST_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Guards of the HTTP server (proxy/http.py): a request line and headers over this size get
# 431; a head (or a new connection's first request) that has not arrived whole within
# REQUEST_HEADER_TIMEOUT gets 408 and the connection closed; so does a body not received
# whole within REQUEST_BODY_TIMEOUT of its head (slow clients, slowloris).
MAX_REQUEST_HEAD_BYTES = envint("MAX_REQUEST_HEAD_BYTES", 64 * 1024)
REQUEST_HEADER_TIMEOUT = envfloat("REQUEST_HEADER_TIMEOUT", 10.0)
REQUEST_BODY_TIMEOUT = envfloat("REQUEST_BODY_TIMEOUT", 60.0)

# --- the upstream (vLLM) --------------------------------------------------------
VLLM_BASE_URL = os.getenv("VLLM_BASE_URL", "http://127.0.0.1:8001").rstrip("/")
VLLM_API_KEY = os.getenv("VLLM_API_KEY", "")
UPSTREAM_CONNECT_TIMEOUT = envfloat("UPSTREAM_CONNECT_TIMEOUT", 3.0)
UPSTREAM_READ_TIMEOUT = envfloat("UPSTREAM_READ_TIMEOUT", 600.0)
# Below uvicorn's (and so vLLM's) 5 s keep-alive, so we never reuse a socket the
# server is about to close.
UPSTREAM_KEEPALIVE_EXPIRY = envfloat("UPSTREAM_KEEPALIVE_EXPIRY", 4.0)
UPSTREAM_MAX_CONNECTIONS = envint("UPSTREAM_MAX_CONNECTIONS", 2000)
UPSTREAM_RETRY_SECONDS = envfloat("UPSTREAM_RETRY_SECONDS", 30.0)
UPSTREAM_TRANSPORT = os.getenv("UPSTREAM_TRANSPORT", "aiohttp")
if UPSTREAM_TRANSPORT not in ("httpx", "aiohttp"):
    raise ImproperlyConfigured("UPSTREAM_TRANSPORT must be httpx or aiohttp")

# The backends (Backend rows in the admin, beside the one VLLM_BASE_URL names; one alone
# too): how often each is looked at (/health, /v1/models, /metrics), how long one look
# may take, how long one that failed is left out before it is looked at again, and how
# many failed requests in a row take it out.
BACKEND_POLL_SECONDS = envfloat("BACKEND_POLL_SECONDS", 5.0)
BACKEND_POLL_TIMEOUT = envfloat("BACKEND_POLL_TIMEOUT", 2.0)
# A poll re-reads the Backend rows when they changed (a version bumped on every save, in
# Redis with REDIS_URL so every process sees it), and at least this often regardless: a
# row changed in another process without Redis is routed to within this many seconds.
BACKEND_ROWS_SECONDS = envfloat("BACKEND_ROWS_SECONDS", 30.0)
BACKEND_COOLDOWN_SECONDS = envfloat("BACKEND_COOLDOWN_SECONDS", 10.0)
BACKEND_MAX_FAILURES = envint("BACKEND_MAX_FAILURES", 3)

# Admission (backends/admission.py): how many requests a backend runs at once (a row's
# own capacity overrides; vLLM's default --max-num-seqs is 256 on a GPU), beyond which
# requests wait in the gateway in fair order; with WEB_CONCURRENCY workers each admits
# an equal part. No key takes the last ADMISSION_HEADROOM free slots while it holds one.
BACKEND_CAPACITY = envint("BACKEND_CAPACITY", 256)
WEB_CONCURRENCY = envint("WEB_CONCURRENCY", 1)
ADMISSION_HEADROOM = envint("ADMISSION_HEADROOM", 1)
# Requests that may wait per backend and tier, and how long (seconds) per tier; past
# either, 429 with Retry-After. A batch request waiting ADMISSION_PROMOTE_SECONDS goes
# ahead as if interactive (bounded starvation). Waiting streams get an SSE comment
# every ADMISSION_KEEPALIVE_SECONDS.
ADMISSION_MAX_QUEUE = envint("ADMISSION_MAX_QUEUE", 1000)
ADMISSION_MAX_WAIT_SECONDS = envfloat("ADMISSION_MAX_WAIT_SECONDS", 60.0)
ADMISSION_BATCH_MAX_WAIT_SECONDS = envfloat("ADMISSION_BATCH_MAX_WAIT_SECONDS", 600.0)
ADMISSION_PROMOTE_SECONDS = envfloat("ADMISSION_PROMOTE_SECONDS", 30.0)
ADMISSION_KEEPALIVE_SECONDS = envfloat("ADMISSION_KEEPALIVE_SECONDS", 5.0)
# A key's requests in flight at once (running or queued), unless the key sets its own.
KEY_MAX_PARALLEL_REQUESTS = envint("KEY_MAX_PARALLEL_REQUESTS", 64)
# VLLM_BASE_URL's vLLM runs --scheduling-policy priority: the gateway sets `priority`.
VLLM_PRIORITY_SCHEDULING = envbool("VLLM_PRIORITY_SCHEDULING", False)

# Prefix-cache isolation (proxy/salt.py): "key" sets vLLM's `cache_salt` to a secret
# value per key on every route that takes it (overriding the client's), so one key
# cannot time another's prompts through the shared prefix cache; "none" leaves it to
# the client (keys then share cached prefixes).
PREFIX_CACHE_ISOLATION = os.getenv("PREFIX_CACHE_ISOLATION", "key")
if PREFIX_CACHE_ISOLATION not in ("key", "none"):
    raise ImproperlyConfigured("PREFIX_CACHE_ISOLATION must be key or none")
# How long the gateway remembers which key created a Responses API response (and on
# which backend), so GET /v1/responses/{id}, its cancel and previous_response_id work
# for that key only (proxy/stored.py; in the cache: Redis shares it between workers).
RESPONSES_KEEP_SECONDS = envint("RESPONSES_KEEP_SECONDS", 86400)

# Kubernetes. BACKEND_DISCOVERY=kubernetes: the backends are also the ready pods matching
# K8S_BACKEND_SELECTOR in K8S_NAMESPACE (watched), each at http://<pod IP>:K8S_BACKEND_PORT,
# and VLLM_BASE_URL is not one of them. TALKTUAH_ENGINE=kubernetes switches models by
# patching Deployment K8S_DEPLOYMENT's container K8S_CONTAINER. The client reads KUBECONFIG
# when set, else the pod's service account, else ~/.kube/config.
BACKEND_DISCOVERY = os.getenv("BACKEND_DISCOVERY", "")
if BACKEND_DISCOVERY not in ("", "kubernetes"):
    raise ImproperlyConfigured("BACKEND_DISCOVERY must be empty or kubernetes")
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
K8S_NAMESPACE = os.getenv("K8S_NAMESPACE") or (
    _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    if _SERVICE_ACCOUNT_NAMESPACE.is_file()
    else "default"
)
K8S_BACKEND_SELECTOR = os.getenv("K8S_BACKEND_SELECTOR", "app.kubernetes.io/name=vllm")
K8S_BACKEND_PORT = envint("K8S_BACKEND_PORT", 8000)
K8S_WATCH_SECONDS = envfloat("K8S_WATCH_SECONDS", 300.0)  # one watch, then list again
K8S_DEPLOYMENT = os.getenv("K8S_DEPLOYMENT", "vllm")
K8S_CONTAINER = os.getenv("K8S_CONTAINER", "vllm")
KUBECONFIG = os.getenv("KUBECONFIG", "")

# Graceful shutdown: /readyz answers 503 this long before the listener closes...
SHUTDOWN_DRAIN_SECONDS = envfloat("SHUTDOWN_DRAIN_SECONDS", 5.0)
# ...then streams in flight get this long before they are ended with an SSE error event.
SHUTDOWN_GRACE_SECONDS = envfloat("SHUTDOWN_GRACE_SECONDS", 30.0)

# After start-up, everything loaded so far (Django, the apps, the libraries: ~140,000
# objects) moves out of the garbage collector's sight (gc.freeze): a full collection
# then looks only at what requests created, instead of pausing every request in the
# process for ~60-90 ms on this project's reference machine.
GC_FREEZE = envbool("GC_FREEZE", True)

# At most this many proxied requests start per turn of a worker's event loop (proxy/
# pacing.py), so a crowd arriving at once does not stall the streams in flight between
# two chunks (the last of the crowd starts a little later); 0 = no pacing.
REQUEST_STARTS_PER_TURN = envint("REQUEST_STARTS_PER_TURN", 4)

# --- keys, limits, usage --------------------------------------------------------
# The single key of TalkTuah's original API: this value is accepted as an admin key.
PROXY_API_KEY = os.getenv("PROXY_API_KEY", "")
API_KEY_CACHE_SECONDS = envfloat("API_KEY_CACHE_SECONDS", 5.0)
API_KEY_LAST_USED_INTERVAL = envfloat("API_KEY_LAST_USED_INTERVAL", 60.0)
DEFAULT_RPM_LIMIT = envint("DEFAULT_RPM_LIMIT", 600)
DEFAULT_TPM_LIMIT = envint("DEFAULT_TPM_LIMIT", 0)  # 0 = no token limit
RATELIMIT_ENABLE = envbool("RATELIMIT_ENABLE", True)
# While the shared cache (Redis) is away: true lets requests through unlimited (counted
# by talktuah_rate_limit_bypassed_total), false refuses them with 503 + Retry-After.
RATELIMIT_FAIL_OPEN = envbool("RATELIMIT_FAIL_OPEN", True)
USAGE_FLUSH_SECONDS = envfloat("USAGE_FLUSH_SECONDS", 2.0)

# When set, GET /metrics needs "Authorization: Bearer <METRICS_TOKEN>".
METRICS_TOKEN = os.getenv("METRICS_TOKEN", "")
# Without METRICS_TOKEN, /metrics is open only when this is true: by default in DEBUG, as
# its labels name keys (their names) and models. With DEBUG off set a token, or set this
# when the network already keeps /metrics private.
METRICS_PUBLIC = envbool("METRICS_PUBLIC", DEBUG)
# One JSON line per proxied request on the "talktuah.access" logger (key prefix, never keys
# or text); set false to silence it.
ACCESS_LOG = envbool("ACCESS_LOG", True)

LOG_LEVEL = os.getenv("LOG_LEVEL", "INFO")
# Records go through a queue to a thread that writes them (talktuah_site/logs.py), so a
# slow stderr never blocks the event loop.
LOGGING_CONFIG = "talktuah_site.logs.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "expected_responses": {"()": "proxy.logfilters.ExpectedResponses"},
        "once_per_minute": {"()": "proxy.logfilters.OncePerMinute"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "queued": {
            "class": "talktuah_site.logs.QueueHandler",
            # Django's security loggers (a bad Host header, an oversized form...): one
            # warning a minute each, not a traceback per request a client sends.
            "filters": ["once_per_minute"],
            "queue": "talktuah_site.logs.new_queue",
            "handlers": ["console"],
            "respect_handler_level": True,
        },
    },
    "root": {"handlers": ["queued"], "level": LOG_LEVEL},
    # httpx logs every request at INFO: far too chatty for the probes and the proxy.
    "loggers": {
        "django": {"level": "WARNING"},
        "django.request": {"level": "WARNING", "filters": ["expected_responses"]},
        "httpx": {"level": "WARNING"},
        "talktuah.access": {"level": "INFO" if ACCESS_LOG else "WARNING"},
    },
}

# --- model lifecycle: downloads, switches, the engine ----------------------------
# The Hugging Face cache vLLM reads (shared volume with the vLLM container).
HF_HOME = os.getenv("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
HF_CACHE_DIR = Path(os.getenv("HF_HUB_CACHE", str(Path(HF_HOME) / "hub")))
HF_ENDPOINT = os.getenv("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
HF_TOKEN = os.getenv("HF_TOKEN") or None
# How vLLM is controlled: process (a child of the worker), docker, or external.
TALKTUAH_ENGINE = os.getenv("TALKTUAH_ENGINE", "process")
if TALKTUAH_ENGINE not in ("process", "docker", "kubernetes", "external"):
    raise ImproperlyConfigured("TALKTUAH_ENGINE must be process, docker, kubernetes or external")
# The process engine's command; {model} {served_name} {port} {python} {manage}.
ENGINE_PROCESS_COMMAND = os.getenv(
    "ENGINE_PROCESS_COMMAND",
    "{python} {manage} vllm_simulator --model {model} --served-model-name {served_name}"
    " --port {port}",
)
ENGINE_STOP_GRACE_SECONDS = envfloat("ENGINE_STOP_GRACE_SECONDS", 10.0)
# The port the process engine's vLLM listens on: the port of VLLM_BASE_URL by default.
try:
    VLLM_PORT = envint("VLLM_PORT", 0) or urlsplit(VLLM_BASE_URL).port or 8001
except ValueError:
    raise ImproperlyConfigured(f"VLLM_BASE_URL has an invalid port: {VLLM_BASE_URL!r}") from None
# The process engine's log, and its state file (what runs, for a restarted worker).
ENGINE_LOG_FILE = Path(os.getenv("ENGINE_LOG_FILE") or VAR_DIR / "engine.log")
ENGINE_STATE_FILE = Path(os.getenv("ENGINE_STATE_FILE") or VAR_DIR / "engine.json")
# The docker engine's vLLM container.
VLLM_CONTAINER_NAME = os.getenv("VLLM_CONTAINER_NAME", "vllm")
# The model the process engine starts when the worker starts (empty = none).
VLLM_MODEL = os.getenv("VLLM_MODEL", "")
# A switch fails (and the old model is restarted) if the new one is not ready by then.
SWITCH_TIMEOUT_SECONDS = envfloat("SWITCH_TIMEOUT_SECONDS", 900.0)
# How long a chat request waits for a running switch before 503 + Retry-After.
SWITCH_WAIT_SECONDS = envfloat("SWITCH_WAIT_SECONDS", 120.0)
# Load on demand: a request naming a model that is downloaded on a switchable backend
# but served nowhere queues a switch there and waits for it (SWITCH_WAIT_SECONDS; a
# stream gets an SSE comment every SWITCH_KEEPALIVE_SECONDS meanwhile).
MODEL_AUTO_LOAD = envbool("MODEL_AUTO_LOAD", False)
SWITCH_KEEPALIVE_SECONDS = envfloat("SWITCH_KEEPALIVE_SECONDS", 5.0)
# Before a switch stops a backend's model, requests it is running finish, up to this long.
SWITCH_DRAIN_SECONDS = envfloat("SWITCH_DRAIN_SECONDS", 60.0)
WORKER_HEARTBEAT_SECONDS = envfloat("WORKER_HEARTBEAT_SECONDS", 5.0)
# A worker silent this long is considered dead (its running jobs are recovered).
WORKER_STALE_SECONDS = envfloat("WORKER_STALE_SECONDS", 30.0)
# Engine supervision (the worker watches the vLLM it runs): restart a crashed or hung
# vLLM always, on-failure (not after a clean exit, code 0) or never, as Docker's restart
# policy does; the n-th restart in a row waits ENGINE_RESTART_BACKOFF_SECONDS * 2^(n-1),
# at most ENGINE_RESTART_MAX_BACKOFF_SECONDS (a vLLM that served 10 s resets the count);
# ENGINE_RESTART_MAX_ATTEMPTS restarts in a row at most (0 = no limit).
ENGINE_RESTART_POLICY = os.getenv("ENGINE_RESTART_POLICY", "on-failure")
if ENGINE_RESTART_POLICY not in ("always", "on-failure", "never"):
    raise ImproperlyConfigured("ENGINE_RESTART_POLICY must be always, on-failure or never")
ENGINE_RESTART_BACKOFF_SECONDS = envfloat("ENGINE_RESTART_BACKOFF_SECONDS", 1.0)
ENGINE_RESTART_MAX_BACKOFF_SECONDS = envfloat("ENGINE_RESTART_MAX_BACKOFF_SECONDS", 60.0)
ENGINE_RESTART_MAX_ATTEMPTS = envint("ENGINE_RESTART_MAX_ATTEMPTS", 0)
# How often the worker looks at its engine (process, container, pods and /health), and
# how long a vLLM that was serving may fail /health before it counts as crashed.
ENGINE_CHECK_SECONDS = envfloat("ENGINE_CHECK_SECONDS", 1.0)
ENGINE_UNHEALTHY_SECONDS = envfloat("ENGINE_UNHEALTHY_SECONDS", 30.0)
# Progress writes of a running download, at most this many per second.
DOWNLOAD_PROGRESS_WRITES_PER_SECOND = envfloat("DOWNLOAD_PROGRESS_WRITES_PER_SECOND", 4.0)

# --- teams and token quotas (teams/, proxy/quota.py) -----------------------------
# The time zone whose calendar days and months the token quotas count in.
QUOTA_TIME_ZONE = os.getenv("QUOTA_TIME_ZONE", "UTC")
try:
    import zoneinfo

    zoneinfo.ZoneInfo(QUOTA_TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"QUOTA_TIME_ZONE must be an IANA time zone (e.g. Europe/Berlin), got {QUOTA_TIME_ZONE!r}"
    ) from None
# Tokens a request without max_tokens reserves for its answer (on top of its prompt's
# estimate) until its real usage is known.
QUOTA_DEFAULT_RESERVE = envint("QUOTA_DEFAULT_RESERVE", 256)
