"""ASGI entry point. Two Django handlers share one process: the proxy routes (/v1/...,
/api/chat, /api/models) run on a lean handler whose middleware is all async-native
(settings.LEAN_MIDDLEWARE), because under ASGI every classic Django middleware costs a
thread hop per request; everything else (admin, management API) keeps the full stack.
"""

import os
import time
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "talktuah_site.settings")

full_application = get_asgi_application()

from django.conf import settings  # noqa: E402  (after the app registry is ready)
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

LEAN_PATHS = ("/api/chat", "/api/models")


class LeanASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE; build it from the lean list.
        with override_settings(MIDDLEWARE=settings.LEAN_MIDDLEWARE):
            super().load_middleware(is_async)


lean_application = LeanASGIHandler()


def is_lean(path: str) -> bool:
    return path.startswith("/v1/") or path in LEAN_PATHS


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # When the request reached the process: the gateway's overhead is measured from here.
    scope["talktuah.started"] = time.perf_counter()
    if scope["type"] == "http" and is_lean(scope["path"]):
        await lean_application(scope, receive, send)
    else:
        await full_application(scope, receive, send)
