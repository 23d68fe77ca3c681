"""The admin's lifecycle pages for every backend, in a real browser (headless Chromium)
against the gateway on a real socket: the dashboard shows each backend, the download
form queues on the backend chosen, and "serve this model" switches the backend whose
page it was (they all knew only `default` before)."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from backends.discovery import backend_get
from backends.services import backend_create
from modelmgr import services
from modelmgr.models import DownloadJob, ModelSwitch
from tests.browser import admin_login, browser_page
from tests.simulator_process import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-test-password-1"


@pytest.fixture
def gpu_2(simulator: Any) -> Iterator[SimulatorProcess]:
    """`default` (VLLM_BASE_URL) serves org/old; `gpu-2`, a process-engine backend on
    another host whose worker reports org/other (served) and org/new in its cache."""
    simulator(model="org/old")
    second = SimulatorProcess(model="org/other").start()
    backend_create(name="gpu-2", base_url=second.url, engine="process")
    services.worker_beat(
        name="gpu-2-host:7",
        started_at=timezone.now(),
        backend=backend_get("gpu-2"),
        inventory=[
            {"repo_id": "org/other", "commit": "a" * 40, "size_bytes": 1234, "path": "/x"},
            {"repo_id": "org/new", "commit": "b" * 40, "size_bytes": 5678, "path": "/y"},
        ],
    )
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    yield second
    second.stop()


def test_the_admin_pages_work_for_a_named_backend(gateway: Any, gpu_2: SimulatorProcess) -> None:
    with browser_page() as page:
        admin_login(page, gateway.url, "root", PASSWORD)

        page.goto(gateway.url + reverse("admin:talktuah_dashboard"))
        rows = page.locator("#tt-backends tbody tr")
        assert rows.count() == 2
        text = page.locator("#tt-backends").inner_text()
        assert "default" in text and "gpu-2" in text
        assert "org/old" in text and "org/other" in text

        # The download form queues on the backend chosen.
        page.goto(gateway.url + reverse("admin:modelmgr_downloadjob_add"))
        page.select_option("select[name=backend]", "gpu-2")
        page.fill("input[name=repo_id]", "org/fresh")
        page.click("input[type=submit][value='Start download']")
        page.wait_for_url("**/admin/modelmgr/downloadjob/")

        # gpu-2's downloaded models, and serving one of them there.
        page.goto(gateway.url + reverse("admin:modelmgr_servedmodel_changelist") + "?backend=gpu-2")
        models = page.locator("#downloaded-models").inner_text()
        assert "org/other" in models and "org/new" in models
        assert "org/old" not in models  # default's cache is not gpu-2's
        row = page.locator("#downloaded-models tr", has_text="org/new")
        row.get_by_role("link", name="Serve this model").click()
        assert "gpu-2" in page.locator("#content-main").inner_text()
        page.click("input[type=submit][value='Yes, serve org/new']")
        page.wait_for_url("**/admin/modelmgr/modelswitch/")

    # Playwright's sync API runs an event loop in this thread: the database is read
    # once the browser is gone (Django refuses sync queries beside a running loop).
    assert DownloadJob.objects.get(repo_id="org/fresh").backend == "gpu-2"
    switch = ModelSwitch.objects.get()
    assert (switch.backend, switch.from_model, switch.to_model) == ("gpu-2", "org/other", "org/new")
    assert switch.requested_by == "admin:root"
