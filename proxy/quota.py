"""Token quotas on the request path: per key and per team, per calendar day and month
(teams/windows.py, in QUOTA_TIME_ZONE), counted in prompt + completion tokens.

A request reserves what it may cost before it is forwarded (its prompt's estimate plus
`max_tokens`, or QUOTA_DEFAULT_RESERVE without one) against every quota that applies,
all or none; the answer's end settles the reservation to the real usage (`finish` in
accounting.py: streams cut short and errors too; a failure with no tokens releases it).
A request is refused only when its reservation no longer fits, so a key near its quota
keeps working, and the quota holds exactly however many requests arrive at once.

The counts live in this process (an event loop runs the check and the addition with no
await between them) or, with REDIS_URL, in Redis, where one Lua script checks and adds
for all of a request's quotas at once, so several workers and instances share them
exactly. A window's count that is missing (the first request of a day, a restarted
process or Redis) starts from the usage table (modelmgr's UsageDaily).

Redis away: RATELIMIT_FAIL_OPEN decides, as for the rate limits (ratelimit.py): the
request goes through unreserved, or gets 503. What could not be settled in Redis waits
in this process's journal and is applied once Redis answers again; each reservation and
settlement carries an id that Redis remembers (MARKER_SECONDS), so a settlement applied
twice (a reply lost, a journal replayed) counts once, and one whose reservation never
reached Redis adds its whole usage.
"""

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.utils import timezone
from prometheus_client import Counter

from modelmgr.auth import Principal
from plumbing import counters
from plumbing.counters import CountsUnavailable
from plumbing.db import DATABASE_AWAY, run_sync
from plumbing.errors import RateLimited, RateLimiterUnavailable
from proxy.metrics import RATE_LIMIT_BYPASSED
from proxy.ratelimit import outage
from teams.selectors import tokens_used
from teams.windows import Period, Window, window

logger = logging.getLogger(__name__)

# How long Redis remembers a reservation and a settlement (their ids): longer than any
# request runs, and than Redis is expected to stay away.
MARKER_SECONDS = 2 * 86400
# A window's count stays in Redis this long past the window's end, so a request that
# began before midnight settles into the day it began in.
WINDOW_MARGIN_SECONDS = 3600
JOURNAL_MAX = 100_000  # settlements waiting for Redis; past this the oldest are dropped

TEAM_TOKENS = Counter(
    "talktuah_team_tokens",
    "Prompt + completion tokens used by the keys of each team.",
    ["team"],
)
QUOTA_REFUSED = Counter(
    "talktuah_quota_refused",
    "Requests refused because a token quota was spent, by scope (key, team) and period.",
    ["scope", "period"],
)

Scope = Literal["key", "team"]


def clock() -> datetime:
    """Now (tests replace it to cross a window's end)."""
    return timezone.now()


@dataclass(frozen=True, slots=True)
class Bucket:
    """One quota a request counts against, in its current window."""

    scope: Scope
    owner: str  # the key's prefix, or the team's id
    window: Window
    limit: int

    @property
    def name(self) -> str:
        return f"quota:{self.scope}:{self.owner}:{self.window.period}:{self.window.label}"

    @property
    def code(self) -> str:
        period = "daily" if self.window.period == "day" else "monthly"
        return f"{'team_' if self.scope == 'team' else ''}{period}_token_quota_exceeded"

    async def seed(self) -> int:
        """What the usage table holds for this quota's window."""
        owner: dict[str, Any] = (
            {"team_id": int(self.owner)} if self.scope == "team" else {"key_prefix": self.owner}
        )
        return await run_sync(
            tokens_used, **owner, first_day=self.window.first_day, last_day=self.window.last_day
        )


def buckets_of(principal: Principal, now: datetime) -> list[Bucket]:
    """The quotas that apply to the principal's requests now."""
    quota = principal.quota
    found = []
    limits: list[tuple[Scope, str | None, Period, int | None]] = [
        ("key", principal.prefix, "day", quota.key_per_day),
        ("key", principal.prefix, "month", quota.key_per_month),
        ("team", str(quota.team_id) if quota.team_id else None, "day", quota.team_per_day),
        ("team", str(quota.team_id) if quota.team_id else None, "month", quota.team_per_month),
    ]
    for scope, owner, period, limit in limits:
        if owner is not None and limit is not None:
            found.append(Bucket(scope, owner, window(period, now), limit))
    return found


class Reservation:
    """Tokens held for one request until its answer ends. One that is never settled (a
    request dropped before its answer began) is released when it is collected."""

    __slots__ = ("__weakref__", "amount", "held", "id", "names", "prompt_estimate", "settled")

    def __init__(self, names: list[str], amount: int, prompt_estimate: int) -> None:
        self.id = uuid.uuid4().hex
        self.names = names
        self.amount = amount
        self.prompt_estimate = prompt_estimate
        self.held = False  # counted (locally, or in Redis as far as known)
        self.settled = False

    def __del__(self) -> None:
        if not self.settled:
            self.settled = True
            _apply_without_loop(self, 0)


def amounts_of(body: dict[str, Any], size: int) -> tuple[int, int]:
    """(tokens to reserve, of which the prompt's estimate): the body's size over four
    (about a token's bytes) plus what it asks to generate (else QUOTA_DEFAULT_RESERVE)."""
    wanted = body.get("max_completion_tokens") or body.get("max_tokens")
    if body.get("max_output_tokens"):  # the Responses API's name for it
        wanted = body["max_output_tokens"]
    generate = (
        wanted
        if isinstance(wanted, int) and 0 < wanted < 1_000_000
        else settings.QUOTA_DEFAULT_RESERVE
    )
    prompt = size // 4
    return prompt + generate, prompt


# --- reserving ------------------------------------------------------------------------


async def reserve(principal: Principal, *, body: dict[str, Any], size: int) -> Reservation | None:
    """Hold the request's tokens against the principal's quotas; raise RateLimited when
    one of them cannot take them. None when no quota applies."""
    if not principal.quota.limited:
        return None
    now = clock()
    buckets = buckets_of(principal, now)
    amount, prompt = amounts_of(body, size)
    reservation = Reservation([b.name for b in buckets], amount, prompt)
    try:
        if settings.REDIS_URL:
            await _redis_reserve(buckets, reservation)
            outage.succeeded()
            _drain_soon()
        else:
            await _local_reserve(buckets, reservation)
    except Refused as refused:
        reservation.settled = True
        bucket = refused.bucket
        QUOTA_REFUSED.labels(bucket.scope, bucket.window.period).inc()
        raise _refusal(principal, bucket, refused.used, amount, now) from None
    except (CountsUnavailable, *DATABASE_AWAY) as exc:
        outage.failed("token quotas", exc)
        if not settings.RATELIMIT_FAIL_OPEN:
            reservation.settled = True
            if settings.REDIS_URL:
                # The script may have run before its reply was lost: take it back later.
                _journal_add(_Settlement(reservation.id, reservation.names, 0))
            raise RateLimiterUnavailable(
                "The rate limiter is unavailable; retry shortly.", headers={"Retry-After": "5"}
            ) from exc
        # Let through: its usage is still added when it ends (the journal keeps it while
        # Redis is away), only the check is skipped.
        RATE_LIMIT_BYPASSED.labels("quota").inc()
    return reservation


class Refused(Exception):
    def __init__(self, bucket: Bucket, used: int) -> None:
        self.bucket, self.used = bucket, used


def _refusal(
    principal: Principal, bucket: Bucket, used: int, amount: int, now: datetime
) -> RateLimited:
    seconds = max(1, int(bucket.window.seconds_left(now) + 0.999))
    resets = bucket.window.end.strftime("%Y-%m-%d %H:%M %Z")
    whose = f"team {principal.quota.team_name!r}" if bucket.scope == "team" else "this key"
    per = "a day" if bucket.window.period == "day" else "a month"
    return RateLimited(
        f"Token quota reached: {bucket.limit} tokens {per} for {whose} ({used} used or held, "
        f"this request may take {amount}). It resets at {resets}, in {seconds} s.",
        code=bucket.code,
        headers={"Retry-After": str(seconds)},
    )


# --- settling -------------------------------------------------------------------------


async def settle(
    principal: Principal,
    reservation: Reservation | None,
    *,
    tokens: int,
    streamed_events: int = 0,
) -> None:
    """A request ended having used `tokens` (0 on a failure: the reservation is
    released). A stream cut before its usage came counts its prompt's estimate and one
    token per event relayed."""
    if not tokens and streamed_events and reservation is not None:
        tokens = reservation.prompt_estimate + streamed_events
    if tokens and principal.quota.team_name:
        TEAM_TOKENS.labels(principal.quota.team_name).inc(tokens)
    if reservation is None or reservation.settled:
        return
    reservation.settled = True
    if not settings.REDIS_URL:
        _local_settle(reservation, tokens)
        return
    entry = _Settlement(reservation.id, reservation.names, tokens)
    try:
        await _redis_settle(entry)
    except CountsUnavailable as exc:
        outage.failed("settling token quotas", exc)
        _journal_add(entry)
        return
    outage.succeeded()
    _drain_soon()


def _apply_without_loop(reservation: Reservation, tokens: int) -> None:
    """Settle from where no await is possible (a reservation collected unsettled)."""
    if not settings.REDIS_URL:
        _local_settle(reservation, tokens)
    else:
        _journal_add(_Settlement(reservation.id, reservation.names, tokens))


# --- what /api/usage shows --------------------------------------------------------------


async def status(principal: Principal) -> list[dict[str, Any]]:
    """Each quota of the principal: its limit, the tokens used or held in its current
    window, what remains, and when it resets."""
    now = clock()
    shown = []
    for bucket in buckets_of(principal, now):
        try:
            used = await _used(bucket)
        except (CountsUnavailable, *DATABASE_AWAY):
            used = None
        shown.append(
            {
                "scope": bucket.scope,
                "team": principal.quota.team_name if bucket.scope == "team" else None,
                "period": bucket.window.period,
                "limit": bucket.limit,
                "used": used,
                "remaining": None if used is None else max(bucket.limit - used, 0),
                "resets_at": bucket.window.end.isoformat(),
                "time_zone": settings.QUOTA_TIME_ZONE,
            }
        )
    return shown


async def _used(bucket: Bucket) -> int:
    if not settings.REDIS_URL:
        await _local_seeded([bucket])
        return _local[bucket.name]
    with counters.redis_answers():
        value = await counters.redis_client().get(_redis_key(bucket.name))
    return int(value) if value is not None else await bucket.seed()


# --- this process's counts ----------------------------------------------------------

_local: dict[str, int] = {}  # counter name: tokens used or held in its window
_local_ends: dict[str, float] = {}  # counter name: when its window ends (epoch seconds)
_seeding: dict[str, asyncio.Task[int]] = {}


async def _local_seeded(buckets: list[Bucket]) -> None:
    """Every bucket's count present, read from the usage table when missing (one read
    per count at a time, however many requests wait for it)."""
    for bucket in buckets:
        if bucket.name in _local:
            continue
        task = _seeding.get(bucket.name)
        if task is None:
            task = _seeding[bucket.name] = asyncio.get_running_loop().create_task(bucket.seed())
            task.add_done_callback(functools.partial(_seeded, bucket.name))
        seed = await asyncio.shield(task)
        if bucket.name not in _local:
            _prune_local()
            _local[bucket.name] = seed
            _local_ends[bucket.name] = bucket.window.end.timestamp() + WINDOW_MARGIN_SECONDS


def _seeded(name: str, _task: asyncio.Task[int]) -> None:
    _seeding.pop(name, None)


async def _local_reserve(buckets: list[Bucket], reservation: Reservation) -> None:
    await _local_seeded(buckets)
    # No await from here on: the check and the addition are one step of the event loop.
    amount = reservation.amount
    for bucket in buckets:
        if _local.get(bucket.name, 0) + amount > bucket.limit:
            raise Refused(bucket, _local.get(bucket.name, 0))
    for bucket in buckets:
        _local[bucket.name] = _local.get(bucket.name, 0) + amount
    reservation.held = True


def _local_settle(reservation: Reservation, tokens: int) -> None:
    if not reservation.held:
        return  # never counted here (its seed failed): the usage table will have it
    for name in reservation.names:
        if name in _local:
            _local[name] += tokens - reservation.amount


def _prune_local() -> None:
    now = timezone.now().timestamp()
    for name, end in list(_local_ends.items()):
        if end < now:
            _local.pop(name, None)
            del _local_ends[name]


def forget() -> None:
    """Drop this process's counts and journal (tests start from zero)."""
    _local.clear()
    _local_ends.clear()
    _journal.clear()


# --- Redis ----------------------------------------------------------------------------

# KEYS: the counts, then the reservation's marker. ARGV: the amount, the marker's life,
# then per count its limit, its seed (-1: unknown) and its life in seconds.
# Returns {1} when reserved, {0, i, used} when count i cannot take it, {-1, i} when count
# i is missing and needs a seed.
_RESERVE = """
local n = #KEYS - 1
local amount = tonumber(ARGV[1])
local values = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v then
    values[i] = tonumber(v)
  else
    local seed = tonumber(ARGV[2 + (i - 1) * 3 + 2])
    if seed < 0 then return {-1, i} end
    values[i] = seed
  end
end
for i = 1, n do
  if values[i] + amount > tonumber(ARGV[2 + (i - 1) * 3 + 1]) then
    return {0, i, values[i]}
  end
end
for i = 1, n do
  redis.call('SET', KEYS[i], values[i] + amount, 'EX', tonumber(ARGV[2 + (i - 1) * 3 + 3]))
end
redis.call('SET', KEYS[n + 1], amount, 'EX', tonumber(ARGV[2]))
return {1}
"""

# KEYS: the counts, the reservation's marker, the settlement's marker. ARGV: the tokens
# used, the markers' life. Applied once per settlement id: the usage less what the
# reservation added, when it reached Redis; counts Redis lost are left to their seed.
_SETTLE = """
local n = #KEYS - 2
if not redis.call('SET', KEYS[n + 2], 1, 'NX', 'EX', tonumber(ARGV[2])) then return 0 end
local delta = tonumber(ARGV[1])
local held = redis.call('GET', KEYS[n + 1])
if held then
  delta = delta - tonumber(held)
  redis.call('DEL', KEYS[n + 1])
end
if delta ~= 0 then
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], delta) end
  end
end
return 1
"""


def _redis_key(name: str) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:{name}"


def _marker(kind: str, reservation_id: str) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:quota:{kind}:{reservation_id}"


async def _run(script: str, keys: list[str], args: list[int]) -> Any:
    # Through plumbing/counters.py's client: the one Redis client of the request path.
    with counters.redis_answers():
        return await counters.redis_client().eval(script, len(keys), *keys, *args)


async def _redis_reserve(buckets: list[Bucket], reservation: Reservation) -> None:
    now = clock()
    seeds = [-1] * len(buckets)
    keys = [_redis_key(b.name) for b in buckets] + [_marker("held", reservation.id)]
    for _attempt in range(3):
        args = [reservation.amount, MARKER_SECONDS]
        for bucket, seed in zip(buckets, seeds, strict=True):
            life = int(bucket.window.seconds_left(now)) + WINDOW_MARGIN_SECONDS
            args += [bucket.limit, seed, max(life, 1)]
        # From here the reservation may be in Redis even if the reply is lost: its
        # settlement then finds the marker and takes it back.
        reservation.held = True
        result = await _run(_RESERVE, keys, args)
        state = int(result[0])
        if state == 1:
            return
        if state == 0:
            reservation.held = False
            raise Refused(buckets[int(result[1]) - 1], int(result[2]))
        seeds = [await bucket.seed() for bucket in buckets]
    raise CountsUnavailable("the quota counts kept disappearing from Redis")


@dataclass(frozen=True, slots=True)
class _Settlement:
    id: str
    names: list[str]
    tokens: int


async def _redis_settle(entry: _Settlement) -> None:
    keys = [_redis_key(name) for name in entry.names]
    keys += [_marker("held", entry.id), _marker("settled", entry.id)]
    await _run(_SETTLE, keys, [entry.tokens, MARKER_SECONDS])


_journal: list[_Settlement] = []
_drainer: asyncio.Task[int] | None = None


def _journal_add(entry: _Settlement) -> None:
    _journal.append(entry)
    if len(_journal) > JOURNAL_MAX:
        dropped = _journal.pop(0)
        logger.error(
            "the token quota journal is full: a settlement of %d tokens is dropped (%s)",
            dropped.tokens,
            ", ".join(dropped.names),
        )


def _drain_soon() -> None:
    """Redis answered: apply what waited for it, in the background."""
    global _drainer
    if _journal and (_drainer is None or _drainer.done()):
        _drainer = asyncio.get_running_loop().create_task(drain())


async def drain() -> int:
    """Apply the journal's settlements in order; stop at the first Redis does not take
    (the rest wait for the next answer). Returns how many were applied."""
    applied = 0
    while _journal:
        entry = _journal[0]
        try:
            await _redis_settle(entry)
        except CountsUnavailable:
            break
        # Removed only once applied: a settlement sent twice counts once (its id).
        if _journal and _journal[0] is entry:
            _journal.pop(0)
        applied += 1
    if applied:
        logger.warning("applied %d token quota settlements kept while Redis was away", applied)
    return applied


async def counted(
    events: AsyncIterator[bytes], on_events: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """A stream's chunks passed on, its events counted (what a stream cut before its
    usage chunk settles)."""
    try:
        async for chunk in events:
            on_events(chunk.count(b"data: {"))
            yield chunk
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
