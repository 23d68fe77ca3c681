"""While the database is away the admin and the management API say so with 503 and
Retry-After (a page, or the API's JSON error), never a 500 or a traceback page."""

import pytest

from modelmgr.models import Scope
from tests.database_away import database_away

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_admin_answers_503_with_a_clear_page(admin_client, settings):
    # Before: 500, and with DEBUG on Django's traceback page.
    settings.DEBUG = True
    assert admin_client.get("/admin/").status_code == 200
    with database_away():
        answer = admin_client.get("/admin/")
    assert answer.status_code == 503
    assert answer["Retry-After"] == "5"
    text = answer.content.decode()
    assert "Database unavailable" in text
    assert "Traceback" not in text


def test_the_management_api_answers_503_in_its_error_shape(client, make_key, settings):
    settings.API_KEY_CACHE_SECONDS = 60
    headers = {"Authorization": f"Bearer {make_key(scopes=(Scope.INFERENCE, Scope.ADMIN))}"}
    assert client.get("/api/usage", headers=headers).status_code == 200  # key cached
    with database_away():
        usage = client.get("/api/usage", headers=headers)
        switch = client.get("/api/model-loading-status", headers=headers)
    for answer in (usage, switch):
        assert answer.status_code == 503, answer.content
        assert answer["Retry-After"] == "5"
        assert answer.json()["error"]["code"] == "database_unavailable"
