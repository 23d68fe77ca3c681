"""URL map: the admin, Prometheus metrics, the NinjaAPI, and an OpenAI-shape 404 for
anything else under /v1 and /api (vLLM's private routes are never forwarded); the 400
Django itself answers (a Host header not in ALLOWED_HOSTS) is in OpenAI's shape too,
but on the admin's pages. For people: /about/ (the admin's "View site": what the
gateway is and where to go) and /favicon.ico; / stays the JSON index clients read."""

from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, re_path
from django.views import defaults
from django.views.decorators.http import require_safe
from django.views.static import serve as static_serve

from plumbing.errors import BadRequest, NotFound, error_response
from talktuah_site import __version__
from talktuah_site.api import api

# modelmgr's static folder holds it: browsers ask for /favicon.ico on every page,
# admin or not, with or without collectstatic.
FAVICON = Path(settings.BASE_DIR) / "modelmgr" / "static" / "talktuah" / "favicon.ico"


async def not_found(request: HttpRequest) -> HttpResponse:
    return error_response(NotFound(f"No route {request.method} {request.path}.", code=404))


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's own 400s (raised before any view: CommonMiddleware checks the Host
    header against ALLOWED_HOSTS) in OpenAI's shape, but for the admin's HTML pages.
    Synchronous, as Django calls it; it must not read the host again (that raised)."""
    if request.path.startswith(("/admin/", "/static/")):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        return error_response(
            BadRequest("The Host header is not one this gateway serves.", code="invalid_host")
        )
    return error_response(BadRequest("Bad request.", code="bad_request"))


handler400 = bad_request


@require_safe
def about(request: HttpRequest) -> HttpResponse:
    """The human landing page: what TalkTuah is, and links to the docs, the health
    answer, the metrics (when open) and the admin."""
    context = {
        "version": __version__,
        "base_url": request.build_absolute_uri("/v1"),
        "metrics_open": bool(settings.METRICS_PUBLIC) and not settings.METRICS_TOKEN,
        "metrics_token": bool(settings.METRICS_TOKEN),
        "title": "TalkTuah",
    }
    return TemplateResponse(request, "talktuah_site/about.html", context)


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    # A few hundred bytes: read whole (a FileResponse streams a sync iterator over ASGI).
    response = HttpResponse(FAVICON.read_bytes(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response


# The admin's CSS and JS. The gateway serves them itself (they are few and only the admin
# loads them): from the apps in DEBUG, from STATIC_ROOT (collectstatic) otherwise.
if settings.DEBUG:
    static_files = re_path(r"^static/(?P<path>.*)$", staticfiles_serve)
else:
    static_files = re_path(
        r"^static/(?P<path>.*)$", static_serve, {"document_root": settings.STATIC_ROOT}
    )

urlpatterns = [
    static_files,
    path("favicon.ico", favicon, name="favicon"),
    path("about/", about, name="about"),
    path("admin/", admin.site.urls),
    path("", api.urls),
    re_path(r"^(?:v1|api)/", not_found),
]
