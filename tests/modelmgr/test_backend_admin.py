"""Backends in the admin: the vLLM API key is written, never shown, and stored sealed."""

from typing import Any

import pytest

from backends.discovery import row_specs
from backends.models import Backend

pytestmark = pytest.mark.django_db

FORM = {
    "name": "gpu-2",
    "base_url": "http://gpu-2:8000/",
    "engine": "external",
    "engine_settings": "{}",
    "weight": "2",
    "enabled": "on",
}


def upstream_key(name: str) -> str:
    return next(s.upstream.api_key for s in row_specs() if s.name == name)


def test_adding_a_backend_seals_its_api_key(admin_client: Any) -> None:
    response = admin_client.post("/admin/backends/backend/add/", {**FORM, "api_key": "s3cret"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    row = Backend.objects.get(name="gpu-2")
    assert row.base_url == "http://gpu-2:8000" and row.weight == 2
    assert row.api_key_sealed and "s3cret" not in row.api_key_sealed
    assert upstream_key("gpu-2") == "s3cret"
    page = admin_client.get(f"/admin/backends/backend/{row.pk}/change/").content.decode()
    assert "s3cret" not in page and row.api_key_sealed not in page


def test_an_empty_key_field_keeps_the_key_and_clear_removes_it(admin_client: Any) -> None:
    admin_client.post("/admin/backends/backend/add/", {**FORM, "api_key": "s3cret"})
    row = Backend.objects.get(name="gpu-2")
    change = f"/admin/backends/backend/{row.pk}/change/"
    assert admin_client.post(change, {**FORM, "draining": "on"}).status_code == 302
    assert upstream_key("gpu-2") == "s3cret"
    assert Backend.objects.get(pk=row.pk).draining
    assert admin_client.post(change, {**FORM, "clear_api_key": "on"}).status_code == 302
    assert upstream_key("gpu-2") == ""


@pytest.mark.parametrize("url", ["gpu-2", "ftp://gpu-2", "http://gpu-2:99999", "http://:80"])
def test_a_bad_url_is_a_form_error_not_a_row(admin_client: Any, url: str) -> None:
    response = admin_client.post("/admin/backends/backend/add/", {**FORM, "base_url": url})
    assert response.status_code == 200
    assert "http://host:port" in response.content.decode()
    assert not Backend.objects.exists()
