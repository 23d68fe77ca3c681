"""URL map: the admin, Prometheus metrics, the NinjaAPI, and an OpenAI-shape 404 for
anything else under /v1 and /api (vLLM's private routes are never forwarded)."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path

from proxy.errors import NotFound, error_response
from talktuah_site.api import api


async def not_found(request: HttpRequest) -> HttpResponse:
    return error_response(NotFound(f"No route {request.method} {request.path}.", code=404))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("", api.urls),
    re_path(r"^(?:v1|api)/", not_found),
]
