"""Workflows on keys and usage, shared by the API, the admin and the commands."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from modelmgr.models import ApiKey, Scope, UsageDaily


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str] = (Scope.INFERENCE,),
    owner: User | None = None,
    allowed_models: Iterable[str] = (),
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with its plaintext, which is shown once and not stored."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    plaintext, _prefix = ApiKey.generate()
    key = ApiKey(
        name=name,
        owner=owner,
        scopes=scopes,
        allowed_models=sorted(set(allowed_models)),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        expires_at=expires_at,
    )
    key.set_key(plaintext)
    key.save()
    return key, plaintext


def api_key_revoke(*, key: ApiKey) -> None:
    # Takes effect on every gateway process within API_KEY_CACHE_SECONDS.
    ApiKey.objects.filter(pk=key.pk).update(is_active=False)
    key.is_active = False


@dataclass(frozen=True, slots=True)
class UsageDelta:
    key_prefix: str
    key_name: str
    model: str
    day: date
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage_add(*, deltas: Iterable[UsageDelta]) -> None:
    """Add counts to the daily usage rows, creating them as needed (race-safe)."""
    for delta in deltas:
        where = {"key_prefix": delta.key_prefix, "model": delta.model, "day": delta.day}
        increments = {
            "requests": F("requests") + delta.requests,
            "errors": F("errors") + delta.errors,
            "prompt_tokens": F("prompt_tokens") + delta.prompt_tokens,
            "completion_tokens": F("completion_tokens") + delta.completion_tokens,
        }
        if UsageDaily.objects.filter(**where).update(**increments):
            continue
        try:
            with transaction.atomic():
                UsageDaily.objects.create(
                    **where,
                    key_name=delta.key_name,
                    requests=delta.requests,
                    errors=delta.errors,
                    prompt_tokens=delta.prompt_tokens,
                    completion_tokens=delta.completion_tokens,
                )
        except IntegrityError:
            # Another process created the row between our update and insert.
            UsageDaily.objects.filter(**where).update(**increments)


def usage_rows(*, key_prefix: str, days: int) -> list[dict[str, Any]]:
    """A key's usage rows of the last `days` days, newest first."""
    since = timezone.now().date() - timedelta(days=days - 1)
    return [
        {
            "day": row.day.isoformat(),
            "model": row.model,
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
        }
        for row in UsageDaily.objects.filter(key_prefix=key_prefix, day__gte=since)
    ]


def usage_summary(*, days: int) -> dict[str, Any]:
    """Totals per key and tokens per day over the last `days` days (for the admin)."""
    today = timezone.now().date()
    since = today - timedelta(days=days - 1)
    rows = UsageDaily.objects.filter(day__gte=since)
    per_key = list(
        rows.values("key_prefix", "key_name")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
        .order_by("-completion_tokens", "key_name")
    )
    by_day: dict[date, dict[str, Any]] = {
        row["day"]: dict(row)
        for row in rows.values("day").annotate(
            requests=Sum("requests"), tokens=Sum(F("prompt_tokens") + F("completion_tokens"))
        )
    }
    per_day = []
    for offset in range(days):
        day = since + timedelta(days=offset)
        found = by_day.get(day, {})
        per_day.append(
            {"day": day, "requests": found.get("requests", 0), "tokens": found.get("tokens", 0)}
        )
    return {"days": days, "since": since, "per_key": per_key, "per_day": per_day}
