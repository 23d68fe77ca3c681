"""A backend's spec: resolved once from its row (or VLLM_BASE_URL for `default`) and the
settings, engines built from it, and the worker driving its backend's engine without
writing to the global settings."""

from dataclasses import replace
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from backends.discovery import backend_get, backend_resolve, backend_specs
from backends.models import Backend
from backends.services import backend_create
from backends.spec import EngineConfig, default_spec
from modelmgr import engines, services
from modelmgr.models import DownloadStatus, ModelSwitch
from plumbing.errors import BackendNotFound, BadRequest
from tests.modelmgr.test_lifecycle import tiny_model_files

pytestmark = pytest.mark.django_db


def test_a_rows_engine_settings_overlay_the_settings(settings: Any) -> None:
    settings.ENGINE_STOP_GRACE_SECONDS = 7.0
    backend_create(
        name="gpu-2",
        base_url="http://gpu-2:8002",
        engine="process",
        engine_settings={"ENGINE_STATE_FILE": "/tmp/gpu-2.json", "SWITCH_TIMEOUT_SECONDS": 60},
    )
    spec = backend_get("gpu-2")
    assert spec.upstream.base_url == "http://gpu-2:8002" and spec.engine.kind == "process"
    assert spec.engine.state_file == "/tmp/gpu-2.json"
    assert spec.engine.switch_timeout_seconds == 60.0
    assert spec.engine.stop_grace_seconds == 7.0  # the setting, not overridden
    assert spec.engine.port == 8002  # from its own address, not VLLM_BASE_URL's
    assert not spec.local_cache
    engine = engines.engine_for(spec)
    assert isinstance(engine, engines.ProcessEngine) and engine.port == 8002
    assert str(engine.state_file) == "/tmp/gpu-2.json"
    # Nothing was written to the settings on the way.
    assert django_settings.ENGINE_STATE_FILE != "/tmp/gpu-2.json"


def test_default_is_vllm_base_urls_unless_a_row_takes_the_name(settings: Any) -> None:
    settings.VLLM_BASE_URL = "http://127.0.0.1:8999"
    assert [spec.name for spec in backend_specs()] == ["default"]
    assert default_spec().upstream.base_url == "http://127.0.0.1:8999"
    assert default_spec().local_cache
    backend_create(name="default", base_url="http://elsewhere:8000")
    (only,) = backend_specs()
    assert only.upstream.base_url == "http://elsewhere:8000" and only.local_cache


def test_it_names_what_it_cannot_resolve(settings: Any) -> None:
    backend_create(name="gpu-2", base_url="http://gpu-2:8000")
    with pytest.raises(BadRequest, match="default, gpu-2"):
        backend_resolve(None)
    with pytest.raises(BackendNotFound, match="gpu-9"):
        backend_resolve("gpu-9")
    with pytest.raises(BackendNotFound, match="add it first"):
        backend_get("gpu-9")


def test_a_worker_refuses_engine_settings_it_does_not_take() -> None:
    # Written around the admin's validation (a bulk update, an old row).
    Backend.objects.create(name="odd", base_url="http://odd:8000", engine_settings={"NOPE": 1})
    with pytest.raises(BadRequest, match="NOPE"):
        backend_get("odd")
    # Routing does not need them: the pool's list still has the backend.
    assert [spec.name for spec in backend_specs()][-1] == "odd"


def test_engine_config_refuses_a_value_of_the_wrong_kind() -> None:
    with pytest.raises(BadRequest, match="VLLM_PORT"):
        EngineConfig.from_settings().overlaid({"VLLM_PORT": "not a port"})


@pytest.mark.django_db(transaction=True)
def test_a_download_with_auto_on_a_named_backend_switches_that_backend(fake_hub: Any) -> None:
    # The defect: download_run asked `default` to switch whatever backend downloaded.
    backend_create(name="gpu-2", base_url="http://127.0.0.1:9", engine="process")
    fake_hub.add_repo("org/tiny", tiny_model_files())
    remote = backend_get("gpu-2")
    job, _ = services.download_start(repo_id="org/tiny", backend=remote, auto_switch=True)
    # gpu-2's worker, on gpu-2's host: there its cache is the local one.
    worker_spec = replace(remote, local_cache=True)
    services.worker_beat(name="gpu-2-host:1", started_at=timezone.now(), backend=worker_spec)
    claimed = services.download_claim(worker="gpu-2-host:1", backend=worker_spec)
    assert claimed is not None and claimed.pk == job.pk
    services.download_run(job=claimed, backend=worker_spec)
    claimed.refresh_from_db()
    assert claimed.status == DownloadStatus.SUCCEEDED, claimed.error
    assert not claimed.error
    switch = ModelSwitch.objects.get()
    assert (switch.backend, switch.to_model) == ("gpu-2", "org/tiny")
    assert not ModelSwitch.objects.filter(backend="default").exists()
