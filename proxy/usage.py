"""Usage accounting off the request path: each request adds to an in-process tally,
written to the database in batches every USAGE_FLUSH_SECONDS (0 = at once) and at exit.
A write that failed because the database is away keeps its counts for the next try
instead of losing them. A batch the database refuses (it answered, but will not store a
value) is written again row by row: the rows it takes are kept, and each row it refuses
is logged with all its counts and dropped, instead of holding back every key's usage in
a batch retried forever."""

import asyncio
import atexit
import logging
from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.utils import timezone

from modelmgr.auth import Principal
from modelmgr.services import UsageDelta, usage_add
from plumbing.db import DATABASE_AWAY, run_sync

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tally:
    key_name: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_pending: dict[tuple[str, str, date], _Tally] = {}
_flusher: asyncio.Task[None] | None = None


def _add(prefix: str, name: str, model: str, day: date, **counts: int) -> None:
    tally = _pending.get((prefix, model, day))
    if tally is None:
        tally = _pending[(prefix, model, day)] = _Tally(key_name=name)
    tally.requests += counts.get("requests", 0)
    tally.errors += counts.get("errors", 0)
    tally.prompt_tokens += counts.get("prompt_tokens", 0)
    tally.completion_tokens += counts.get("completion_tokens", 0)


def record(
    principal: Principal,
    model: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: bool = False,
) -> None:
    """Count one request (call from the event loop)."""
    _add(
        principal.prefix,
        principal.name,
        model,
        timezone.now().date(),
        requests=1,
        errors=int(error),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    global _flusher
    if _flusher is None or _flusher.done():
        _flusher = asyncio.get_running_loop().create_task(_flush_while_pending())


async def _flush_while_pending() -> None:
    delay = max(settings.USAGE_FLUSH_SECONDS, 0)
    while _pending:
        await asyncio.sleep(delay)
        if not await flush():
            delay = max(delay, 1.0)  # the database is down: don't spin


def _take() -> list[UsageDelta]:
    batch = [
        UsageDelta(
            key_prefix=prefix,
            key_name=tally.key_name,
            model=model,
            day=day,
            requests=tally.requests,
            errors=tally.errors,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
        )
        for (prefix, model, day), tally in _pending.items()
    ]
    _pending.clear()
    return batch


def _restore(batch: list[UsageDelta]) -> None:
    for d in batch:
        _add(
            d.key_prefix,
            d.key_name,
            d.model,
            d.day,
            requests=d.requests,
            errors=d.errors,
            prompt_tokens=d.prompt_tokens,
            completion_tokens=d.completion_tokens,
        )


async def flush() -> bool:
    """Write what is pending; False (counts kept for the next try) when that failed."""
    batch = _take()
    if not batch:
        return True
    try:
        await run_sync(usage_add, deltas=batch)
    except DATABASE_AWAY as exc:
        # Expected while the database restarts: one line per try (every second at
        # most), no traceback; the counts wait in memory.
        logger.warning("database unavailable, %d usage rows kept for later: %r", len(batch), exc)
        _restore(batch)
        return False
    except Exception:
        return await _write_apart(batch)
    return True


async def _write_apart(batch: list[UsageDelta]) -> bool:
    """Each row of a refused batch on its own; False (the rest kept for the next try)
    when the database goes away meanwhile."""
    for index, delta in enumerate(batch):
        try:
            await run_sync(usage_add, deltas=[delta])
        except DATABASE_AWAY as exc:
            logger.warning(
                "database unavailable, %d usage rows kept for later: %r", len(batch) - index, exc
            )
            _restore(batch[index:])
            return False
        except Exception as exc:
            logger.error(
                "the database refused a usage row, which is dropped: key %s (%s), model %r, "
                "day %s, requests %d, errors %d, prompt tokens %d, completion tokens %d: %r",
                delta.key_prefix,
                delta.key_name,
                delta.model,
                delta.day,
                delta.requests,
                delta.errors,
                delta.prompt_tokens,
                delta.completion_tokens,
                exc,
            )
    return True


@atexit.register
def _flush_at_exit() -> None:
    batch = _take()
    if batch:
        try:
            usage_add(deltas=batch)
        except Exception:
            logger.exception("could not write %d usage rows at exit; they are lost", len(batch))
