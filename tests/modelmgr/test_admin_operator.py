"""What the admin shows an operator beyond plain lists (issue 23): the new key's page,
the switch status JSON the live cells poll, the links between keys, usage, downloads
and switches, and the Backends page listing `default`. The browser's view of the same
pages is tests/modelmgr/test_admin_pages_browser.py."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from backends.services import backend_create
from modelmgr import selectors
from modelmgr.models import (
    ApiKey,
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    SwitchKind,
    SwitchPhase,
    UsageDaily,
)
from modelmgr.services import api_key_create

KEY_RE = re.compile(r"tt-[0-9a-f]{8}\.[A-Za-z0-9_-]{32}")
STATUS = "/admin/modelmgr/modelswitch/status.json"
SWITCHES = "/admin/modelmgr/modelswitch/"


def auto_switch_of(job: DownloadJob, **fields) -> ModelSwitch:
    """The switch a download's "serve it when done" requests as it finishes."""
    assert job.finished_at is not None
    switch = ModelSwitch.objects.create(
        backend=job.backend, to_model=job.repo_id, requested_by=job.requested_by, **fields
    )
    ModelSwitch.objects.filter(pk=switch.pk).update(
        created_at=job.finished_at + timedelta(milliseconds=20)
    )
    switch.refresh_from_db()
    return switch


def finished_job(**fields) -> DownloadJob:
    now = timezone.now()
    defaults = {
        "repo_id": "org/new",
        "backend": "default",
        "status": DownloadStatus.SUCCEEDED,
        "auto_switch": True,
        "requested_by": "admin:admin",
        "finished_at": now,
    }
    return DownloadJob.objects.create(**{**defaults, **fields})


# --- the new key's page --------------------------------------------------------------------


@pytest.mark.django_db
def test_it_answers_the_save_of_a_new_key_with_its_secret_and_sets_no_cookie(admin_client):
    response = admin_client.post(
        "/admin/modelmgr/apikey/add/",
        {"name": "laptop", "scopes": ["inference"], "is_active": "on", "_save": "Save"},
    )

    assert response.status_code == 200  # the page itself, not a redirect to a message
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    (shown,) = set(KEY_RE.findall(html))
    assert f'<code id="tt-new-key">{shown}</code>' in html
    assert 'id="tt-copy-key"' in html
    assert ApiKey.objects.get(name="laptop").matches(shown)
    secret = shown.partition(".")[2]
    assert not [c for c in response.cookies.values() if secret in c.value]
    assert "messages" not in response.cookies
    for session in Session.objects.all():
        assert secret not in str(session.get_decoded())


@pytest.mark.django_db
def test_a_keys_page_shows_its_usage_and_links_its_daily_rows(admin_client):
    key, _ = api_key_create(name="alice")
    other, _ = api_key_create(name="bob")
    today = timezone.now().date()
    UsageDaily.objects.create(
        key_prefix=key.prefix, key_name="alice", model="org/m", day=today, requests=4,
        prompt_tokens=40, completion_tokens=77,
    )  # fmt: skip
    UsageDaily.objects.create(
        key_prefix=other.prefix, key_name="bob", model="org/m", day=today, requests=1
    )

    html = admin_client.get(f"/admin/modelmgr/apikey/{key.pk}/change/").content.decode()
    usage = html[html.index('id="tt-key-usage"') :]
    assert "<td>4</td><td>0</td><td>40</td><td>77</td>" in usage
    assert f"/admin/modelmgr/usagedaily/?key={key.prefix}" in usage

    listing = admin_client.get(f"/admin/modelmgr/usagedaily/?key={key.prefix}")
    rows = listing.context["cl"].result_list
    assert [row.key_name for row in rows] == ["alice"]
    assert f'href="/admin/modelmgr/apikey/{key.pk}/change/">alice</a>' in listing.content.decode()
    assert f"alice ({key.prefix})" in listing.content.decode()  # the filter's choice


# --- the switch status the live cells poll -----------------------------------------------------


@pytest.mark.django_db
def test_the_switch_status_json_gives_each_switch_its_phase_and_labels(admin_client):
    now = timezone.now()
    done = ModelSwitch.objects.create(
        backend="default",
        from_model="org/a",
        to_model="org/b",
        phase=SwitchPhase.READY,
        started_at=now - timedelta(seconds=1.9),
        finished_at=now,
    )
    running = ModelSwitch.objects.create(
        backend="gpu-2", to_model="org/c", phase=SwitchPhase.LOADING, phase_changed_at=now
    )

    data = admin_client.get(f"{STATUS}?ids={done.pk},{running.pk}&latest=1").json()

    first, second = data["switches"]
    assert (first["id"], first["phase"], first["is_active"]) == (done.pk, "ready", False)
    assert first["duration_label"] == "1.9" and first["transition"] == "org/a → org/b"
    assert (second["phase"], second["is_active"], second["transition"]) == (
        "loading",
        True,
        "— → org/c",
    )
    assert second["since"].startswith("since ")
    assert data["latest"]["id"] == running.pk  # the one in progress, though older ids exist
    assert "latest" not in admin_client.get(f"{STATUS}?ids={done.pk}").json()


@pytest.mark.django_db
def test_the_switch_status_json_refuses_bad_ids_and_strangers(admin_client, client):
    assert admin_client.get(f"{STATUS}?ids=1,x").status_code == 400
    assert client.get(f"{STATUS}?ids=1").status_code == 302  # to the login
    User.objects.create_user("guest", password="pw-for-a-guest-1", is_staff=True)
    guest = Client()
    guest.login(username="guest", password="pw-for-a-guest-1")
    assert guest.get(f"{STATUS}?ids=1").status_code == 403


@pytest.mark.django_db
def test_the_switch_list_renders_live_cells_and_the_poller(admin_client):
    switch = ModelSwitch.objects.create(
        backend="default", to_model="org/b", phase=SwitchPhase.STOPPING
    )
    html = admin_client.get(SWITCHES).content.decode()
    assert (
        f'<span data-tt-switch="{switch.pk}" data-tt-switch-field="phase" '
        'data-tt-phase="stopping">stopping</span>'
    ) in html
    assert f'data-switch-status-url="{STATUS}"' in html


# --- links between the pages ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_switch_links_who_asked_and_the_download_that_caused_it(admin_client):
    admin = User.objects.get(username="admin")
    job = finished_job()
    switch = auto_switch_of(job, phase=SwitchPhase.READY)
    key, _ = api_key_create(name="ops")
    by_key = ModelSwitch.objects.create(
        backend="gpu-2", to_model="org/z", requested_by=f"key:ops ({key.prefix})"
    )

    assert selectors.switch_cause(switch) == job
    assert selectors.switch_cause(by_key) is None
    html = admin_client.get(SWITCHES).content.decode()
    assert f'<a href="/admin/modelmgr/downloadjob/{job.pk}/change/">download {job.pk}</a>' in html
    assert f'<a href="/admin/auth/user/{admin.pk}/change/">admin:admin</a>' in html
    assert f'<a href="/admin/modelmgr/apikey/{key.pk}/change/">key:ops ({key.prefix})</a>' in html
    downloads = admin_client.get("/admin/modelmgr/downloadjob/").content.decode()
    assert f'<a href="/admin/auth/user/{admin.pk}/change/">admin:admin</a>' in downloads


@pytest.mark.django_db
def test_a_switch_is_caused_only_by_an_auto_switch_that_just_finished(admin_client):
    manual = finished_job(auto_switch=False)
    assert selectors.switch_cause(auto_switch_of(manual)) is None
    ModelSwitch.objects.all().delete()
    old = finished_job(repo_id="org/old", finished_at=timezone.now() - timedelta(hours=1))
    later = ModelSwitch.objects.create(backend="default", to_model="org/old")
    assert selectors.switch_cause(later) is None
    crash = auto_switch_of(old, kind=SwitchKind.CRASH, phase=SwitchPhase.FAILED)
    assert selectors.switch_cause(crash) is None


@pytest.mark.django_db
def test_the_dashboard_card_links_the_cause_and_stays_live(admin_client, settings):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # down: the card does not need vLLM
    job = finished_job()
    switch = auto_switch_of(job, phase=SwitchPhase.STARTING)
    html = admin_client.get("/admin/modelmgr/servedmodel/dashboard/").content.decode()
    card = html[html.index('id="tt-switch"') : html.index('id="tt-backends"')]
    assert f'data-tt-latest="{switch.pk}"' in card
    assert "Switch in progress" in card and "<strong>starting</strong>" in card
    assert f"/admin/modelmgr/downloadjob/{job.pk}/change/" in card


# --- the Backends page -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_backends_page_lists_default_from_the_settings(admin_client, settings):
    settings.VLLM_BASE_URL = "http://vllm:8000"
    backend_create(name="gpu-2", base_url="http://gpu-2:8000", engine="external")

    html = admin_client.get("/admin/backends/backend/").content.decode()
    listed = html[html.index('id="tt-settings-backends"') :]
    assert "<strong>default</strong>" in listed and "http://vllm:8000" in listed
    assert "gpu-2" in html[html.index('id="result_list"') :]

    # A row named default takes its place (discovery's rule): then it is a row.
    backend_create(name="default", base_url="http://vllm:8000", engine="process")
    html = admin_client.get("/admin/backends/backend/").content.decode()
    assert 'id="tt-settings-backends"' not in html


def test_the_backends_page_restarts_an_engine_after_a_confirm_page(admin_client, settings):
    # What the worker would run: a restart of the model `default` served last.
    ModelSwitch.objects.create(backend="default", to_model="demo-model", phase=SwitchPhase.READY)
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing answers: it serves nothing now
    listing = admin_client.get("/admin/backends/backend/").content.decode()
    assert 'href="/admin/modelmgr/servedmodel/restart/default/"' in listing
    confirm = admin_client.get("/admin/modelmgr/servedmodel/restart/default/")
    assert confirm.status_code == 200
    assert "Restart the engine of default?" in confirm.content.decode()
    assert not ModelSwitch.objects.filter(kind=SwitchKind.RESTART).exists()  # a GET asks only

    done = admin_client.post("/admin/modelmgr/servedmodel/restart/default/")
    assert done.status_code == 302 and done["Location"] == SWITCHES
    [restart] = ModelSwitch.objects.filter(kind=SwitchKind.RESTART)
    assert (restart.backend, restart.to_model) == ("default", "demo-model")
    assert restart.requested_by == "admin:admin"
    # A second while the first is pending is refused, with the reason shown.
    again = admin_client.post("/admin/modelmgr/servedmodel/restart/default/", follow=True)
    assert ModelSwitch.objects.filter(kind=SwitchKind.RESTART).count() == 1
    assert "errornote" in again.content.decode() or "error" in again.content.decode()
    unknown = admin_client.get("/admin/modelmgr/servedmodel/restart/nope/", follow=True)
    assert "nope" in unknown.content.decode()
