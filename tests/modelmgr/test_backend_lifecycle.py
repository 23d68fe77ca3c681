"""Downloads, switches and status per backend, through the management routes on a real
socket: which backend a request is about, whose worker claims its jobs, and what the
gateway knows of a host whose cache it cannot read (its worker's report)."""

import httpx
import pytest
from django.utils import timezone

from backends.discovery import backend_get
from backends.services import backend_create
from modelmgr import selectors, services
from modelmgr.models import DownloadJob, ModelSwitch, Scope
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_headers(make_key):
    return {"Authorization": f"Bearer {make_key(scopes=(Scope.ADMIN, Scope.INFERENCE))}"}


@pytest.fixture
def two_backends(simulator, settings):
    """`default` (VLLM_BASE_URL, process engine) serving org/old and `gpu-2` (process
    engine on another host) serving org/other."""
    simulator(model="org/old")
    second = SimulatorProcess(model="org/other").start()
    backend_create(name="gpu-2", base_url=second.url, engine="process")
    yield second
    second.stop()


def test_with_several_backends_a_write_must_name_one(gateway, admin_headers, two_backends):
    url = f"{gateway.url}/api/download-model"
    unnamed = httpx.post(url, params={"model_id": "org/a"}, headers=admin_headers)
    assert unnamed.status_code == 400
    error = unnamed.json()["error"]
    assert error["param"] == "backend" and "default, gpu-2" in error["message"]
    unknown = httpx.post(
        url, params={"model_id": "org/a", "backend": "gpu-9"}, headers=admin_headers
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "backend_not_found"
    named = httpx.post(url, params={"model_id": "org/a", "backend": "gpu-2"}, headers=admin_headers)
    assert named.status_code == 202
    body = named.json()
    assert body["backend"] == "gpu-2" and body["worker_alive"] is False
    assert "run_worker --backend gpu-2" in body["note"]
    # The same repo on the other backend is another job.
    other = httpx.post(
        url, params={"model_id": "org/a", "backend": "default"}, headers=admin_headers
    )
    assert other.json()["job_id"] != body["job_id"]
    assert DownloadJob.objects.filter(repo_id="org/a").count() == 2


def test_a_worker_claims_only_its_backends_jobs(two_backends):
    default, gpu_2 = backend_get("default"), backend_get("gpu-2")
    theirs, _ = services.download_start(repo_id="org/a", backend=gpu_2)
    ours, _ = services.download_start(repo_id="org/b", backend=default)
    assert services.download_claim(worker="w1", backend=default).pk == ours.pk
    assert services.download_claim(worker="w1", backend=default) is None
    assert services.download_claim(worker="w2", backend=gpu_2).pk == theirs.pk


def test_status_reports_every_backend(gateway, admin_headers, two_backends):
    services.worker_beat(
        name="gpu-2-host:7",
        started_at=timezone.now(),
        backend=backend_get("gpu-2"),
        inventory=[{"repo_id": "org/other", "commit": "abc", "size_bytes": 1234, "path": "/x"}],
    )
    status = httpx.get(f"{gateway.url}/api/model-status", headers=admin_headers).json()
    assert status["backend"] == "default" and status["current_model"] == "org/old"
    each = {entry["backend"]: entry for entry in status["backends"]}
    assert each["gpu-2"]["current_model"] == "org/other"
    assert each["gpu-2"]["worker_alive"] is True and each["default"]["worker_alive"] is False
    assert [m["model_id"] for m in each["gpu-2"]["models"]] == ["org/other"]
    assert each["gpu-2"]["models"][0]["size_bytes"] == 1234
    one = httpx.get(
        f"{gateway.url}/api/model-loading-status",
        params={"backend": "gpu-2"},
        headers=admin_headers,
    ).json()
    assert (one["backend"], one["ready"], one["model"]) == ("gpu-2", True, "org/other")
    assert one["backends"] == []


def test_a_switch_on_another_host_needs_its_worker_and_its_download(
    gateway, admin_headers, two_backends
):
    url = f"{gateway.url}/api/switch-model"
    params = {"model_id": "org/new", "backend": "gpu-2"}
    no_worker = httpx.post(url, params=params, headers=admin_headers)
    assert no_worker.status_code == 409
    assert "run_worker --backend gpu-2" in no_worker.json()["error"]["message"]
    gpu_2 = backend_get("gpu-2")
    services.worker_beat(
        name="gpu-2-host:7", started_at=timezone.now(), backend=gpu_2, inventory=[]
    )
    not_there = httpx.post(url, params=params, headers=admin_headers)
    assert not_there.status_code == 404
    assert "backend=gpu-2" in not_there.json()["error"]["message"]
    services.worker_beat(
        name="gpu-2-host:7",
        started_at=timezone.now(),
        backend=gpu_2,
        inventory=[{"repo_id": "org/new", "commit": "abc", "size_bytes": 1, "path": "/x"}],
    )
    accepted = httpx.post(url, params=params, headers=admin_headers)
    assert accepted.status_code == 202
    body = accepted.json()
    assert (body["backend"], body["from_model"], body["to_model"]) == (
        "gpu-2",
        "org/other",
        "org/new",
    )
    # One switch at a time per backend, not across backends.
    assert httpx.post(url, params=params, headers=admin_headers).status_code == 409
    assert selectors.active_switch("default") is None
    assert services.model_switch_claim(worker="w", backend=backend_get("default")) is None
    assert services.model_switch_claim(worker="w", backend=gpu_2).pk == body["id"]
    assert ModelSwitch.objects.get(pk=body["id"]).worker == "w"


def test_an_external_backend_cannot_be_switched(gateway, admin_headers, two_backends):
    backend_create(name="outside", base_url=two_backends.url)
    response = httpx.post(
        f"{gateway.url}/api/switch-model",
        params={"model_id": "org/x", "backend": "outside"},
        headers=admin_headers,
    )
    assert response.status_code == 409
    assert "engine external" in response.json()["error"]["message"]
