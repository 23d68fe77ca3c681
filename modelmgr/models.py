"""What TalkTuah keeps in its database: API keys and per-key daily usage.

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
