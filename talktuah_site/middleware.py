"""Middleware of the full stack (the admin and every non-proxy route)."""

import logging

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from plumbing.db import DATABASE_AWAY

logger = logging.getLogger(__name__)

DATABASE_AWAY_PAGE = """<!doctype html>
<title>Database unavailable</title>
<h1>Database unavailable</h1>
<p>TalkTuah's database is not reachable right now (stopped, restarting or cut off).
Chat requests with known keys keep working; the admin needs the database.
Try again in a few seconds.</p>
"""


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A page that says the database is away, with 503 and Retry-After, instead of a 500
    (and, with DEBUG, instead of a traceback page). The API routes answer the same in
    their JSON error shape (talktuah_site/api.py)."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_AWAY):
            return None
        logger.warning("database unavailable on %s %s: %r", request.method, request.path, exception)
        response = HttpResponse(DATABASE_AWAY_PAGE, status=503)
        response["Retry-After"] = "5"
        return response
