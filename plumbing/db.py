"""Database calls from the async request path.

The lean proxy handler sends no per-request connection housekeeping through a thread
(see asgi.py), so the few database calls the proxy makes (a key lookup on a cache miss,
batched usage writes, a switch check after an upstream failure) tidy their thread's
connections themselves, as Django's request signals would."""

from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections

# What a query raises when the database is away (refused, restarting, connection ended
# under it): worth a 503 and a retry. Other database errors are bugs and stay 500s.
DATABASE_AWAY = (OperationalError, InterfaceError)


async def run_sync[**P, R](fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    def call() -> R:
        # Drops connections that broke or outlived CONN_MAX_AGE before using one.
        close_old_connections()
        return fn(*args, **kwargs)

    return await sync_to_async(call)()
