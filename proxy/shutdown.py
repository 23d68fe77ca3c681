"""Graceful shutdown of a gateway worker.

On SIGTERM (or SIGINT): /readyz turns 503 at once while the worker keeps serving for
SHUTDOWN_DRAIN_SECONDS (so load balancers take it out of rotation); then uvicorn's own
shutdown starts (the listening socket closes: no new requests), streams in flight get up
to SHUTDOWN_GRACE_SECONDS to finish, and those still running then are ended with an SSE
error event and `[DONE]` instead of being cut off.

Installed at lifespan start-up, in front of uvicorn's signal handlers (which it calls
after the drain delay).
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

_draining = False

# Streams being relayed: each registers a coroutine that ends it with an error event.
_active: set[Callable[[], Awaitable[None]]] = set()
_deadline_passed = False
_tasks: set[asyncio.Task[None]] = set()


def start_draining() -> None:
    """From now on /readyz answers 503 (the process is shutting down)."""
    global _draining
    _draining = True


def is_draining() -> bool:
    return _draining


def register_stream(end: Callable[[], Awaitable[None]]) -> None:
    _active.add(end)


def unregister_stream(end: Callable[[], Awaitable[None]]) -> None:
    _active.discard(end)


def deadline_passed() -> bool:
    return _deadline_passed


async def _end_streams_after_grace() -> None:
    global _deadline_passed
    await asyncio.sleep(settings.SHUTDOWN_GRACE_SECONDS)
    _deadline_passed = True
    if _active:
        logger.info("shutdown grace over: ending %d stream(s)", len(_active))
    for end in list(_active):
        await end()


def install() -> None:
    """Put the drain in front of uvicorn's SIGTERM/SIGINT handlers (main thread only:
    a gateway served from a thread, as in the tests, has no signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            if is_draining():
                previous(signum, frame)  # a second signal: stop now
                return
            start_draining()
            logger.info(
                "draining: /readyz is 503; shutting down in %.1f s",
                settings.SHUTDOWN_DRAIN_SECONDS,
            )

            def begin_shutdown() -> None:
                previous(signum, frame)
                task = loop.create_task(_end_streams_after_grace())
                _tasks.add(task)  # keep a reference until it is done
                task.add_done_callback(_tasks.discard)

            loop.call_soon_threadsafe(
                loop.call_later, settings.SHUTDOWN_DRAIN_SECONDS, begin_shutdown
            )

        signal.signal(sig, handler)
