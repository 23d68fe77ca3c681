"""What TalkTuah keeps in its database: API keys, per-key daily usage, the vLLM backends,
downloads and switches.

Keys follow the healthchecks pattern: a visible prefix to look the row up by, and only
a SHA-256 digest of the whole key at rest, compared with `hmac.compare_digest`.
"""

import hashlib
import hmac
import secrets
from datetime import datetime
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

KEY_PREFIX = "tt-"
PREFIX_CHARS = 8  # after "tt-": 48 bits, enough to make prefix collisions rare
SECRET_BYTES = 24


class Scope(models.TextChoices):
    INFERENCE = "inference", "inference (chat, completions, models)"
    ADMIN = "admin", "admin (downloads, switches, restarts)"


def hash_key(plaintext: str) -> str:
    # The key carries 192 random bits, so a plain digest (no slow KDF) is enough.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def split_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a presented key, or None when it is not shaped like ours."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    prefix, dot, _secret = plaintext.partition(".")
    if not dot or len(prefix) != len(KEY_PREFIX) + PREFIX_CHARS:
        return None
    return prefix


class ApiKey(models.Model):
    name = models.CharField(max_length=100, help_text="Who or what uses this key.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(
        default=list, help_text='e.g. ["inference"] or ["inference", "admin"]'
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Served model names this key may use; empty = all."
    )
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty = the default setting."
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per minute; empty = the default setting."
    )
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> tuple[str, str]:
        """A new (plaintext, prefix) pair; the plaintext is shown once and never stored."""
        prefix = KEY_PREFIX + secrets.token_hex(PREFIX_CHARS // 2)
        return f"{prefix}.{secrets.token_urlsafe(SECRET_BYTES)}", prefix

    def set_key(self, plaintext: str) -> None:
        prefix = split_prefix(plaintext)
        if prefix is None:
            raise ValueError("not a TalkTuah key")
        self.prefix = prefix
        self.key_hash = hash_key(plaintext)

    def matches(self, plaintext: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(plaintext))

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class UsageDaily(models.Model):
    """Requests and tokens per key, model and day, from vLLM's own `usage`."""

    # The key's prefix ("env" for PROXY_API_KEY) identifies the row, not a foreign key:
    # usage outlives a deleted key, and batched writes never race a key's deletion.
    key_prefix = models.CharField(max_length=16)
    key_name = models.CharField(max_length=100)
    model = models.CharField(max_length=200)
    day = models.DateField()
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "daily usage"
        verbose_name_plural = "daily usage"
        ordering = ["-day", "key_name", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["key_prefix", "model", "day"], name="usage_key_model_day"
            )
        ]

    def __str__(self) -> str:
        return f"{self.key_name} / {self.model} / {self.day}"


class DownloadStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_DOWNLOAD_STATUSES = (DownloadStatus.QUEUED, DownloadStatus.RUNNING)


class DownloadJob(models.Model):
    """One download of a Hub repo into the Hugging Face cache vLLM reads. The row is the
    queue entry, the live progress and the history."""

    repo_id = models.CharField(max_length=200)
    backend = models.CharField(
        max_length=50, default="default", help_text="Whose host's Hugging Face cache."
    )
    revision = models.CharField(max_length=100, default="main")
    commit = models.CharField(max_length=64, blank=True, help_text="Resolved commit hash.")
    status = models.CharField(
        max_length=16, choices=DownloadStatus.choices, default=DownloadStatus.QUEUED
    )
    bytes_total = models.PositiveBigIntegerField(default=0)
    bytes_done = models.PositiveBigIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    current_file = models.CharField(max_length=500, blank=True)
    # Per-file progress: {"path": [done, total], ...} for the files of the plan.
    file_progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    auto_switch = models.BooleanField(default=False, help_text="Serve the model when done.")
    cancel_requested = models.BooleanField(default=False)
    requested_by = models.CharField(max_length=150, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One active job per repo and backend: a second request gets the running one.
            models.UniqueConstraint(
                fields=["backend", "repo_id"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_active_download_per_backend_repo",
            )
        ]

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision} ({self.status})"

    @property
    def percent(self) -> float:
        return round(100.0 * self.bytes_done / self.bytes_total, 1) if self.bytes_total else 0.0

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_DOWNLOAD_STATUSES


class SwitchPhase(models.TextChoices):
    REQUESTED = "requested"
    STOPPING = "stopping"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


ACTIVE_SWITCH_PHASES = (
    SwitchPhase.REQUESTED,
    SwitchPhase.STOPPING,
    SwitchPhase.STARTING,
    SwitchPhase.LOADING,
)


class ModelSwitch(models.Model):
    """One change of the model vLLM serves: the queue entry and the history."""

    backend = models.CharField(max_length=50, default="default")
    from_model = models.CharField(max_length=200, blank=True)
    to_model = models.CharField(max_length=200)
    phase = models.CharField(
        max_length=16, choices=SwitchPhase.choices, default=SwitchPhase.REQUESTED
    )
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    phase_changed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "model switches"
        ordering = ["-created_at"]
        constraints = [
            # One switch at a time per backend.
            models.UniqueConstraint(
                fields=["backend"],
                condition=models.Q(phase__in=["requested", "stopping", "starting", "loading"]),
                name="one_active_switch_per_backend",
            )
        ]

    def __str__(self) -> str:
        return f"{self.from_model or '—'} → {self.to_model} ({self.phase})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def is_active(self) -> bool:
        return self.phase in ACTIVE_SWITCH_PHASES


class ServedModel(models.Model):
    """What the Hugging Face cache cannot tell about a downloaded model."""

    repo_id = models.CharField(max_length=200, unique=True)
    downloaded_by = models.CharField(max_length=150, blank=True)
    downloaded_at = models.DateTimeField(null=True, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    last_served_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.repo_id


class WorkerHeartbeat(models.Model):
    """A worker process says it is alive here every few seconds."""

    name = models.CharField(max_length=200, unique=True)
    backend = models.CharField(
        max_length=50, default="default", help_text="The backend whose jobs it claims."
    )
    # What its host's Hugging Face cache holds: [{"repo_id", "size_bytes", "commit"}],
    # so the gateway can answer for hosts whose cache it cannot read.
    inventory = models.JSONField(default=list, blank=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    current = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return self.name


class EngineKind(models.TextChoices):
    EXTERNAL = "external", "external (TalkTuah does not start or stop it)"
    PROCESS = "process", "process (a vLLM process on the worker's host)"
    DOCKER = "docker", "docker (a vLLM container on the worker's host)"
    KUBERNETES = "kubernetes", "kubernetes (a Deployment, patched and rolled out)"


DEFAULT_BACKEND = "default"  # the backend VLLM_BASE_URL describes when no row has its name

# The settings a backend's `engine_settings` may set for its worker.
ENGINE_SETTINGS = frozenset(
    {
        "ENGINE_PROCESS_COMMAND",
        "ENGINE_STOP_GRACE_SECONDS",
        "ENGINE_LOG_FILE",
        "ENGINE_STATE_FILE",
        "VLLM_PORT",
        "VLLM_CONTAINER_NAME",
        "VLLM_MODEL",
        "SWITCH_TIMEOUT_SECONDS",
        "K8S_NAMESPACE",
        "K8S_DEPLOYMENT",
        "K8S_CONTAINER",
    }
)


def validate_base_url(value: str) -> None:
    """http(s)://host[:port][/prefix], where host may be a bare name (a container, a
    Kubernetes service), which Django's URLValidator refuses."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValidationError("Enter vLLM's address as http://host:port (https also works).")
    if parts.query or parts.fragment or parts.path.rstrip("/").endswith("/v1"):
        raise ValidationError("Enter vLLM's address without /v1, a query or a fragment.")


class Backend(models.Model):
    """One vLLM server the gateway routes to. Its models are learned from its
    /v1/models, not configured here."""

    name = models.SlugField(
        max_length=50, unique=True, help_text="Used in ?backend=, metrics and logs."
    )
    base_url = models.CharField(
        max_length=300,
        validators=[validate_base_url],
        help_text="vLLM's address, without /v1, e.g. http://gpu-2:8000",
    )
    api_key_sealed = models.TextField(
        blank=True,
        editable=False,
        help_text="vLLM's --api-key, sealed under SECRET_KEY (never stored in plaintext).",
    )
    engine = models.CharField(
        max_length=20,
        choices=EngineKind.choices,
        default=EngineKind.EXTERNAL,
        help_text="What runs this vLLM, for switches driven by `run_worker --backend`.",
    )
    engine_settings = models.JSONField(
        default=dict,
        blank=True,
        help_text='Overrides of the engine settings for this backend, e.g. {"VLLM_PORT": 8002}.',
    )
    weight = models.PositiveSmallIntegerField(
        default=1, help_text="Share of the traffic among replicas of a model (relative)."
    )
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(
        default=False,
        help_text="Takes no new requests; those in flight finish.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_sealed)

    def clean(self) -> None:
        if not isinstance(self.engine_settings, dict):
            raise ValidationError({"engine_settings": "A JSON object of settings."})
        unknown = set(self.engine_settings) - ENGINE_SETTINGS
        if unknown:
            raise ValidationError(
                {
                    "engine_settings": f"Not an engine setting: {', '.join(sorted(unknown))} "
                    f"(these are: {', '.join(sorted(ENGINE_SETTINGS))})."
                }
            )
