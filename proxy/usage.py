"""Usage accounting off the request path: each request adds to an in-process tally,
written to the database in batches every USAGE_FLUSH_SECONDS (0 = at once) and at exit.
"""

import asyncio
import atexit
import logging
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from modelmgr.services import UsageDelta, usage_add
from proxy.auth import Principal

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tally:
    key_id: int | None
    key_name: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_pending: dict[tuple[str, str, object], _Tally] = {}
_flusher: asyncio.Task[None] | None = None


def record(
    principal: Principal,
    model: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: bool = False,
) -> None:
    """Count one request (call from the event loop)."""
    slot = (principal.prefix, model, timezone.now().date())
    tally = _pending.get(slot)
    if tally is None:
        tally = _pending[slot] = _Tally(key_id=principal.key_id, key_name=principal.name)
    tally.requests += 1
    tally.errors += int(error)
    tally.prompt_tokens += prompt_tokens
    tally.completion_tokens += completion_tokens
    _ensure_flusher()


def _ensure_flusher() -> None:
    global _flusher
    loop = asyncio.get_running_loop()
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_soon())


async def _flush_soon() -> None:
    await asyncio.sleep(max(settings.USAGE_FLUSH_SECONDS, 0))
    await flush()


def _take() -> list[UsageDelta]:
    batch = [
        UsageDelta(
            key_prefix=prefix,
            key_id=tally.key_id,
            key_name=tally.key_name,
            model=model,
            day=day,  # type: ignore[arg-type]
            requests=tally.requests,
            errors=tally.errors,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
        )
        for (prefix, model, day), tally in _pending.items()
    ]
    _pending.clear()
    return batch


async def flush() -> None:
    batch = _take()
    if not batch:
        return
    try:
        await sync_to_async(usage_add)(deltas=batch)
    except Exception:
        logger.exception("could not write %d usage rows; they are lost", len(batch))


@atexit.register
def _flush_at_exit() -> None:
    batch = _take()
    if batch:
        try:
            usage_add(deltas=batch)
        except Exception:
            logger.exception("could not write %d usage rows at exit", len(batch))
