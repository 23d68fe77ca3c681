"""The calendar windows token quotas count in: a day and a month in QUOTA_TIME_ZONE
(UTC by default). The request path (proxy/quota.py) and the admin read them from here,
so both agree on when a quota resets."""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from django.conf import settings

Period = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Window:
    period: Period
    label: str  # "2026-12-06" or "2026-12": part of the counter's name
    start: datetime  # aware, in QUOTA_TIME_ZONE
    end: datetime  # the next window's start

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(days=1)).date()

    def seconds_left(self, now: datetime) -> float:
        # In UTC: Python subtracts two datetimes of one zone on the wall clock, which a
        # daylight-saving change in between would get wrong by an hour.
        return (self.end.astimezone(UTC) - now.astimezone(UTC)).total_seconds()


def zone() -> ZoneInfo:
    return ZoneInfo(settings.QUOTA_TIME_ZONE)


def window(period: Period, now: datetime) -> Window:
    """The day or month `now` falls in."""
    tz = zone()
    today = now.astimezone(tz).date()
    if period == "day":
        first, following = today, today + timedelta(days=1)
        label = today.isoformat()
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        label = first.strftime("%Y-%m")
    # combine() takes the zone's offset on that date, daylight saving included.
    start = datetime.combine(first, time(), tzinfo=tz)
    end = datetime.combine(following, time(), tzinfo=tz)
    return Window(period, label, start, end)
