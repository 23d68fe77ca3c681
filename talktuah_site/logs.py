"""Logging off the event loop: settings.LOGGING sends every record through a QueueHandler
to a QueueListener thread that runs the real handlers (LOGGING_CONFIG points here).

A StreamHandler writes and flushes on the calling thread. On the proxy's event loop that
is one write per request (the access log) that blocks every stream in the process
whenever stderr is slow: a pipe to a container runtime or journald that is full, a
terminal being scrolled. With the queue, the loop only formats the record and enqueues
it. Records still queued are written at exit (atexit stops the listener, which drains
the queue); a process killed with SIGKILL loses at most those."""

import atexit
import logging
import logging.config
import logging.handlers
from typing import Any

QUEUE_HANDLER = "queued"


def configure(config: dict[str, Any]) -> None:
    """dictConfig(config), then start the queue's listener (dictConfig creates it but
    leaves it stopped: records would wait in the queue forever)."""
    logging.config.dictConfig(config)
    handler = logging.getHandlerByName(QUEUE_HANDLER)
    listener = getattr(handler, "listener", None)
    if isinstance(listener, logging.handlers.QueueListener) and listener._thread is None:
        listener.start()
        atexit.register(listener.stop)
