"""Logging off the event loop: settings.LOGGING sends every record through a QueueHandler
to a QueueListener thread that runs the real handlers (LOGGING_CONFIG points here).

A StreamHandler writes and flushes on the calling thread. On the proxy's event loop that
is one write per request (the access log) that blocks every stream in the process
whenever stderr is slow: a pipe to a container runtime or journald that is full, a
terminal being scrolled. With the queue, the loop only builds the record's message and
enqueues it. Records still queued are written at exit (atexit stops the listener, which
drains the queue); a process killed with SIGKILL loses at most those.

The access log writes a record per request, so what a record costs on the loop counts:
the queue is a SimpleQueue (C, no lock in Python), a record without a traceback is not
copied, and records do not look up their caller's file and line, their process name or
their asyncio task (no format here uses them; logging's documented optimizations)."""

import atexit
import logging
import logging.config
import logging.handlers
import queue
from typing import Any

QUEUE_HANDLER = "queued"


class QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The stdlib's prepare, without its copy and its formatting for a record with
        no traceback or stack: the message is all the writer thread needs."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().prepare(record)
        record.msg = record.message = record.getMessage()
        record.args = None
        return record


def new_queue() -> "queue.SimpleQueue[Any]":
    return queue.SimpleQueue()


def configure(config: dict[str, Any]) -> None:
    """dictConfig(config), then start the queue's listener (dictConfig creates it but
    leaves it stopped: records would wait in the queue forever)."""
    logging._srcfile = None
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]
    logging.config.dictConfig(config)
    handler = logging.getHandlerByName(QUEUE_HANDLER)
    listener = getattr(handler, "listener", None)
    if isinstance(listener, logging.handlers.QueueListener) and listener._thread is None:
        listener.start()
        atexit.register(listener.stop)
