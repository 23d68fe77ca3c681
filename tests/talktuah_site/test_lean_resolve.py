"""The lean handler remembers what the proxy's fixed paths resolve to, per URL
configuration: another configuration (ROOT_URLCONF changed) resolves afresh."""

from django.http import HttpResponse
from django.test import RequestFactory
from django.urls import path

from talktuah_site.asgi import LeanASGIHandler


def replacement_view(request):  # pragma: no cover - resolved, never called
    return HttpResponse("replaced")


urlpatterns = [path("v1/models", replacement_view)]


def test_it_resolves_each_path_to_its_own_view_and_follows_a_new_urlconf(settings):
    handler = LeanASGIHandler()
    factory = RequestFactory()
    models = handler.resolve_request(factory.get("/v1/models"))
    chat = handler.resolve_request(factory.post("/v1/chat/completions"))
    assert models.route.endswith("v1/models") and chat.route.endswith("v1/chat/completions")
    assert handler.resolve_request(factory.get("/v1/models")) is models  # remembered

    settings.ROOT_URLCONF = __name__  # clears Django's URL caches: a new resolver
    again = handler.resolve_request(factory.get("/v1/models"))
    assert again.func is replacement_view
