"""API keys at rest and in the admin: digests only, the plaintext shown once, revoke,
the create_api_key and demo_setup commands."""

import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from modelmgr.models import ApiKey, Scope, hash_key, split_prefix
from modelmgr.services import api_key_create, api_key_revoke

KEY_RE = re.compile(r"tt-[0-9a-f]{8}\.[A-Za-z0-9_-]{32}")


@pytest.mark.django_db
def test_it_stores_only_a_digest_of_the_key():
    key, plaintext = api_key_create(name="svc", scopes=[Scope.INFERENCE])
    assert KEY_RE.fullmatch(plaintext)
    assert key.prefix == plaintext.split(".")[0]
    stored = ApiKey.objects.get(pk=key.pk)
    assert plaintext not in repr(stored.__dict__)
    assert stored.key_hash == hash_key(plaintext)
    assert stored.matches(plaintext)
    assert not stored.matches(plaintext + "x")


def test_it_only_splits_keys_shaped_like_ours():
    assert split_prefix("tt-0123abcd.secret") == "tt-0123abcd"
    assert split_prefix("tt-0123abcd") is None
    assert split_prefix("sk-0123abcd.secret") is None
    assert split_prefix("tt-012.secret") is None


@pytest.mark.django_db
def test_it_rejects_unknown_scopes():
    with pytest.raises(ValueError, match="unknown scope"):
        api_key_create(name="x", scopes=["root"])


@pytest.mark.django_db
def test_create_api_key_prints_the_key_once():
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "--name", "ops", "--scope", "admin", stdout=out, stderr=err)
    plaintext = out.getvalue().strip()
    assert KEY_RE.fullmatch(plaintext)
    key = ApiKey.objects.get(prefix=plaintext.split(".")[0])
    assert sorted(key.scopes) == ["admin", "inference"]
    assert key.matches(plaintext)
    assert "will not be shown again" in err.getvalue()
    with pytest.raises(CommandError):
        call_command("create_api_key", "--name", "bad", "--rpm", "-1", stdout=out, stderr=err)


@pytest.mark.django_db
def test_demo_setup_reuses_its_key(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    call_command("demo_setup", stdout=StringIO())
    first = (tmp_path / "demo-key.txt").read_text().strip()
    call_command("demo_setup", stdout=StringIO())
    assert (tmp_path / "demo-key.txt").read_text().strip() == first
    assert ApiKey.objects.count() == 1
    assert User.objects.filter(username="admin", is_superuser=True).exists()
    # A revoked demo key is replaced, not reused.
    api_key_revoke(key=ApiKey.objects.get())
    call_command("demo_setup", stdout=StringIO())
    assert (tmp_path / "demo-key.txt").read_text().strip() != first


@pytest.mark.django_db
def test_the_admin_shows_a_new_key_exactly_once(admin_client):
    response = admin_client.post(
        "/admin/modelmgr/apikey/add/",
        {"name": "laptop", "scopes": ["inference"], "allowed_models": "a, b", "is_active": "on"},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    shown = KEY_RE.findall(page)
    assert len(set(shown)) == 1
    key = ApiKey.objects.get(name="laptop")
    assert key.matches(shown[0])
    assert key.allowed_models == ["a", "b"]
    # Never again: not on the change page, not in the list.
    for url in (f"/admin/modelmgr/apikey/{key.pk}/change/", "/admin/modelmgr/apikey/"):
        again = admin_client.get(url).content.decode()
        assert shown[0] not in again
    assert key.prefix in admin_client.get("/admin/modelmgr/apikey/").content.decode()


@pytest.mark.django_db
def test_the_admin_revokes_keys(admin_client):
    key, _ = api_key_create(name="old")
    response = admin_client.post(
        "/admin/modelmgr/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert not key.is_active


@pytest.mark.django_db
def test_the_admin_usage_page_totals_per_key_and_charts_days(admin_client):
    from django.utils import timezone

    from modelmgr.models import UsageDaily

    today = timezone.now().date()
    UsageDaily.objects.create(
        key_prefix="tt-aaaaaaaa", key_name="alice", model="m", day=today, requests=3,
        prompt_tokens=30, completion_tokens=70,
    )  # fmt: skip
    UsageDaily.objects.create(
        key_prefix="tt-aaaaaaaa", key_name="alice", model="n", day=today, requests=1,
        prompt_tokens=5, completion_tokens=5,
    )  # fmt: skip
    UsageDaily.objects.create(
        key_prefix="tt-bbbbbbbb", key_name="bob", model="m", day=today, requests=1, errors=1
    )
    page = admin_client.get("/admin/modelmgr/usagedaily/summary/?days=7")
    assert page.status_code == 200
    html = page.content.decode()
    table = html[html.index('id="usage-per-key"') :]
    assert table.index("alice") < table.index("bob")
    assert "<td>4</td><td>0</td><td>35</td><td>75</td>" in table
    assert html.count("<rect ") == 7
    assert "110 tokens, 5 requests" in html
    listing = admin_client.get("/admin/modelmgr/usagedaily/").content.decode()
    assert "/admin/modelmgr/usagedaily/summary/" in listing
