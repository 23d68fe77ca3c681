"""What TalkTuah keeps in its database: API keys, per-key daily usage, downloads and
switches (the vLLM backends have their own app, `backends`).

Keys follow the healthchecks pattern: a visible prefix to look the row up by, and only
a SHA-256 digest of the whole key at rest, compared with `hmac.compare_digest`.
"""

import hashlib
import hmac
import secrets
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone

KEY_PREFIX = "tt-"
PREFIX_CHARS = 8  # after "tt-": 48 bits, enough to make prefix collisions rare
SECRET_BYTES = 24


class Tier(models.TextChoices):
    """Whose requests leave a full backend's queue first (backends/admission.py)."""

    INTERACTIVE = "interactive", "interactive (goes first)"
    BATCH = "batch", "batch (after interactive; promoted after ADMISSION_PROMOTE_SECONDS)"


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
    tier = models.CharField(
        max_length=16,
        choices=Tier.choices,
        default=Tier.INTERACTIVE,
        help_text="When a backend is full: interactive requests leave its queue first.",
    )
    share = models.PositiveSmallIntegerField(
        default=1,
        help_text="This key's share of a full backend against other keys of its tier "
        "(relative: 2 gets twice the tokens of 1).",
    )
    max_parallel_requests = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests in flight at once (running or queued); empty = the "
        "KEY_MAX_PARALLEL_REQUESTS setting.",
    )
    # Token quotas (teams app, proxy/quota.py): the key's own apply on top of its team's.
    team = models.ForeignKey(
        "teams.Team",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="keys",
        help_text="The team whose token quotas this key shares.",
    )
    tokens_per_day = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens per day; empty = the team's default for "
        "keys, else none.",
    )
    tokens_per_month = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Prompt + completion tokens per calendar month; empty = the team's "
        "default for keys, else none.",
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
    backend = models.CharField(max_length=50, help_text="Whose host's Hugging Face cache.")
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


class SwitchKind(models.TextChoices):
    """What a row of the switch history records (the worker's supervision writes the
    last two: see modelmgr/engines/supervisor.py)."""

    SWITCH = "switch", "switch (another model)"
    CRASH = "crash", "crash (vLLM stopped, or failed its health check)"
    RESTART = "restart", "restart (the same model again)"


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
    """One change of the model vLLM serves: the queue entry and the history. Crashes
    and restarts of the engine are rows of their own kinds: a crash is recorded failed
    at once (its error says what was seen), a restart runs the phases of a switch to
    the same model, so requests wait for it as for a switch."""

    backend = models.CharField(max_length=50)
    kind = models.CharField(max_length=16, choices=SwitchKind.choices, default=SwitchKind.SWITCH)
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
        if self.kind == SwitchKind.CRASH:
            return f"crash of {self.to_model}"
        if self.kind == SwitchKind.RESTART:
            return f"restart of {self.to_model} ({self.phase})"
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
    backend = models.CharField(max_length=50, help_text="The backend whose jobs it claims.")
    # What its host's Hugging Face cache holds: [{"repo_id", "size_bytes", "commit"}],
    # so the gateway can answer for hosts whose cache it cannot read.
    inventory = models.JSONField(default=list, blank=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    current = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return self.name
