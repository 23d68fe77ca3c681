"""URL map: the admin, Prometheus metrics, the NinjaAPI, and an OpenAI-shape 404 for
anything else under /v1 and /api (vLLM's private routes are never forwarded); the 400
Django itself answers (a Host header not in ALLOWED_HOSTS) is in OpenAI's shape too,
but on the admin's pages."""

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as staticfiles_serve
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views import defaults
from django.views.static import serve as static_serve

from plumbing.errors import BadRequest, NotFound, error_response
from talktuah_site.api import api


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
    path("admin/", admin.site.urls),
    path("", api.urls),
    re_path(r"^(?:v1|api)/", not_found),
]
