"""The management routes on the paths of TalkTuah's original API, through the gateway on a
real socket: admin scope, 202s, idempotent downloads, 404/409 on switches, loading status and
restart."""

import httpx
import pytest

from modelmgr.models import DownloadJob, DownloadStatus, ModelSwitch, Scope
from tests.modelmgr.test_lifecycle import run_download

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_headers(make_key):
    return {"Authorization": f"Bearer {make_key(scopes=(Scope.ADMIN, Scope.INFERENCE))}"}


def test_management_routes_need_the_admin_scope(gateway, make_key):
    headers = {"Authorization": f"Bearer {make_key()}"}
    for method, path in [
        ("POST", "/api/download-model?model_id=org/a"),
        ("GET", "/api/download-progress"),
        ("GET", "/api/model-status"),
        ("POST", "/api/switch-model?model_id=org/a"),
        ("GET", "/api/model-loading-status"),
        ("POST", "/api/restart-api"),
    ]:
        response = httpx.request(method, f"{gateway.url}{path}", headers=headers)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "insufficient_scope"
        assert httpx.request(method, f"{gateway.url}{path}").status_code == 401
    assert DownloadJob.objects.count() == 0


def test_download_model_is_accepted_once_per_repo(gateway, admin_headers, fake_hub):
    url = f"{gateway.url}/api/download-model"
    first = httpx.post(url, params={"model_id": "org/tiny", "auto": "true"}, headers=admin_headers)
    assert first.status_code == 202
    body = first.json()
    assert (body["model_id"], body["status"], body["auto_switch"]) == ("org/tiny", "queued", True)
    assert body["created"] is True
    assert body["worker_alive"] is False and "run_worker" in body["note"]
    again = httpx.post(url, params={"model_id": "org/tiny"}, headers=admin_headers)
    assert again.status_code == 202
    assert again.json()["job_id"] == body["job_id"] and again.json()["created"] is False
    bad = httpx.post(url, params={"model_id": "not a repo!"}, headers=admin_headers)
    assert bad.status_code == 400
    assert "repo id" in bad.json()["error"]["message"]
    missing = httpx.post(url, headers=admin_headers)
    assert missing.status_code == 400
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_download_progress_reports_a_finished_job(gateway, admin_headers, fake_hub):
    idle = httpx.get(f"{gateway.url}/api/download-progress", headers=admin_headers).json()
    assert idle["status"] == "idle"
    fake_hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": b"\0" * 4096})
    job = run_download("org/tiny")
    assert job.status == DownloadStatus.SUCCEEDED, job.error
    progress = httpx.get(
        f"{gateway.url}/api/download-progress", params={"job_id": job.pk}, headers=admin_headers
    ).json()
    assert progress["status"] == "succeeded"
    assert progress["bytes_completed"] == progress["bytes_total"] == 4096 + 2
    assert {f["path"] for f in progress["files"]} == {"config.json", "model.safetensors"}
    assert (
        httpx.get(
            f"{gateway.url}/api/download-progress", params={"job_id": 999}, headers=admin_headers
        ).status_code
        == 404
    )
    status = httpx.get(f"{gateway.url}/api/model-status", headers=admin_headers).json()
    assert status["models_available"] is True
    assert [m["model_id"] for m in status["models"]] == ["org/tiny"]
    assert status["models"][0]["size_bytes"] == 4096 + 2


def test_switch_model_answers_404_409_and_202(
    gateway, admin_headers, fake_hub, settings, simulator
):
    simulator(model="org/old")
    url = f"{gateway.url}/api/switch-model"
    response = httpx.post(url, params={"model_id": "org/tiny"}, headers=admin_headers)
    assert response.status_code == 404
    assert "not downloaded" in response.json()["error"]["message"]
    fake_hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    assert run_download("org/tiny").status == DownloadStatus.SUCCEEDED
    accepted = httpx.post(url, params={"model_id": "org/tiny"}, headers=admin_headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["phase"] == "requested"
    assert accepted.json()["from_model"] == "org/old"
    busy = httpx.post(url, params={"model_id": "org/tiny"}, headers=admin_headers)
    assert busy.status_code == 409
    assert ModelSwitch.objects.count() == 1
    loading = httpx.get(f"{gateway.url}/api/model-loading-status", headers=admin_headers).json()
    assert loading["ready"] is False and loading["phase"] == "requested"
    assert loading["model"] == "org/old"


def test_switch_model_is_refused_with_an_external_engine(gateway, admin_headers, settings):
    settings.TALKTUAH_ENGINE = "external"
    response = httpx.post(
        f"{gateway.url}/api/switch-model", params={"model_id": "org/x"}, headers=admin_headers
    )
    assert response.status_code == 409
    assert "external" in response.json()["error"]["message"]


def test_restart_api_drops_pooled_connections(gateway, admin_headers, simulator, make_key):
    simulator()
    chat = {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers=admin_headers
    ).is_success
    from plumbing import vllm

    before = vllm._state
    assert before is not None
    response = httpx.post(f"{gateway.url}/api/restart-api", headers=admin_headers)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert before.closed
    assert httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers=admin_headers
    ).is_success
