"""The pages for people outside the admin: /about/ (the admin's "View site") and
/favicon.ico; / stays the JSON index clients read."""

import pytest
from django.contrib import admin


@pytest.mark.django_db
def test_the_landing_page_says_what_the_gateway_is_and_where_to_go(client, settings):
    settings.METRICS_PUBLIC, settings.METRICS_TOKEN = True, ""
    response = client.get("/about/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "gateway in front of vLLM" in html
    for href in ("/api/docs", "/api/healthz", "/metrics", "/admin/"):
        assert f'href="{href}"' in html, href
    assert 'base_url="http://testserver/v1"' in html
    assert admin.site.site_url == "/about/"


@pytest.mark.django_db
def test_the_landing_page_links_metrics_only_when_they_are_open(client, settings):
    settings.METRICS_PUBLIC, settings.METRICS_TOKEN = False, ""
    assert 'href="/metrics"' not in client.get("/about/").content.decode()
    settings.METRICS_TOKEN = "a-scrape-token"
    html = client.get("/about/").content.decode()
    assert 'href="/metrics"' not in html and "scrape token" in html


@pytest.mark.django_db
def test_the_favicon_is_served_and_linked(client, admin_client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert '<link rel="icon" href="/favicon.ico"' in admin_client.get("/admin/").content.decode()


def test_the_root_stays_the_json_index(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.json()["name"] == "TalkTuah"
