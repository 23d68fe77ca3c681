"""The backend's configured model (VLLM_MODEL: the demo's `demo-model`) is started by
name, not from the Hugging Face cache, and stays servable: it is listed with the
downloaded models and a switch to it is taken and run by the worker, so after any
switch the README's first request works again."""

from typing import Any

import httpx
import pytest

from backends.spec import default_spec
from modelmgr.models import ModelSwitch, Scope, SwitchPhase
from modelmgr.selectors import downloaded_models, is_downloaded, model_source
from tests.modelmgr.test_worker_supervision import MODEL, start_worker  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_configured_model_is_servable_without_a_download(settings: Any) -> None:
    settings.VLLM_MODEL = MODEL
    backend = default_spec()
    assert is_downloaded(MODEL, backend=backend)
    assert model_source(MODEL, backend=backend) == MODEL
    [listed] = [m for m in downloaded_models(backend=backend) if m.repo_id == MODEL]
    assert "started by name" in listed.snapshot_path
    # Any other name still needs its download.
    assert not is_downloaded("org/never-downloaded", backend=backend)
    assert model_source("org/never-downloaded", backend=backend) is None
    settings.TALKTUAH_ENGINE = "external"  # nothing starts it: not servable by name
    assert not is_downloaded(MODEL, backend=default_spec())


def test_a_switch_to_the_configured_model_is_run_by_the_worker(
    gateway: Any,
    start_worker: Any,  # noqa: F811 - the fixture of test_worker_supervision
    make_key: Any,
    settings: Any,
) -> None:
    worker = start_worker()
    settings.VLLM_MODEL = MODEL
    pid = worker.vllm_pid()
    admin = make_key(scopes=(Scope.ADMIN,))
    response = httpx.post(
        f"{gateway.url}/api/switch-model",
        params={"model_id": MODEL},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    switch_id = response.json()["id"]
    wait_for(
        lambda: (
            ModelSwitch.objects.get(pk=switch_id).phase in (SwitchPhase.READY, SwitchPhase.FAILED)
        ),
        timeout=60,
        message="the switch to the configured model",
    )
    switch = ModelSwitch.objects.get(pk=switch_id)
    assert switch.phase == SwitchPhase.READY, switch.error
    assert worker.vllm_pid() != pid and worker.serves(MODEL)
