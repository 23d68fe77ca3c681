"""Downloads and switches end to end: the real huggingface_hub client against the local
fake Hub, the worker as a real process (claims, SIGTERM, a kill and its recovery), the
process engine switching the simulator while a chat request waits."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.db import close_old_connections, connection

from backends.spec import default_spec
from modelmgr import engines, hub, selectors, services
from modelmgr.models import DownloadJob, DownloadStatus, ModelSwitch, ServedModel, SwitchPhase
from plumbing.errors import Conflict, InvalidRepoId, ModelNotDownloaded
from tests.gateway_process import database_url
from tests.process_engine import use_process_engine
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def tiny_model_files(weights: bytes = b"\0" * 1024) -> dict[str, bytes]:
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "tokenizer.json": b"{}",
        "model.safetensors": weights,
        "pytorch_model.bin": b"x" * 2048,  # skipped: safetensors exist
    }


def job_row(job_id):
    return DownloadJob.objects.get(pk=job_id)


def test_it_queues_one_job_per_repo(fake_hub):
    backend = default_spec()
    first, created = services.download_start(repo_id="org/a", backend=backend)
    again, created_again = services.download_start(
        repo_id="org/a", backend=backend, auto_switch=True
    )
    assert created and not created_again
    assert again.pk == first.pk
    assert DownloadJob.objects.count() == 1
    with pytest.raises(InvalidRepoId):
        services.download_start(repo_id="../etc/passwd", backend=backend)


def test_it_downloads_with_rising_progress(fake_hub, settings):
    settings.DOWNLOAD_PROGRESS_WRITES_PER_SECOND = 20
    fake_hub.add_repo("org/big", tiny_model_files(os.urandom(6 * MB)))
    fake_hub.slow("org/big", "model.safetensors", 0.05, chunk=256 * 1024)
    backend = default_spec()
    job, _ = services.download_start(repo_id="org/big", backend=backend, requested_by="tester")
    claimed = services.download_claim(worker="test-worker", backend=backend)
    assert claimed is not None and claimed.pk == job.pk

    seen: list[int] = []
    runner = threading.Thread(
        target=lambda: (services.download_run(job=claimed, backend=backend), connection.close())
    )
    runner.start()
    while runner.is_alive():
        seen.append(job_row(job.pk).bytes_done)
        time.sleep(0.1)
    runner.join()
    row = job_row(job.pk)
    assert row.status == DownloadStatus.SUCCEEDED, row.error
    total = 6 * MB + len(b'{"architectures": ["LlamaForCausalLM"]}') + 2
    assert row.bytes_total == row.bytes_done == total
    assert row.files_total == row.files_done == 3  # the .bin was skipped
    rising = [b for b in seen if 0 < b < total]
    assert len(set(rising)) >= 3, f"progress did not rise in steps: {seen}"
    assert rising == sorted(rising)
    assert fake_hub.served("org/big", "pytorch_model.bin") == 0
    models = selectors.downloaded_models(backend=backend)
    assert [m.repo_id for m in models] == ["org/big"]
    assert models[0].size_bytes >= 6 * MB
    assert ServedModel.objects.get(repo_id="org/big").downloaded_by == "tester"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda hub: hub.add_repo("org/gated", tiny_model_files(), gated=True), "gated"),
        (lambda hub: None, "does not exist"),
    ],
)
def test_a_failed_job_keeps_a_clear_error_and_can_be_retried(fake_hub, setup, expected):
    setup(fake_hub)
    repo = "org/gated" if expected == "gated" else "org/missing"
    row = run_download(repo)
    assert row.status == DownloadStatus.FAILED
    assert expected in row.error.lower()
    assert repo in row.error
    retried = services.download_retry(job=row)
    assert retried.pk != row.pk and retried.status == DownloadStatus.QUEUED
    assert retried.backend == row.backend == "default"
    assert job_row(row.pk).error == row.error


def test_two_workers_claim_disjoint_jobs(fake_hub):
    backend = default_spec()
    ids = {services.download_start(repo_id=f"org/m{i}", backend=backend)[0].pk for i in range(12)}
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def claim_all(name):
        barrier.wait()
        try:
            while (job := services.download_claim(worker=name, backend=backend)) is not None:
                claimed[name].append(job.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed["a"] + claimed["b"]) == sorted(ids)
    assert not set(claimed["a"]) & set(claimed["b"])
    assert set(DownloadJob.objects.values_list("status", flat=True)) == {DownloadStatus.RUNNING}


def start_worker(fake_hub, tmp_path, **env):
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "HF_ENDPOINT": fake_hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "TALKTUAH_VAR_DIR": str(tmp_path / "var"),
        "VLLM_MODEL": "",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
        "DOWNLOAD_PROGRESS_WRITES_PER_SECOND": "10",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", "--poll", "0.1"],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_killed_worker_leaves_nothing_stuck_and_the_download_resumes(fake_hub, tmp_path):
    content = os.urandom(8 * MB)
    fake_hub.add_repo("org/resume", tiny_model_files(content))
    fake_hub.slow("org/resume", "model.safetensors", 0.05, chunk=256 * 1024)
    job, _ = services.download_start(repo_id="org/resume", backend=default_spec())
    worker = start_worker(fake_hub, tmp_path)
    try:
        wait_for(lambda: job_row(job.pk).bytes_done > MB, message="bytes to arrive")
        assert job_row(job.pk).status == DownloadStatus.RUNNING
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        served_before = fake_hub.served("org/resume", "model.safetensors")
        assert served_before < len(content)
        fake_hub.slow("org/resume", "model.safetensors", 0)
        worker = start_worker(fake_hub, tmp_path)
        wait_for(
            lambda: job_row(job.pk).status == DownloadStatus.SUCCEEDED,
            message="the restarted worker to finish the job",
        )
    finally:
        worker.kill()
        worker.wait(10)
    served_total = fake_hub.served("org/resume", "model.safetensors")
    # Resumed, not restarted: roughly the file once, plus what was in flight at the kill.
    assert served_total < len(content) + served_before // 2 + MB
    snapshot = hub.snapshot_path("org/resume")
    assert snapshot is not None
    assert (snapshot / "model.safetensors").read_bytes() == content


def test_sigterm_puts_a_running_download_back_in_the_queue(fake_hub, tmp_path):
    fake_hub.add_repo("org/pause", tiny_model_files(os.urandom(8 * MB)))
    fake_hub.slow("org/pause", "model.safetensors", 0.05, chunk=256 * 1024)
    job, _ = services.download_start(repo_id="org/pause", backend=default_spec())
    worker = start_worker(fake_hub, tmp_path)
    try:
        wait_for(lambda: job_row(job.pk).bytes_done > MB, message="bytes to arrive")
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert worker.returncode == 0, output.decode()
    row = job_row(job.pk)
    assert row.status == DownloadStatus.QUEUED
    assert row.worker == ""
    assert b"stopped" in output


def test_the_worker_reports_when_none_is_alive(fake_hub, tmp_path, settings):
    fake_hub.add_repo("org/q", tiny_model_files())
    backend = default_spec()
    job, _ = services.download_start(repo_id="org/q", backend=backend)
    progress = selectors.download_progress(job)
    assert progress["worker_alive"] is False
    assert "run_worker" in progress["note"]
    assert selectors.model_status(backend)["worker_alive"] is False
    worker = start_worker(fake_hub, tmp_path)
    try:
        wait_for(lambda: job_row(job.pk).status == DownloadStatus.SUCCEEDED, message="download")
        assert selectors.worker_alive("default")
    finally:
        worker.terminate()
        worker.wait(10)


@pytest.fixture
def process_engine(settings, tmp_path):
    engine = use_process_engine(settings, tmp_path, startup_delay=1.5)
    yield engine
    engine.stop()


def run_download(repo_id):
    """Queue a download on the default backend and run it as its worker would."""
    backend = default_spec()
    job, _ = services.download_start(repo_id=repo_id, backend=backend)
    claimed = services.download_claim(worker="w", backend=backend)
    assert claimed is not None and claimed.pk == job.pk
    services.download_run(job=claimed, backend=backend)
    return job_row(job.pk)


def download(fake_hub, repo_id):
    fake_hub.add_repo(repo_id, tiny_model_files())
    assert run_download(repo_id).status == DownloadStatus.SUCCEEDED


def test_a_switch_restarts_vllm_on_the_new_model_while_chat_waits(
    fake_hub, process_engine, gateway, make_key, settings
):
    settings.UPSTREAM_RETRY_SECONDS = 1.0  # rely on the switch wait, not on retries
    download(fake_hub, "org/model-a")
    download(fake_hub, "org/model-b")
    backend = default_spec()
    process_engine.serve(model="org/model-a", served_name="org/model-a")
    assert services.wait_until_serving("org/model-a", backend=backend, timeout=20) is None

    switch = services.model_switch_request(
        repo_id="org/model-b", backend=backend, requested_by="tester"
    )
    assert switch.from_model == "org/model-a"
    with pytest.raises(Conflict):
        services.model_switch_request(repo_id="org/model-a", backend=backend)
    claimed = services.model_switch_claim(worker="test", backend=backend)
    assert claimed is not None

    def run():
        try:
            services.model_switch_run(switch=claimed, backend=backend, engine=process_engine)
        finally:
            close_old_connections()
            connection.close()

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(
            lambda: (
                ModelSwitch.objects.get(pk=switch.pk).phase
                in (SwitchPhase.STARTING, SwitchPhase.LOADING)
            ),
            message="the switch to start",
        )
        key = make_key()
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "org/model-b", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
    finally:
        runner.join(60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "org/model-b"
    done = ModelSwitch.objects.get(pk=switch.pk)
    assert done.phase == SwitchPhase.READY, done.error
    assert done.duration_seconds is not None and done.duration_seconds >= 1.0
    listed = httpx.get(f"{settings.VLLM_BASE_URL}/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["org/model-b"]
    assert ServedModel.objects.get(repo_id="org/model-b").last_served_at is not None


def test_a_switch_refuses_a_model_not_downloaded(fake_hub, process_engine):
    with pytest.raises(ModelNotDownloaded):
        services.model_switch_request(repo_id="org/nowhere", backend=default_spec())


def test_a_failed_switch_keeps_its_error(fake_hub, process_engine, settings):
    download(fake_hub, "org/model-a")
    download(fake_hub, "org/model-b")
    backend = default_spec()
    process_engine.serve(model="org/model-a", served_name="org/model-a")
    assert services.wait_until_serving("org/model-a", backend=backend, timeout=20) is None
    switch = services.model_switch_request(repo_id="org/model-b", backend=backend)
    # The new model never becomes ready: the command serves another name. (A backend's
    # engine settings are read once, into its spec: take them again.)
    settings.ENGINE_PROCESS_COMMAND = (
        "{python} {manage} vllm_simulator --model wrong-name --port {port}"
    )
    settings.SWITCH_TIMEOUT_SECONDS = 3
    backend = default_spec()
    services.model_switch_run(
        switch=services.model_switch_claim(worker="t", backend=backend),
        backend=backend,
        engine=engines.engine_for(backend),
    )
    failed = ModelSwitch.objects.get(pk=switch.pk)
    assert failed.phase == SwitchPhase.FAILED
    assert "not ready" in failed.error
    status = selectors.loading_status(backend)
    assert status["last_error"] == failed.error


def test_a_finished_download_reports_every_file_whole(fake_hub, settings):
    # Progress writes so rare that the last one predates most of the bytes.
    settings.DOWNLOAD_PROGRESS_WRITES_PER_SECOND = 0.1
    fake_hub.add_repo("org/whole", tiny_model_files(weights=b"\0" * (3 * MB)))
    files = selectors.download_progress(run_download("org/whole"))["files"]
    assert files and all(f["bytes_completed"] == f["bytes_total"] for f in files), files
