"""The model lifecycle in the Django admin: downloads with live progress, the downloaded
models and their switch confirm page, the switch history, workers and the dashboard.
The Hub cache, the engine and vLLM are patched at their adapters; everything else
(the lifecycle services, the health records, the database, the admin) runs for real."""

import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from backends import health
from backends.services import backend_create
from backends.spec import default_spec
from modelmgr import selectors, services
from modelmgr.models import (
    DownloadJob,
    DownloadStatus,
    ModelSwitch,
    SwitchPhase,
    WorkerHeartbeat,
)
from plumbing import vllm

JOBS = "/admin/modelmgr/downloadjob/"
PROGRESS = "/admin/modelmgr/downloadjob/progress.json"
MODELS = "/admin/modelmgr/servedmodel/"
SERVE = "/admin/modelmgr/servedmodel/serve/"
DASHBOARD = "/admin/modelmgr/servedmodel/dashboard/"
SWITCHES = "/admin/modelmgr/modelswitch/"
WORKERS = "/admin/modelmgr/workerheartbeat/"

GB = 1024**3


class FakeCache:
    """The Hugging Face cache as modelmgr.hub reports it."""

    def __init__(self) -> None:
        self.models: dict[str, int] = {}

    def add(self, repo_id: str, size_bytes: int) -> None:
        self.models[repo_id] = size_bytes

    def cached_models(self) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                repo_id=repo_id,
                commit="c0ffee" + "0" * 34,
                size_bytes=size,
                snapshot_path=Path("/hf/hub") / repo_id / "snapshots" / "c0ffee",
                complete=True,
            )
            for repo_id, size in self.models.items()
        ]

    def snapshot_path(self, repo_id: str, *args, **kwargs) -> Path | None:
        if repo_id not in self.models:
            return None
        return Path("/hf/hub") / repo_id / "snapshots" / "c0ffee"


class FakeVllm:
    """What every vLLM answers a look (mutable: tests set the models and the metrics)."""

    def __init__(self) -> None:
        self.models = ["org/old"]
        self.metrics_text: str | None = None

    def health_check_sync(
        self, upstream: vllm.Upstream, *, wait: float = 2.0, with_metrics: bool = True
    ) -> vllm.Health:
        if not self.models:
            return vllm.Health(False, False, None, [], None, "connection refused")
        cards = [{"id": model, "object": "model"} for model in self.models]
        return vllm.Health(True, True, 3.0, cards, self.metrics_text, "healthy", listed=True)


# The vLLM metrics a busy backend exposes (the queue figures the dashboard shows).
BUSY_METRICS = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="org/old"} 7.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="org/old"} 2.0
"""


@pytest.fixture
def served(monkeypatch):
    """What vLLM reports it serves (mutable: tests set `models`)."""
    fake = FakeVllm()
    monkeypatch.setattr("plumbing.vllm.health_check_sync", fake.health_check_sync)
    # A record from an earlier look would be shown instead of what the fake answers.
    health.forget()
    return fake


@pytest.fixture
def hf_cache(monkeypatch, served):
    cache = FakeCache()
    monkeypatch.setattr("modelmgr.hub.cached_models", cache.cached_models)
    monkeypatch.setattr("modelmgr.hub.snapshot_path", cache.snapshot_path)
    return cache


@pytest.fixture
def engine(monkeypatch, settings):
    """The default backend's engine: one that can switch (patched at its adapter)."""
    settings.TALKTUAH_ENGINE = "process"
    fake = SimpleNamespace(read_only=False, state=lambda: SimpleNamespace(served_name=None))
    monkeypatch.setattr("modelmgr.engines.engine_for", lambda spec: fake)
    return fake


def make_job(**fields) -> DownloadJob:
    defaults = {"repo_id": "org/tiny", "backend": "default", "requested_by": "admin:admin"}
    return DownloadJob.objects.create(**{**defaults, **fields})


def running_job(**fields) -> DownloadJob:
    return make_job(
        status=DownloadStatus.RUNNING,
        started_at=timezone.now() - timedelta(seconds=10),
        bytes_total=400 * 1024**2,
        bytes_done=100 * 1024**2,
        files_total=4,
        files_done=1,
        current_file="model.safetensors",
        worker="host:1",
        **fields,
    )


def beat() -> None:
    services.worker_beat(name="host:1", started_at=timezone.now(), backend=default_spec())


def worker_missing() -> str:
    """The warning shown while no worker of the default backend runs."""
    return selectors.worker_missing("default")


def page(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def shown_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- downloads -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_download_list_shows_a_live_progress_bar(admin_client):
    job = running_job()
    failed = make_job(repo_id="org/broken", status=DownloadStatus.FAILED, error="x" * 300)

    html = page(admin_client.get(JOBS))

    assert f'data-tt-job="{job.pk}" data-tt-status="running"' in html
    assert "width: 25.0%" in html
    assert "100.0\xa0MB / 400.0\xa0MB · 25.0% · files 1/4 · model.safetensors" in html
    # 100 MB in (a little over, by the time the page renders) 10 s, and the time left.
    assert re.search(r">(9\.\d|10\.0)\xa0MB/s, 3\d s left</span>", html)
    assert f'data-tt-job="{failed.pk}" data-tt-status="failed"' in html
    # The error cell shows a preview; the whole error is in its tooltip.
    assert f'title="{"x" * 300}">{"x" * 79}…</span>' in html
    # The poller is on the page and knows where to ask.
    assert f'data-progress-url="{PROGRESS}"' in html
    assert "setTimeout(poll" in html


@pytest.mark.django_db
def test_it_warns_when_a_job_waits_for_a_worker_that_is_not_running(admin_client):
    make_job()
    assert worker_missing() in shown_messages(admin_client.get(JOBS))
    beat()
    assert worker_missing() not in shown_messages(admin_client.get(JOBS))


@pytest.mark.django_db
def test_it_does_not_warn_about_the_worker_when_nothing_is_queued(admin_client):
    make_job(status=DownloadStatus.SUCCEEDED)
    assert worker_missing() not in shown_messages(admin_client.get(JOBS))


@pytest.mark.django_db
def test_the_add_form_starts_a_download_through_the_service(admin_client):
    form = page(admin_client.get(JOBS + "add/"))
    assert 'name="repo_id"' in form
    assert 'name="revision" value="main"' in form
    assert 'name="auto_switch"' in form
    assert '<option value="default" selected>' in form

    response = admin_client.post(
        JOBS + "add/",
        {"backend": "default", "repo_id": " org/tiny ", "revision": "main", "auto_switch": "on"},
    )
    assert response.status_code == 302
    assert response["Location"] == JOBS
    job = DownloadJob.objects.get()
    assert (job.repo_id, job.revision, job.status) == ("org/tiny", "main", DownloadStatus.QUEUED)
    assert job.backend == "default"
    assert job.auto_switch
    assert job.requested_by == "admin:admin"
    assert any(
        "Queued the download of org/tiny@main" in m for m in shown_messages(admin_client.get(JOBS))
    )


@pytest.mark.django_db
def test_the_add_form_returns_the_running_job_for_a_duplicate(admin_client):
    first = running_job()
    response = admin_client.post(
        JOBS + "add/", {"backend": "default", "repo_id": "org/tiny"}, follow=True
    )
    assert DownloadJob.objects.count() == 1
    notes = shown_messages(response)
    assert any(f"already running (job {first.pk})" in m for m in notes), notes


@pytest.mark.django_db
def test_the_add_form_shows_the_services_refusal(admin_client):
    response = admin_client.post(
        JOBS + "add/", {"backend": "default", "repo_id": "../etc/passwd", "revision": "main"}
    )
    html = page(response)
    assert "is not a Hugging Face repo id" in " ".join(shown_messages(response))
    assert 'value="../etc/passwd"' in html  # the form is shown again with what was typed
    assert not DownloadJob.objects.exists()


@pytest.mark.django_db
def test_the_cancel_action_cancels_through_the_service(admin_client):
    queued = make_job(repo_id="org/queued")
    running = running_job()
    done = make_job(repo_id="org/done", status=DownloadStatus.SUCCEEDED)

    response = admin_client.post(
        JOBS,
        {"action": "cancel", "_selected_action": [queued.pk, running.pk, done.pk]},
        follow=True,
    )

    assert response.status_code == 200
    notes = " | ".join(shown_messages(response))
    queued.refresh_from_db()
    running.refresh_from_db()
    done.refresh_from_db()
    assert queued.status == DownloadStatus.CANCELLED
    # A running job is asked to stop; the worker ends it.
    assert running.status == DownloadStatus.RUNNING and running.cancel_requested
    assert done.status == DownloadStatus.SUCCEEDED and not done.cancel_requested
    assert "Cancelled the download of org/queued" in notes
    assert "Asked the worker to stop the download of org/tiny" in notes
    assert "only active downloads can be cancelled" in notes
    errors = [m for m in response.context["messages"] if m.level_tag == "error"]
    assert len(errors) == 1


@pytest.mark.django_db
def test_the_retry_action_queues_a_new_job_and_keeps_the_old_error(admin_client):
    failed = make_job(status=DownloadStatus.FAILED, error="disk full", revision="v2")
    active = make_job(repo_id="org/busy")

    response = admin_client.post(
        JOBS, {"action": "retry", "_selected_action": [failed.pk, active.pk]}, follow=True
    )

    assert response.status_code == 200
    retried = DownloadJob.objects.exclude(pk__in=[failed.pk, active.pk]).get()
    assert (retried.repo_id, retried.revision, retried.status) == (
        "org/tiny",
        "v2",
        DownloadStatus.QUEUED,
    )
    failed.refresh_from_db()
    assert failed.status == DownloadStatus.FAILED and failed.error == "disk full"
    notes = " | ".join(shown_messages(response))
    assert f"Queued org/tiny again (job {retried.pk})" in notes
    assert f"Download {active.pk} is still queued" in notes


@pytest.mark.django_db
def test_download_rows_cannot_be_edited(admin_client):
    job = running_job()
    html = page(admin_client.get(f"{JOBS}{job.pk}/change/"))
    assert "model.safetensors" in html
    assert 'name="_save"' not in html
    response = admin_client.post(f"{JOBS}{job.pk}/change/", {"bytes_done": 0, "status": "failed"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.bytes_done == 100 * 1024**2 and job.status == DownloadStatus.RUNNING
    assert admin_client.post(f"{JOBS}{job.pk}/delete/", {"post": "yes"}).status_code == 403
    assert DownloadJob.objects.filter(pk=job.pk).exists()


# --- the progress JSON ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_progress_json_returns_the_services_progress(admin_client):
    job = running_job()
    other = make_job(repo_id="org/other")

    response = admin_client.get(f"{PROGRESS}?ids={job.pk},{other.pk},999999")

    assert response.status_code == 200
    jobs = response.json()["jobs"]
    assert [j["job_id"] for j in jobs] == [job.pk, other.pk]
    first = jobs[0]
    expected = selectors.download_progress(job)
    for key in ("model_id", "status", "bytes_total", "bytes_completed", "percent", "files_total"):
        assert first[key] == expected[key]
    assert first["percent"] == 25.0
    assert first["label"].startswith("100.0\xa0MB / 400.0\xa0MB · 25.0%")
    assert re.fullmatch(r"(9\.\d|10\.0)\xa0MB/s, 3\d s left", first["speed_label"])
    assert jobs[1]["status"] == "queued"
    assert jobs[1]["note"] == worker_missing()

    # The bar moves as the worker writes progress.
    DownloadJob.objects.filter(pk=job.pk).update(bytes_done=300 * 1024**2, files_done=3)
    again = admin_client.get(f"{PROGRESS}?ids={job.pk}").json()["jobs"][0]
    assert again["percent"] == 75.0 and again["files_completed"] == 3


@pytest.mark.django_db
def test_the_progress_json_rejects_malformed_ids(admin_client):
    assert admin_client.get(f"{PROGRESS}?ids=1,abc").status_code == 400
    assert admin_client.get(PROGRESS).json() == {"jobs": []}


@pytest.mark.django_db
def test_the_progress_json_refuses_anonymous_and_non_staff_users(client):
    job = running_job()
    response = client.get(f"{PROGRESS}?ids={job.pk}")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")

    User.objects.create_user("alice", password="pw")
    user_client = Client()
    user_client.login(username="alice", password="pw")
    response = user_client.get(f"{PROGRESS}?ids={job.pk}")
    assert response.status_code == 302
    assert b"bytes_completed" not in response.content


# --- downloaded models and switching ----------------------------------------------------------


@pytest.mark.django_db
def test_the_downloaded_models_page_lists_the_cache(admin_client, hf_cache):
    hf_cache.add("org/old", int(1.5 * GB))
    hf_cache.add("org/new", 300 * 1024**2)

    html = page(admin_client.get(MODELS))

    assert "org/old" in html and "org/new" in html
    assert "1.5\xa0GB" in html and "300.0\xa0MB" in html
    assert "c0ffee000000" in html
    # One button: the model vLLM serves already has none.
    assert html.count("Serve this model") == 1
    assert f'href="{SERVE}?model={quote("org/new", safe="")}&amp;backend=default"' in html
    assert f'href="{SERVE}?model={quote("org/old", safe="")}' not in html
    assert "vLLM serves now:\n    <strong>org/old</strong>" in html


@pytest.mark.django_db
def test_the_downloaded_models_page_says_when_the_cache_is_empty(admin_client, hf_cache, served):
    served.models.clear()
    html = page(admin_client.get(MODELS))
    assert "No complete model in the cache yet" in html
    assert "connection refused" in html


@pytest.mark.django_db
def test_the_confirm_page_explains_and_creates_nothing(admin_client, hf_cache, engine):
    hf_cache.add("org/new", GB)

    html = page(admin_client.get(SERVE, {"model": "org/new"}))

    assert "from <strong>org/old</strong>" in html
    assert "to <strong>org/new</strong>" in html
    assert "requests wait" in html
    assert 'name="model" value="org/new"' in html
    assert 'name="backend" value="default"' in html
    assert not ModelSwitch.objects.exists()


@pytest.mark.django_db
def test_confirming_requests_the_switch(admin_client, hf_cache, engine):
    hf_cache.add("org/new", GB)
    beat()

    response = admin_client.post(SERVE, {"model": "org/new", "backend": "default"})

    assert response.status_code == 302
    assert response["Location"] == SWITCHES
    switch = ModelSwitch.objects.get()
    assert (switch.from_model, switch.to_model, switch.phase) == (
        "org/old",
        "org/new",
        SwitchPhase.REQUESTED,
    )
    assert switch.requested_by == "admin:admin"
    history = admin_client.get(SWITCHES)
    assert "org/old → org/new" in page(history)
    assert any(
        "Switch requested on default: org/old → org/new" in m for m in shown_messages(history)
    )


@pytest.mark.django_db
def test_serving_a_model_that_is_not_downloaded_shows_an_error(admin_client, hf_cache, engine):
    response = admin_client.post(SERVE, {"model": "org/missing"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == MODELS + "?backend=default"
    assert any("'org/missing' is not downloaded" in m for m in shown_messages(response))
    assert not ModelSwitch.objects.exists()

    response = admin_client.get(SERVE, {"model": "org/missing"}, follow=True)
    assert response.status_code == 200
    assert any("'org/missing' is not downloaded" in m for m in shown_messages(response))


@pytest.mark.django_db
def test_a_second_switch_is_refused_while_one_runs(admin_client, hf_cache, engine):
    hf_cache.add("org/new", GB)
    ModelSwitch.objects.create(backend="default", to_model="org/other", phase=SwitchPhase.LOADING)

    response = admin_client.post(SERVE, {"model": "org/new"}, follow=True)

    assert response.status_code == 200
    assert any("'org/other' is already loading" in m for m in shown_messages(response))
    assert ModelSwitch.objects.count() == 1


@pytest.mark.django_db
def test_an_external_engine_refuses_switches(admin_client, hf_cache, engine, settings):
    hf_cache.add("org/new", GB)
    settings.TALKTUAH_ENGINE = "external"
    response = admin_client.post(SERVE, {"model": "org/new"}, follow=True)
    assert any("managed outside TalkTuah" in m for m in shown_messages(response))
    assert not ModelSwitch.objects.exists()


@pytest.mark.django_db
def test_users_without_the_switch_permission_cannot_switch(hf_cache, engine):
    hf_cache.add("org/new", GB)
    User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer = Client()
    viewer.login(username="viewer", password="pw")
    assert viewer.post(SERVE, {"model": "org/new"}).status_code == 403
    assert not ModelSwitch.objects.exists()


# --- switch history, workers -------------------------------------------------------------------


@pytest.mark.django_db
def test_the_switch_history_is_read_only(admin_client):
    now = timezone.now()
    switch = ModelSwitch.objects.create(
        backend="default",
        from_model="org/old",
        to_model="org/new",
        phase=SwitchPhase.FAILED,
        error="not ready after 900 s: " + "y" * 200,
        requested_by="admin:admin",
        started_at=now - timedelta(seconds=12.5),
        finished_at=now,
    )

    html = page(admin_client.get(SWITCHES))

    assert "org/old → org/new" in html
    assert "12.5" in html
    assert "not ready after 900 s" in html and "y" * 200 not in html
    assert f'href="{SWITCHES}add/"' not in html
    assert admin_client.get(SWITCHES + "add/").status_code == 403
    response = admin_client.post(f"{SWITCHES}{switch.pk}/change/", {"phase": "ready"})
    assert response.status_code == 403
    switch.refresh_from_db()
    assert switch.phase == SwitchPhase.FAILED
    assert admin_client.post(f"{SWITCHES}{switch.pk}/delete/", {"post": "yes"}).status_code == 403


@pytest.mark.django_db
def test_the_worker_list_is_read_only(admin_client):
    beat()
    html = page(admin_client.get(WORKERS))
    assert "host:1" in html
    assert admin_client.get(WORKERS + "add/").status_code == 403
    assert WorkerHeartbeat.objects.count() == 1


# --- dashboard ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_shows_the_served_model_and_the_current_job(admin_client, served):
    make_job(repo_id="org/finished", status=DownloadStatus.SUCCEEDED)
    job = running_job()
    ModelSwitch.objects.create(
        backend="default", from_model="org/a", to_model="org/old", phase=SwitchPhase.LOADING
    )

    html = page(admin_client.get(DASHBOARD))

    assert "<strong>org/old</strong>" in html
    assert "healthy" in html and "3 ms" in html
    assert f'data-tt-job="{job.pk}" data-tt-status="running"' in html
    assert "org/finished" not in html  # the current job, not the last one
    assert "Switch in progress" in html and "<strong>loading</strong>" in html
    assert "vLLM queue figures are not available yet" in html
    assert worker_missing() in html
    assert f'data-progress-url="{PROGRESS}"' in html


@pytest.mark.django_db
def test_the_dashboard_shows_queue_figures_when_there_are_some(admin_client, served):
    served.metrics_text = BUSY_METRICS
    beat()
    html = page(admin_client.get(DASHBOARD))
    assert '<th scope="row">waiting</th><td>7.0</td>' in html
    assert '<th scope="row">running</th><td>2.0</td>' in html
    assert "not available yet" not in html
    assert worker_missing() not in html
    assert "No download has been requested" in html
    assert "No switch has been requested" in html


@pytest.mark.django_db
def test_the_dashboard_says_when_vllm_is_down(admin_client, served):
    served.models.clear()
    html = page(admin_client.get(DASHBOARD))
    assert "<strong>none</strong>" in html
    assert "down" in html and "connection refused" in html


@pytest.mark.django_db
def test_the_admin_index_links_the_dashboard_and_keeps_the_app_list(admin_client):
    html = page(admin_client.get("/admin/"))
    assert f'href="{DASHBOARD}"' in html
    assert html.index("TalkTuah dashboard") < html.index("API keys")
    assert 'href="/admin/modelmgr/downloadjob/"' in html
    assert 'href="/admin/auth/user/"' in html


@pytest.mark.django_db
def test_the_pages_need_a_login(client):
    for url in (JOBS, MODELS, SERVE, DASHBOARD, SWITCHES, WORKERS, JOBS + "add/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url


@pytest.mark.django_db
def test_the_dashboard_shows_every_backend_with_its_switch(admin_client, served):
    backend_create(name="gpu-2", base_url="http://gpu-2:8000", engine="process")
    ModelSwitch.objects.create(
        backend="gpu-2", from_model="org/x", to_model="org/y", phase=SwitchPhase.STARTING
    )
    html = page(admin_client.get(DASHBOARD))
    table = html[html.index('id="tt-backends"') :]
    assert "<strong>default</strong>" in table and "<strong>gpu-2</strong>" in table
    assert "http://gpu-2:8000" in table
    # The phase is a live cell (the switch poller rewrites it): its markup around the text.
    assert re.search(
        r"org/x → org/y: <span [^>]*data-tt-phase=\"starting\"[^>]*><strong>starting</strong>",
        table,
    )
    assert table.count("org/old") == 2  # what each backend's look found
