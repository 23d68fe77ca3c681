"""ASGI entry point. Two Django handlers share one process: the proxy routes (/v1/...,
/api/chat, /api/models) run on a lean handler, everything else (admin, management API,
metrics) on Django's full stack.

Under ASGI each classic Django middleware and each sync signal receiver costs a thread
hop per request, and Django's handler opens a new thread-sensitive executor (a new OS
thread) per request. The lean handler avoids all of them: its middleware is async-native
(settings.LEAN_MIDDLEWARE), and it sends no request_started / request_finished signals.
Their receivers (connection and query-log housekeeping, cache closing, urlconf reset)
only tidy the calling thread's database connections, caches and urlconf, and the event
loop's thread has none: the proxy's database calls run in a thread and tidy their
connections themselves (plumbing/db.py), and its counts and caches are its own
(plumbing/counters.py, the key cache). Sending them cost ~4% of the gateway's CPU at 64
streams. It also remembers what each proxy path resolved to (a handful of fixed paths)
instead of walking the URL patterns on every request.
"""

import asyncio
import contextlib
import gc
import os
import time
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "talktuah_site.settings")

full_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after the app registry is ready)
from django.core.exceptions import ImproperlyConfigured, RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.http import HttpRequest, HttpResponseBase  # noqa: E402
from django.urls import ResolverMatch, get_resolver, set_script_prefix  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from proxy import pacing  # noqa: E402

LEAN_PATHS = ("/api/chat", "/api/models")


class LeanASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._resolver: Any = None
        self._resolved: dict[str, ResolverMatch] = {}

    def load_middleware(self, is_async: bool = False) -> None:
        """Django's load_middleware for settings.LEAN_MIDDLEWARE (Django's reads
        settings.MIDDLEWARE), async only: a middleware that is not async-capable is a
        configuration error here, never a thread hop."""
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler: Any = convert_exception_to_response(self._get_response_async)  # type: ignore[attr-defined]
        for path in reversed(settings.LEAN_MIDDLEWARE):
            middleware = import_string(path)
            if not getattr(middleware, "async_capable", False):
                raise ImproperlyConfigured(f"LEAN_MIDDLEWARE: {path} is not async-capable")
            instance = middleware(handler)
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, self.adapt_method_mode(True, instance.process_view))
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(
                    self.adapt_method_mode(True, instance.process_template_response)
                )
            if hasattr(instance, "process_exception"):
                # Django runs the exception stack synchronously.
                self._exception_middleware.append(
                    self.adapt_method_mode(False, instance.process_exception)
                )
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # No ThreadSensitiveContext: sync_to_async calls share the process's sync thread
        # instead of a new thread per request.
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's ASGIHandler.handle without the request signals, paced (pacing.py),
        and leaving no reference cycle. As there, a client disconnect cancels the task
        producing the response."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        await pacing.wait_turn()
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None
            body_file.close()
            await self.send_response(error_response, send)
            _close_quietly(error_response)
            return

        async def process_request() -> Any:
            response = await self.run_get_response(request)
            # A CancelledError here: the client left while the response was being sent.
            with contextlib.suppress(asyncio.CancelledError):
                await self.send_response(response, send)
            return response

        # Django's listener raises RequestAborted when the client has gone, which is at
        # the end of every request (uvicorn says "disconnect" once the response is sent);
        # retrieved here, its traceback held this frame, which held the task holding it:
        # a reference cycle of the whole request (its headers, body, response, the two
        # tasks), left to the garbage collector. Nothing is raised here instead.
        listener = asyncio.create_task(_disconnected(receive))
        worker = asyncio.create_task(process_request())
        await asyncio.wait((listener, worker), return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, worker):  # the listener first: it raises nothing unexpected
            if not task.done():
                task.cancel()  # the worker, when the client left: the view sees the cancel
                await asyncio.wait((task,))
        if not listener.cancelled():
            listener.result()  # an AssertionError for a message other than a disconnect
        if not worker.cancelled():
            _close_quietly(worker.result())
        body_file.close()

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """Django's resolve_request, remembering the matches of paths without arguments
        (the proxy's few fixed paths) for as long as the URL configuration stays."""
        if hasattr(request, "urlconf"):  # set by a middleware: Django's way
            return super().resolve_request(request)
        resolver = get_resolver()
        if resolver is not self._resolver:
            self._resolver, self._resolved = resolver, {}
        match = self._resolved.get(request.path_info)
        if match is None:
            match = resolver.resolve(request.path_info)
            if not match.args and not match.kwargs and len(self._resolved) < RESOLVED_KEPT:
                self._resolved[request.path_info] = match
        request.resolver_match = match
        return match


RESOLVED_KEPT = 64  # paths whose resolution the lean handler remembers


async def _disconnected(receive: Any) -> None:
    """Returns when the client has gone (Django's listen_for_disconnect, without its
    RequestAborted)."""
    message = await receive()
    if message["type"] != "http.disconnect":
        raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


def _close_quietly(response: HttpResponseBase) -> None:
    """A response's close() without the request_finished signal it sends."""
    closers: list[Any] = response._resource_closers  # type: ignore[attr-defined]
    for closer in closers:
        with contextlib.suppress(Exception):
            closer()
    closers.clear()
    response.closed = True


lean_application = LeanASGIHandler()


def is_lean(path: str) -> bool:
    return path.startswith("/v1/") or path in LEAN_PATHS


async def lifespan(receive: Any, send: Any) -> None:
    """Start-up and shutdown of a worker process: the graceful-shutdown drain goes in
    front of uvicorn's signal handlers; at shutdown, write the pending usage counts and
    close the upstream connections."""
    from plumbing import vllm
    from proxy import shutdown, usage

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            shutdown.install()
            if settings.GC_FREEZE:
                # What start-up loaded lives as long as the process: out of the collector's
                # sight, a full collection no longer stalls every request for tens of ms.
                gc.collect()
                gc.freeze()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await usage.flush()
            await vllm.reset_client()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    # When the request reached the process: the gateway's overhead is measured from here.
    scope["talktuah.started"] = time.perf_counter()
    if scope["type"] == "http" and is_lean(scope["path"]):
        await lean_application(scope, receive, send)
    else:
        await full_application(scope, receive, send)
