"""What the teams app reads: tokens used in a window (what seeds a quota's counter when
it has none, and what the admin's bars show), teams with their keys' usage, and usage per
day and model for the admin's charts and CSV export."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from modelmgr.models import ApiKey, UsageDaily
from teams.limits import TokenQuota
from teams.models import Team
from teams.windows import Period, window, zone


def _usage_of(*, key_prefix: str | None = None, team_id: int | None = None) -> QuerySet[UsageDaily]:
    if team_id is not None:
        prefixes = ApiKey.objects.filter(team_id=team_id).values("prefix")
        return UsageDaily.objects.filter(key_prefix__in=prefixes)
    return UsageDaily.objects.filter(key_prefix=key_prefix)


def tokens_used(
    *, key_prefix: str | None = None, team_id: int | None = None, first_day: date, last_day: date
) -> int:
    """Prompt + completion tokens a key (or all of a team's keys) used from `first_day`
    to `last_day`, as the usage table has them (its days are the server's dates, UTC)."""
    total = (
        _usage_of(key_prefix=key_prefix, team_id=team_id)
        .filter(day__gte=first_day, day__lte=last_day)
        .aggregate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))["tokens"]
    )
    return int(total or 0)


@dataclass(frozen=True, slots=True)
class QuotaBar:
    """One quota and what of it was used in its current window (from the usage table)."""

    period: Period
    limit: int
    used: int

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.used / self.limit)) if self.limit else 100

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


def quota_bars(
    *, key_prefix: str | None = None, team_id: int | None = None, limits: dict[Period, int | None]
) -> list[QuotaBar]:
    now = timezone.now()
    bars = []
    for period, limit in limits.items():
        if limit is None:
            continue
        w = window(period, now)
        used = tokens_used(
            key_prefix=key_prefix, team_id=team_id, first_day=w.first_day, last_day=w.last_day
        )
        bars.append(QuotaBar(period, limit, used))
    return bars


@dataclass(slots=True)
class KeyRow:
    key: ApiKey
    quota: TokenQuota
    today: int
    month: int
    bars: list[QuotaBar] = field(default_factory=list)


def team_keys(*, team: Team) -> list[KeyRow]:
    """The team's keys with their tokens today and this month and their quota bars."""
    rows = []
    for key in team.keys.select_related("team").order_by("name"):
        quota = TokenQuota.of(key)
        limits: dict[Period, int | None] = {"day": quota.key_per_day, "month": quota.key_per_month}
        now = timezone.now()
        day, month = window("day", now), window("month", now)
        rows.append(
            KeyRow(
                key=key,
                quota=quota,
                today=tokens_used(
                    key_prefix=key.prefix, first_day=day.first_day, last_day=day.last_day
                ),
                month=tokens_used(
                    key_prefix=key.prefix, first_day=month.first_day, last_day=month.last_day
                ),
                bars=quota_bars(key_prefix=key.prefix, limits=limits),
            )
        )
    return rows


def team_tokens(*, team: Team, period: Period) -> int:
    w = window(period, timezone.now())
    return tokens_used(team_id=team.pk, first_day=w.first_day, last_day=w.last_day)


def _days(days: int) -> list[date]:
    today = timezone.now().astimezone(zone()).date()
    return [today - timedelta(days=back) for back in range(days - 1, -1, -1)]


def tokens_per_day(
    *, key_prefix: str | None = None, team_id: int | None = None, days: int = 30
) -> dict[str, Any]:
    """Tokens per day and model over the last `days` days, oldest first, for a chart:
    {"days": [date, ...], "models": {model: [tokens, ...]}, "totals": [tokens, ...]}."""
    dates = _days(days)
    index = {day: i for i, day in enumerate(dates)}
    models: dict[str, list[int]] = {}
    rows = (
        _usage_of(key_prefix=key_prefix, team_id=team_id)
        .filter(day__gte=dates[0], day__lte=dates[-1])
        .values("day", "model")
        .annotate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("model")
    )
    for row in rows:
        series = models.setdefault(row["model"], [0] * days)
        series[index[row["day"]]] += int(row["tokens"] or 0)
    totals = [sum(series[i] for series in models.values()) for i in range(days)]
    return {"days": dates, "models": models, "totals": totals}


def usage_export_rows(
    *, key_prefixes: Iterable[str] | None = None, team_id: int | None = None, days: int = 30
) -> list[dict[str, Any]]:
    """Usage rows (per key, model and day) of the last `days` days for CSV export."""
    dates = _days(days)
    if team_id is not None:
        rows = _usage_of(team_id=team_id)
    elif key_prefixes is not None:
        rows = UsageDaily.objects.filter(key_prefix__in=list(key_prefixes))
    else:
        rows = UsageDaily.objects.all()
    teams = dict(ApiKey.objects.filter(team__isnull=False).values_list("prefix", "team__name"))
    return [
        {
            "day": row.day.isoformat(),
            "team": teams.get(row.key_prefix, ""),
            "key_prefix": row.key_prefix,
            "key_name": row.key_name,
            "model": row.model,
            "requests": row.requests,
            "errors": row.errors,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
        }
        for row in rows.filter(day__gte=dates[0], day__lte=dates[-1]).order_by(
            "day", "key_name", "model"
        )
    ]
